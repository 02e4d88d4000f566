// Preloaded (`node --import`) ahead of the supervisor, in plain JavaScript: loading the supervisor
// takes 0.1-2 s (through tsx, or its bundle on a busy machine), and a `docker stop` in that time
// would otherwise kill Node by its default SIGINT action (exit 130). The signals are remembered
// here; the supervisor takes them over (src/supervisor.ts).
const pending = [];
const remember = (signal) => pending.push(signal);
process.on('SIGINT', remember);
process.on('SIGTERM', remember);

globalThis[Symbol.for('pgtestpool.earlySignals')] = () => {
  process.off('SIGINT', remember);
  process.off('SIGTERM', remember);
  return pending.splice(0);
};
