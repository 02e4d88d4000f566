// Preloaded (`node --import`) before tsx, in plain JavaScript: compiling the supervisor takes
// 0.3-2 s, and a `docker stop` in that time would otherwise kill Node by its default SIGINT action
// (exit 130). The signals are remembered here; the supervisor takes them over (src/supervisor.ts).
const pending = [];
const remember = (signal) => pending.push(signal);
process.on('SIGINT', remember);
process.on('SIGTERM', remember);

globalThis[Symbol.for('pgtestpool.earlySignals')] = () => {
  process.off('SIGINT', remember);
  process.off('SIGTERM', remember);
  return pending.splice(0);
};
