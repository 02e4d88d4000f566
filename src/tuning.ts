// The server settings of a throwaway test cluster, shared by `npm start` (src/embedded.ts) and
// the image (src/supervisor.ts, as -c arguments before the user's).

/** Settings for a server whose data may be lost at any moment: trade all durability for speed. */
export const TEST_TUNED_SETTINGS: Record<string, string | number> = {
  // Never wait for the disk: a crash just means a new throwaway cluster.
  fsync: 'off',
  synchronous_commit: 'off',
  full_page_writes: 'off',
  // No replicas or archive: minimal WAL (CREATE TABLE + COPY in one transaction skip WAL entirely).
  wal_level: 'minimal',
  max_wal_senders: 0,
  // Checkpoints only cost I/O here; let them happen rarely.
  checkpoint_timeout: '1d',
  max_wal_size: '1GB',
  shared_buffers: '128MB',
  // Parallel test workers each hold a pool of connections.
  max_connections: 300,
  // Test queries are small; LLVM JIT compile time (where the build has it) would dominate them.
  jit: 'off',
  // Dynamic shared memory as files in the data directory (itself in RAM), not /dev/shm/PostgreSQL.*:
  // a server killed without a clean shutdown then leaves nothing outside its own directory.
  dynamic_shared_memory_type: 'mmap',
  // Never log statements: ALTER ROLE ... PASSWORD must not reach the server log.
  log_statement: 'none',
  // PL/pgSQL (claim_test_db and the rest of the API) initialized once in the postmaster instead of
  // in every new session: 1.4 ms off each session's first claim.
  shared_preload_libraries: 'plpgsql',
  // Every CREATE DATABASE (FILE_COPY) and DROP DATABASE forces a checkpoint: two log lines each,
  // most of the log. `-c log_checkpoints=on` brings them back.
  log_checkpoints: 'off',
};
