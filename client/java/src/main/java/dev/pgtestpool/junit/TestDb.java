package dev.pgtestpool.junit;

import java.io.PrintWriter;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.SQLException;
import java.sql.SQLFeatureNotSupportedException;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.logging.Logger;
import javax.sql.DataSource;

/**
 * One test's database: a fresh clone of the template, claimed for this test and released after
 * it (kept, when it failed and keeping is on). Take it as a parameter of the test method (or of
 * its {@code @BeforeEach}/{@code @AfterEach} methods: the same database). Every connection opened
 * through it is closed by the extension before the database is released.
 */
public final class TestDb {
  private final Appliance appliance;
  private final String name;
  private final String template;
  private final List<Connection> opened = new ArrayList<>();
  private Connection connection;
  private boolean released;

  TestDb(Appliance appliance, String name, String template) {
    this.appliance = appliance;
    this.name = name;
    this.template = template;
  }

  /** The database's name, e.g. {@code pgtp_default_ab12cd_7}. */
  public String name() {
    return name;
  }

  /** The template it is a clone of. */
  public String template() {
    return template;
  }

  public String host() {
    return appliance.host;
  }

  public int port() {
    return appliance.port;
  }

  public String user() {
    return appliance.user;
  }

  /** The password, or null when PGTESTPOOL_URL has none. */
  public String password() {
    return appliance.password;
  }

  /** {@code jdbc:postgresql://host:port/<name>}: pass {@link #user()} and {@link #password()} apart (Flyway, Hibernate, HikariCP...). */
  public String jdbcUrl() {
    return appliance.jdbcUrl(name);
  }

  /** {@code postgresql://user:password@host:port/<name>}, for libpq-style tools (psql, pg_dump, a child process). */
  public String url() {
    return appliance.url(name);
  }

  /** A connection on the database, opened on first use and the same afterwards (autocommit, as JDBC's default). */
  public synchronized Connection connection() throws SQLException {
    if (connection == null || connection.isClosed()) connection = connect();
    return connection;
  }

  /** A new connection each call (for tests needing two sessions); closed by the extension like the others. */
  public Connection connect() throws SQLException {
    return open(appliance.properties("pgtestpool test"));
  }

  /** A DataSource on the database; its connections are closed by the extension too. (A pool built on it: close it in your @AfterEach.) */
  public DataSource dataSource() {
    return new Source();
  }

  /** Where it is, without the password. */
  @Override
  public String toString() {
    return "TestDb[" + appliance.shown(name) + "]";
  }

  Appliance appliance() {
    return appliance;
  }

  /** Before the release: a database is dropped under its connections otherwise. Close failures are moot (the database goes). */
  synchronized void closeConnections() {
    released = true;
    for (Connection c : opened) {
      try {
        c.close();
      } catch (SQLException ignored) {
        // the connection is discarded either way
      }
    }
    opened.clear();
    connection = null;
  }

  private synchronized Connection open(Properties props) throws SQLException {
    if (released) throw new IllegalStateException("pgtestpool: " + name + " was already released (a TestDb lasts one test)");
    opened.removeIf(TestDb::isClosed); // a test that opens and closes many keeps the list short
    Connection c = DriverManager.getConnection(jdbcUrl(), props);
    opened.add(c);
    return c;
  }

  private static boolean isClosed(Connection c) {
    try {
      return c.isClosed();
    } catch (SQLException e) {
      return true;
    }
  }

  private final class Source implements DataSource {
    @Override
    public Connection getConnection() throws SQLException {
      return connect();
    }

    @Override
    public Connection getConnection(String user, String password) throws SQLException {
      Properties p = appliance.properties("pgtestpool test");
      p.setProperty("user", user);
      if (password == null) p.remove("password");
      else p.setProperty("password", password);
      return open(p);
    }

    @Override
    public PrintWriter getLogWriter() {
      return null;
    }

    @Override
    public void setLogWriter(PrintWriter out) {
      // DriverManager's log writer applies
    }

    @Override
    public void setLoginTimeout(int seconds) {
      // pgjdbc's connectTimeout applies
    }

    @Override
    public int getLoginTimeout() {
      return 0;
    }

    @Override
    public Logger getParentLogger() throws SQLFeatureNotSupportedException {
      throw new SQLFeatureNotSupportedException("pgtestpool's DataSource logs through pgjdbc's loggers");
    }

    @Override
    public <T> T unwrap(Class<T> iface) throws SQLException {
      if (iface.isInstance(this)) return iface.cast(this);
      throw new SQLException("not a wrapper for " + iface.getName());
    }

    @Override
    public boolean isWrapperFor(Class<?> iface) {
      return iface.isInstance(this);
    }
  }
}
