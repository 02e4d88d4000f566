package example;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;

/**
 * The suite's own measurement (not glue): each test's setup time, from @BeforeEach to connected to
 * its database, and the part of it until the test method ran (the claim): a line
 * "total claim thread", in milliseconds and the name of the thread it ran on, in the file PGTESTPOOL_TIMING_FILE names.
 */
final class SetupTimes {
  private SetupTimes() {}

  static void record(long startedNanos, long enteredNanos) throws IOException {
    long now = System.nanoTime(); // before waiting for the file's lock
    String file = System.getenv("PGTESTPOOL_TIMING_FILE");
    if (file != null) append(Path.of(file), (now - startedNanos) / 1e6 + " " + (enteredNanos - startedNanos) / 1e6 + " "
        + Thread.currentThread().getName().replace(' ', '_') + "\n");
  }

  private static synchronized void append(Path file, String line) throws IOException {
    Files.write(file, line.getBytes(StandardCharsets.UTF_8), StandardOpenOption.CREATE, StandardOpenOption.APPEND);
  }
}
