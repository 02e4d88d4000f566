package dev.pgtestpool.junit;

import java.lang.reflect.AnnotatedElement;
import java.util.Optional;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentMap;
import org.junit.jupiter.api.extension.AfterEachCallback;
import org.junit.jupiter.api.extension.ExtensionContext;
import org.junit.jupiter.api.extension.ExtensionContext.Namespace;
import org.junit.jupiter.api.extension.ParameterContext;
import org.junit.jupiter.api.extension.ParameterResolutionException;
import org.junit.jupiter.api.extension.ParameterResolver;
import org.junit.platform.commons.support.AnnotationSupport;
import org.opentest4j.TestAbortedException;

/**
 * JUnit 5 extension: a fresh pgtestpool database for every test that takes a {@link TestDb} parameter.
 *
 * <pre>{@code
 * import dev.pgtestpool.junit.PgTestDb;
 * import dev.pgtestpool.junit.TestDb;
 *
 * @PgTestDb   // or @ExtendWith(PgTestPool.class)
 * class SignupTest {
 *   @Test void signsUp(TestDb db) throws Exception {
 *     db.connection().createStatement().execute("INSERT INTO accounts ...");
 *   }
 * }
 * }</pre>
 *
 * <p>The database is claimed when the parameter is resolved (so a test that does not ask for one
 * costs nothing), on one autocommit control connection per JVM and appliance, shared by all test
 * threads (safe under {@code junit.jupiter.execution.parallel.enabled=true}). It is released in
 * {@link AfterEachCallback#afterEach}, which JUnit runs after the test class's own
 * {@code @AfterEach} methods: those can still use it. The connections the TestDb opened are
 * closed first. When the test failed and keeping is on, it is kept instead and its URL printed to
 * stderr, without the password.
 *
 * <p>Settings: the environment variables, or JUnit configuration parameters of the same meaning
 * (junit-platform.properties, -D, the launcher's --config), which win:
 * <ul>
 *   <li>{@code PGTESTPOOL_URL} / {@code pgtestpool.url}: the appliance's postgres database,
 *       default {@code postgresql://postgres:postgres@127.0.0.1:5432/postgres};
 *   <li>{@code PGTESTPOOL_KEEP_ON_FAILURE} / {@code pgtestpool.keep_on_failure}: keep a failed
 *       test's database this long (an interval: {@code 1h}, {@code 10 minutes}; 1 or true: 1 hour);
 *   <li>{@code pgtestpool.template}: the template when no {@link PgTestDb#template()} names one.
 * </ul>
 *
 * <p>A claim waits while the pool is empty, and the other threads' claims and releases wait
 * behind it on the shared connection: keep the pool's max_databases above the test parallelism.
 */
public final class PgTestPool implements ParameterResolver, AfterEachCallback {
  static final String DEFAULT_URL = "postgresql://postgres:postgres@127.0.0.1:5432/postgres";
  private static final Namespace NS = Namespace.create(PgTestPool.class);
  private static final ConcurrentMap<String, Control> CONTROLS = new ConcurrentHashMap<>();

  @Override
  public boolean supportsParameter(ParameterContext parameter, ExtensionContext context) {
    return parameter.getParameter().getType() == TestDb.class;
  }

  @Override
  public Object resolveParameter(ParameterContext parameter, ExtensionContext context) {
    if (context.getTestMethod().isEmpty()) {
      throw new ParameterResolutionException("pgtestpool: a TestDb is one test's database: take it as a parameter of a test method"
          + " (or of its @BeforeEach/@AfterEach methods), not of a constructor or @BeforeAll method");
    }
    // Per test (per invocation of a @RepeatedTest/@ParameterizedTest): @BeforeEach, the test and @AfterEach share it.
    ExtensionContext.Store store = context.getStore(NS);
    TestDb db = store.get(TestDb.class, TestDb.class);
    if (db != null) return db;
    Appliance appliance = Appliance.parse(setting(context, "pgtestpool.url", "PGTESTPOOL_URL").orElse(DEFAULT_URL));
    String template = template(context);
    // Closes the control connections when the run ends (a clean goodbye instead of a dropped socket).
    context.getRoot().getStore(NS).getOrComputeIfAbsent(Closer.class, k -> new Closer(), Closer.class);
    try {
      db = new TestDb(appliance, control(appliance).claim(template), template);
    } catch (java.sql.SQLException e) {
      throw new ParameterResolutionException(e.getMessage(), e);
    }
    store.put(TestDb.class, db);
    return db;
  }

  @Override
  public void afterEach(ExtensionContext context) throws Exception {
    TestDb db = context.getStore(NS).remove(TestDb.class, TestDb.class);
    if (db == null) return; // this test took no database
    db.closeConnections();
    Control control = control(db.appliance());
    String keepFor = failed(context) ? keepInterval(setting(context, "pgtestpool.keep_on_failure", "PGTESTPOOL_KEEP_ON_FAILURE").orElse("")) : null;
    if (keepFor == null) {
      control.release(db.name());
      return;
    }
    try {
      control.keep(db.name(), keepFor);
    } catch (java.sql.SQLException e) {
      System.err.println("pgtestpool: could not keep " + db.name() + " (" + e.getMessage() + "); released it");
      control.release(db.name());
      return;
    }
    System.err.println("pgtestpool: kept " + db.name() + " for " + keepFor + " (" + testId(context) + " failed): psql \""
        + db.appliance().shown(db.name()) + "\"");
  }

  private static Control control(Appliance appliance) {
    return CONTROLS.computeIfAbsent(appliance.url, k -> new Control(appliance));
  }

  /** Failed, not skipped: an assumption that did not hold (TestAbortedException) is no failure. */
  private static boolean failed(ExtensionContext context) {
    return context.getExecutionException().filter(t -> !(t instanceof TestAbortedException)).isPresent();
  }

  /** The interval to keep for, or null when keeping is off. */
  static String keepInterval(String value) {
    String v = value.trim();
    if (v.isEmpty() || v.equals("0") || v.equalsIgnoreCase("false") || v.equalsIgnoreCase("no")) return null;
    return v.equals("1") || v.equalsIgnoreCase("true") || v.equalsIgnoreCase("yes") ? "1 hour" : v;
  }

  /** The nearest @PgTestDb naming a template: method, then class, then outer classes; else the configuration; else "default". */
  private static String template(ExtensionContext context) {
    for (ExtensionContext c = context; c != null; c = c.getParent().orElse(null)) {
      Optional<AnnotatedElement> element = c.getElement();
      if (element.isEmpty()) continue;
      Optional<PgTestDb> a = AnnotationSupport.findAnnotation(element.get(), PgTestDb.class);
      if (a.isPresent() && !a.get().template().isEmpty()) return a.get().template();
    }
    return context.getConfigurationParameter("pgtestpool.template").filter(s -> !s.isBlank()).orElse("default");
  }

  private static Optional<String> setting(ExtensionContext context, String parameter, String env) {
    return context.getConfigurationParameter(parameter).or(() -> Optional.ofNullable(System.getenv(env))).filter(s -> !s.isBlank());
  }

  /** SignupTest#signsUp, plus the invocation ("[3] x=4", "repetition 3 of 60") for a @ParameterizedTest or @RepeatedTest. */
  private static String testId(ExtensionContext context) {
    String id = context.getRequiredTestClass().getName() + "#" + context.getRequiredTestMethod().getName();
    boolean invocation = context.getParent().flatMap(ExtensionContext::getTestMethod).isPresent();
    return invocation ? id + " " + context.getDisplayName() : id;
  }

  private static final class Closer implements ExtensionContext.Store.CloseableResource {
    @Override
    public void close() {
      CONTROLS.values().forEach(Control::close);
    }
  }
}
