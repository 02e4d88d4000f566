// Percentiles and number formatting for the benchmark reports.

/** Nearest-rank percentile (p in 0..100) of unsorted values; NaN for none. */
export function pct(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

export function summary(values: number[]): { n: number; p50: number; p95: number; p99: number; mean: number } {
  const mean = values.length ? values.reduce((a, b) => a + b, 0) / values.length : NaN;
  return { n: values.length, p50: pct(values, 50), p95: pct(values, 95), p99: pct(values, 99), mean };
}

/** Milliseconds with sensible precision. */
export function ms(v: number): string {
  if (!Number.isFinite(v)) return '-';
  return v < 1 ? v.toFixed(2) : v < 10 ? v.toFixed(1) : v.toFixed(0);
}

export function ratio(v: number, base: number): string {
  if (!Number.isFinite(v) || !Number.isFinite(base) || base === 0) return '-';
  const r = v / base;
  return r < 10 ? `${r.toFixed(2)}×` : `${r.toFixed(0)}×`;
}

/** A plain-text table with columns padded to their widest cell; numbers right-aligned. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const numeric = (s: string) => /^[-\d.,×%s ]+$/.test(s) && /\d|^-$/.test(s);
  const line = (cells: string[]) =>
    cells.map((c, i) => (i > 0 && numeric(c) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}
