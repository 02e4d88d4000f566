package dev.pgtestpool.junit;

import java.lang.annotation.Documented;
import java.lang.annotation.ElementType;
import java.lang.annotation.Inherited;
import java.lang.annotation.Retention;
import java.lang.annotation.RetentionPolicy;
import java.lang.annotation.Target;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * Registers {@link PgTestPool} (the same as {@code @ExtendWith(PgTestPool.class)}) and, optionally,
 * names the template: a test method taking a {@link TestDb} parameter gets a fresh clone of it.
 *
 * <pre>{@code
 * @PgTestDb                                   // on the class: every test asking for a TestDb gets one
 * class SignupTest {
 *   @Test void signsUp(TestDb db) throws Exception { db.connection().createStatement()... }
 *
 *   @Test @PgTestDb(template = "empty")       // on a method: this test's template
 *   void startsEmpty(TestDb db) { ... }
 * }
 * }</pre>
 */
@Target({ElementType.TYPE, ElementType.METHOD, ElementType.ANNOTATION_TYPE})
@Retention(RetentionPolicy.RUNTIME)
@Documented
@Inherited
@ExtendWith(PgTestPool.class)
public @interface PgTestDb {
  /**
   * The template {@code claim_test_db()} clones. Empty: the nearest enclosing annotation's (method,
   * then class, then outer class), else the {@code pgtestpool.template} configuration parameter,
   * else {@code "default"}.
   */
  String template() default "";
}
