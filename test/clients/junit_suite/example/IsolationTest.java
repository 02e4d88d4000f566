package example;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.pgtestpool.junit.PgTestDb;
import dev.pgtestpool.junit.TestDb;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.RepeatedTest;
import org.junit.jupiter.api.RepetitionInfo;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.condition.EnabledIfEnvironmentVariable;

/**
 * A user's suite on the pgtestpool JUnit extension: 60 tests (run concurrently, see
 * junit-platform.properties), each writing to its own database and checking it sees only the
 * template's rows. Run by test/java.test.ts.
 */
@PgTestDb
class IsolationTest {
  private long started;

  @BeforeEach
  void start() {
    started = System.nanoTime(); // the claim happens after this, when JUnit resolves the test's TestDb
  }

  @RepeatedTest(60)
  void isolated(RepetitionInfo repetition, TestDb db) throws Exception {
    long entered = System.nanoTime();
    Connection c = db.connection();
    SetupTimes.record(started, entered);
    assertEquals(List.of("a@example.com", "b@example.com"), emails(c));
    try (Statement st = c.createStatement()) {
      st.executeUpdate("INSERT INTO accounts (email) VALUES ('test" + repetition.getCurrentRepetition() + "@example.com')");
      st.executeUpdate("INSERT INTO notes (account_id, body) SELECT id, 'mine' FROM accounts WHERE email LIKE 'test%'");
    }
    assertEquals(3, emails(c).size());
    assertEquals(1, count(c, "SELECT count(*) FROM notes"));
  }

  @Test
  void connectionInfoInEveryForm(TestDb db) throws Exception {
    assertTrue(db.name().startsWith("pgtp_default_"), db.name());
    assertEquals("jdbc:postgresql://" + db.host() + ":" + db.port() + "/" + db.name(), db.jdbcUrl());
    assertTrue(db.url().startsWith("postgresql://" + db.user() + ":"), "postgresql:// with the user");
    assertTrue(db.url().endsWith("@" + db.host() + ":" + db.port() + "/" + db.name()), db.url().replace(db.password(), "***"));
    assertFalse(db.toString().contains(db.password()), "toString() hides the password");
    // The forms a user hands to other libraries: a JDBC URL with user and password apart, a DataSource.
    try (Connection c = DriverManager.getConnection(db.jdbcUrl(), db.user(), db.password())) {
      assertEquals(db.name(), one(c, "SELECT current_database()"));
    }
    try (Connection c = db.dataSource().getConnection()) {
      assertEquals(db.name(), one(c, "SELECT current_database()"));
    }
    assertTrue(db.connection() == db.connection(), "connection() is one connection per test");
    assertTrue(db.connection().getAutoCommit());
  }

  @Test
  @PgTestDb(template = "bare")
  void templateFromTheAnnotation(TestDb db) throws Exception {
    assertEquals("bare", db.template());
    assertTrue(db.name().startsWith("pgtp_bare_"), db.name());
    assertEquals(0, count(db.connection(), "SELECT count(*) FROM accounts"), "the bare template has the tables, not the rows");
  }

  @Test
  @EnabledIfEnvironmentVariable(named = "PGTESTPOOL_DEMO_FAILURE", matches = "1")
  void failsOnPurpose(TestDb db) throws Exception {
    try (Statement st = db.connection().createStatement()) {
      st.executeUpdate("INSERT INTO accounts (email) VALUES ('the-bug@example.com')");
    }
    assertEquals(1, 2, "fails on purpose");
  }

  static List<String> emails(Connection c) throws SQLException {
    List<String> out = new ArrayList<>();
    try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT email FROM accounts ORDER BY email")) {
      while (rs.next()) out.add(rs.getString(1));
    }
    return out;
  }

  static long count(Connection c, String sql) throws SQLException {
    return Long.parseLong(one(c, sql));
  }

  static String one(Connection c, String sql) throws SQLException {
    try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
      rs.next();
      return rs.getString(1);
    }
  }
}
