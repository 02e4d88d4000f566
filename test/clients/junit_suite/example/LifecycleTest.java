package example;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.pgtestpool.junit.PgTestDb;
import dev.pgtestpool.junit.TestDb;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Order;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestMethodOrder;
import org.junit.jupiter.api.parallel.Execution;
import org.junit.jupiter.api.parallel.ExecutionMode;
import org.junit.jupiter.api.parallel.Isolated;

/**
 * What the extension does between tests, checked by the next test: it closed the test's
 * connections and released its database, and it reconnects when its control connection was
 * killed. Isolated: killing the control connection mid-claim of another thread is not the point.
 */
@PgTestDb
@Isolated
@Execution(ExecutionMode.SAME_THREAD)
@TestMethodOrder(MethodOrderer.OrderAnnotation.class)
class LifecycleTest {
  static final List<Connection> opened = new ArrayList<>();
  static String firstDb;
  static int controlPid;
  static String adminUrl;
  static String user;
  static String password;

  @Test
  @Order(1)
  void opensConnections(TestDb db) throws Exception {
    opened.add(db.connection());
    opened.add(db.connect());
    opened.add(db.dataSource().getConnection());
    for (Connection c : opened) assertEquals(db.name(), IsolationTest.one(c, "SELECT current_database()"));
    firstDb = db.name();
    adminUrl = db.jdbcUrl().replace("/" + db.name(), "/postgres");
    user = db.user();
    password = db.password();
    controlPid = Integer.parseInt(onAppliance("SELECT claimed_pid FROM test_dbs WHERE name = ? AND state = 'claimed' AND claimed_application = 'pgtestpool junit'", db.name()));
  }

  @Test
  @Order(2)
  void closedThemAndReleased_thenTheControlConnectionIsKilled() throws Exception {
    for (Connection c : opened) assertTrue(c.isClosed(), "the extension closed every connection the TestDb opened");
    assertNotEquals("claimed", onAppliance("SELECT state FROM test_dbs WHERE name = ? ORDER BY dropped_at DESC NULLS FIRST LIMIT 1", firstDb));
    assertEquals("true", onAppliance("SELECT pg_terminate_backend(?::int)::text", String.valueOf(controlPid)));
    long deadline = System.nanoTime() + 10_000_000_000L;
    while (!"0".equals(onAppliance("SELECT count(*) FROM pg_stat_activity WHERE pid = ?::int", String.valueOf(controlPid)))) {
      assertTrue(System.nanoTime() < deadline, "the control backend exits");
      Thread.sleep(20);
    }
  }

  @Test
  @Order(3)
  void claimsOnANewControlConnection(TestDb db) throws Exception {
    String pid = onAppliance("SELECT claimed_pid FROM test_dbs WHERE name = ? AND state = 'claimed'", db.name());
    assertNotEquals(String.valueOf(controlPid), pid);
    assertEquals(List.of("a@example.com", "b@example.com"), IsolationTest.emails(db.connection()));
  }

  static String onAppliance(String sql, String arg) throws Exception {
    try (Connection c = DriverManager.getConnection(adminUrl, user, password); PreparedStatement st = c.prepareStatement(sql)) {
      st.setString(1, arg);
      try (ResultSet rs = st.executeQuery()) {
        assertTrue(rs.next(), sql);
        return rs.getString(1);
      }
    }
  }
}
