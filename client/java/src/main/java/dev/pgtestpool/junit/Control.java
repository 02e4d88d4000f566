package dev.pgtestpool.junit;

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;

/**
 * The one control connection to an appliance in this JVM: every claim, release and keep of every
 * test thread runs on it (a session's first claim costs ~3 ms, the next ~0.3 ms), one at a time.
 * It is in autocommit: a claim must commit on its own (a claim rolled back leaves its clone closed).
 */
final class Control {
  private final Appliance appliance;
  private Connection conn;

  Control(Appliance appliance) {
    this.appliance = appliance;
  }

  synchronized String claim(String template) throws SQLException {
    try {
      return call("SELECT claim_test_db(?)", template, null);
    } catch (SQLException e) {
      if ("42883".equals(e.getSQLState())) { // undefined_function
        throw new SQLException("pgtestpool: " + appliance.shown(appliance.database) + " has no claim_test_db(): PGTESTPOOL_URL must name the"
            + " pgtestpool appliance's postgres database (" + e.getMessage() + ")", e.getSQLState(), e);
      }
      if (e.getMessage() != null && e.getMessage().startsWith("pgtestpool:")) throw e; // says it already (cannot connect)
      throw new SQLException("pgtestpool: claim_test_db('" + template + "') failed on " + appliance.shown(appliance.database) + ": " + e.getMessage(),
          e.getSQLState(), e);
    }
  }

  synchronized void release(String name) throws SQLException {
    call("SELECT release_test_db(?)", name, null);
  }

  synchronized void keep(String name, String interval) throws SQLException {
    call("SELECT keep_test_db(?, ?::interval)", name, interval);
  }

  /** At the end of the run: closing ends the session cleanly (the next run in this JVM reconnects). */
  synchronized void close() {
    if (conn != null) {
      try {
        conn.close();
      } catch (SQLException ignored) {
        // going away anyway
      }
      conn = null;
    }
  }

  /**
   * One statement; when it failed because the session was lost (appliance restarted, connection
   * killed), once more on a new session. A lease outlives its session while the clone has
   * connections, and releasing or keeping needs only the same role, so a retry on a new session is right.
   */
  private String call(String sql, String a, String b) throws SQLException {
    Connection c = open();
    try {
      return run(c, sql, a, b);
    } catch (SQLException e) {
      if (c.isValid(2)) throw e; // the appliance said no: a real error
      close();
      try {
        return run(open(), sql, a, b);
      } catch (SQLException again) {
        again.addSuppressed(e);
        throw again;
      }
    }
  }

  private static String run(Connection c, String sql, String a, String b) throws SQLException {
    try (PreparedStatement st = c.prepareStatement(sql)) {
      st.setString(1, a);
      if (b != null) st.setString(2, b);
      try (ResultSet rs = st.executeQuery()) {
        rs.next();
        return rs.getString(1);
      }
    }
  }

  private Connection open() throws SQLException {
    if (conn != null && !conn.isClosed()) return conn;
    try {
      Class.forName("org.postgresql.Driver"); // registers it even where DriverManager's service lookup misses it (class loaders)
    } catch (ClassNotFoundException e) {
      throw new SQLException("pgtestpool: the PostgreSQL JDBC driver (org.postgresql.Driver) is not on the test classpath: add"
          + " org.postgresql:postgresql (Debian: libpostgresql-jdbc-java, /usr/share/java/postgresql.jar)", "08001", e);
    }
    try {
      Connection c = DriverManager.getConnection(appliance.jdbcUrl(appliance.database), appliance.properties("pgtestpool junit"));
      c.setAutoCommit(true); // the JDBC default, but a claim inside a transaction would be a broken claim: say it
      conn = c;
      return c;
    } catch (SQLException e) {
      String hint = scramRounds(e) ? " This pgjdbc refuses SCRAM passwords hashed with fewer than 4096 rounds, as npm start's embedded"
          + " PostgreSQL 16+ hashes them for speed: re-hash the role's password (SET scram_iterations = 4096; ALTER ROLE " + appliance.user
          + " PASSWORD '...') or use a newer pgjdbc."
          : " Is it running (npm start, or docker compose up)? Else set PGTESTPOOL_URL to its postgres database's URL.";
      throw new SQLException("pgtestpool: cannot connect to the appliance at " + appliance.shown(appliance.database) + " (PGTESTPOOL_URL): "
          + e.getMessage() + hint, e.getSQLState(), e);
    }
  }

  /** pgjdbc's bundled SCRAM client (com.ongres.scram before 3.0) rejects an iteration count below 4096 with this message. */
  static boolean scramRounds(Throwable e) {
    for (Throwable t = e; t != null; t = t.getCause()) {
      if (t.getMessage() != null && t.getMessage().contains("iteration must be >= 4096")) return true;
    }
    return false;
  }
}
