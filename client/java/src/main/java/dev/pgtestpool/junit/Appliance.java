package dev.pgtestpool.junit;

import java.net.URI;
import java.net.URISyntaxException;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.Properties;

/** The appliance's postgresql:// URL, taken apart into what JDBC wants (host, port and database in the URL, user and password apart). */
final class Appliance {
  final String url;
  final String scheme;
  final String host; // IPv6 literals keep their brackets, as JDBC URLs want them
  final int port;
  final String user;
  final String password; // null: none in the URL
  final String database;
  private final String rawAuthority;
  private final String rawQuery;
  private final String sslmode;

  private Appliance(String url) {
    this.url = url;
    URI u;
    try {
      u = new URI(url);
    } catch (URISyntaxException e) {
      throw new IllegalArgumentException("pgtestpool: PGTESTPOOL_URL is not a valid URL (" + mask(url) + "): " + e.getReason()
          + "; percent-encode special characters in the user and password", e);
    }
    scheme = u.getScheme();
    if (!"postgresql".equals(scheme) && !"postgres".equals(scheme)) {
      throw new IllegalArgumentException("pgtestpool: PGTESTPOOL_URL must be a postgresql:// URL of the appliance's postgres database, got " + mask(url));
    }
    rawAuthority = u.getRawAuthority() == null ? "" : u.getRawAuthority();
    rawQuery = u.getRawQuery();
    int at = rawAuthority.lastIndexOf('@');
    String userInfo = at < 0 ? null : rawAuthority.substring(0, at);
    String hostPort = rawAuthority.substring(at + 1);
    int colon = userInfo == null ? -1 : userInfo.indexOf(':');
    user = userInfo == null || userInfo.isEmpty() ? System.getProperty("user.name") // as libpq and pgjdbc default it
        : decode(colon < 0 ? userInfo : userInfo.substring(0, colon));
    password = colon < 0 ? null : decode(userInfo.substring(colon + 1));
    int portColon = hostPort.lastIndexOf(':');
    if (portColon >= 0 && hostPort.indexOf(']', portColon) >= 0) portColon = -1; // [::1] without a port
    String h = portColon < 0 ? hostPort : hostPort.substring(0, portColon);
    host = h.isEmpty() ? "localhost" : decode(h);
    try {
      port = portColon < 0 || portColon == hostPort.length() - 1 ? 5432 : Integer.parseInt(hostPort.substring(portColon + 1));
    } catch (NumberFormatException e) {
      throw new IllegalArgumentException("pgtestpool: PGTESTPOOL_URL has a bad port: " + mask(url), e);
    }
    String path = u.getPath() == null ? "" : u.getPath().replaceFirst("^/", "");
    database = path.isEmpty() ? "postgres" : path;
    String mode = null;
    if (rawQuery != null) {
      for (String kv : rawQuery.split("&")) {
        if (kv.startsWith("sslmode=")) mode = decode(kv.substring("sslmode=".length()));
      }
    }
    sslmode = mode;
  }

  static Appliance parse(String url) {
    return new Appliance(url);
  }

  /** The JDBC URL of a database on this server. Only sslmode carries over (libpq's other parameters are not JDBC's). */
  String jdbcUrl(String db) {
    return "jdbc:postgresql://" + host + ":" + port + "/" + db + (sslmode == null ? "" : "?sslmode=" + sslmode);
  }

  /** The appliance URL with the database swapped: what libpq, psql and most non-JDBC tools take. */
  String url(String db) {
    return scheme + "://" + rawAuthority + "/" + db + (rawQuery == null ? "" : "?" + rawQuery);
  }

  /** For logs and errors: the password is never shown. */
  String shown(String db) {
    return "postgresql://" + user + (password == null ? "" : ":***") + "@" + host + ":" + port + "/" + db;
  }

  Properties properties(String applicationName) {
    Properties p = new Properties();
    p.setProperty("user", user);
    if (password != null) p.setProperty("password", password);
    p.setProperty("ApplicationName", applicationName);
    return p;
  }

  private static String decode(String s) {
    return URLDecoder.decode(s.replace("+", "%2B"), StandardCharsets.UTF_8); // percent-decoding only, as libpq does
  }

  /** A URL we could not parse, with whatever looks like a password replaced. */
  private static String mask(String url) {
    return url.replaceAll("(//[^:/@]*):[^@/]*@", "$1:***@");
  }
}
