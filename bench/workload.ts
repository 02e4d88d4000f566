// The simulated test body every strategy runs: a handful of inserts, selects with joins and an
// update, as an integration test of a small app would. Written against a minimal query interface
// so the same code runs on node-postgres and on PGlite.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const PAGILA_DIR = path.join(ROOT, 'test', 'fixtures', 'pagila');

export interface Queryable {
  query(sql: string, params?: unknown[]): Promise<{ rows: any[] }>;
}

export type TemplateName = 'example' | 'pagila';

export interface TemplateSpec {
  name: TemplateName;
  /** All files, in order, that build the template (schema, then fixture data). */
  files: string[];
  /** The fixture-data files a TRUNCATE-based reset must load again. */
  seedFiles: string[];
  describe: string;
}

export const TEMPLATES: Record<TemplateName, TemplateSpec> = {
  example: {
    name: 'example',
    files: ['001_accounts.sql', '002_orders.sql', '003_seed.sql'].map((f) => path.join(ROOT, 'schema', f)),
    seedFiles: [path.join(ROOT, 'schema', '003_seed.sql')],
    describe: 'the example schema (4 tables, a view, a trigger, 3 seed rows)',
  },
  pagila: {
    name: 'pagila',
    files: ['pagila-2024-schema.sql', 'pagila-2024-data.sql'].map((f) => path.join(PAGILA_DIR, f)),
    seedFiles: [path.join(PAGILA_DIR, 'pagila-2024-data.sql')],
    describe: 'pagila 2024 (22 tables incl. partitions, no vector parts) with its 3.3 MB of rows',
  },
};

/** Runs test number `i` against a database that must be exactly the template. Throws if it is not. */
export async function runWorkload(db: Queryable, template: TemplateName, i: number): Promise<void> {
  if (template === 'example') await exampleTest(db, i);
  else await pagilaTest(db, i);
}

function expect(cond: boolean, what: string): void {
  if (!cond) throw new Error(`workload check failed: ${what} (the database was not a fresh copy of the template?)`);
}

async function exampleTest(db: Queryable, i: number): Promise<void> {
  // A fresh database has exactly the seed rows and no accounts: this catches leaked state.
  const before = await db.query('SELECT (SELECT count(*) FROM accounts)::int AS accounts, (SELECT count(*) FROM products)::int AS products');
  expect(before.rows[0].accounts === 0 && before.rows[0].products === 3, `expected 0 accounts and 3 products, found ${JSON.stringify(before.rows[0])}`);
  const acc = await db.query('INSERT INTO accounts (email, name) VALUES ($1, $2) RETURNING id', [`user${i}@example.com`, `User ${i}`]);
  const accountId = acc.rows[0].id;
  const order = await db.query('INSERT INTO orders (account_id) VALUES ($1) RETURNING id', [accountId]);
  const orderId = order.rows[0].id;
  await db.query(
    `INSERT INTO order_items (order_id, product_id, quantity)
     SELECT $1, p.id, $2 FROM products p WHERE p.sku IN ('TEA-001', 'MUG-001')`,
    [orderId, 1 + (i % 3)],
  );
  const totals = await db.query(
    `SELECT a.email, t.total_cents::int AS total
       FROM order_totals t JOIN accounts a ON a.id = t.account_id
      WHERE t.order_id = $1`,
    [orderId],
  );
  expect(totals.rows[0]?.total === (450 + 1200) * (1 + (i % 3)), 'order total');
  await db.query(`UPDATE orders SET status = 'paid' WHERE id = $1`, [orderId]);
  const paid = await db.query(
    `SELECT o.status::text AS status, count(i.*)::int AS items
       FROM orders o JOIN order_items i ON i.order_id = o.id
      WHERE o.account_id = $1 GROUP BY o.status`,
    [accountId],
  );
  expect(paid.rows[0]?.status === 'paid' && paid.rows[0]?.items === 2, 'paid order with 2 items');
}

async function pagilaTest(db: Queryable, i: number): Promise<void> {
  const before = await db.query(`SELECT count(*)::int AS n FROM customer WHERE email LIKE 'bench%'`);
  expect(before.rows[0].n === 0, `expected no bench customers, found ${before.rows[0].n}`);
  const cust = await db.query(
    `INSERT INTO customer (store_id, first_name, last_name, email, address_id, active)
     VALUES (1, 'Bench', $1, $2, 5, 1) RETURNING customer_id`,
    [`Test${i}`, `bench${i}@example.com`],
  );
  const customerId = cust.rows[0].customer_id;
  // A copy of a film that is in stock at store 1.
  const inv = await db.query(
    `SELECT i.inventory_id FROM inventory i JOIN film f ON f.film_id = i.film_id
      WHERE i.store_id = 1 AND f.rating = 'PG'
        AND NOT EXISTS (SELECT 1 FROM rental r WHERE r.inventory_id = i.inventory_id AND r.return_date IS NULL)
      ORDER BY i.inventory_id OFFSET $1 LIMIT 1`,
    [i % 50],
  );
  expect(inv.rows.length === 1, 'an in-stock copy');
  const rental = await db.query(
    `INSERT INTO rental (rental_date, inventory_id, customer_id, staff_id)
     VALUES ('2022-07-15 10:00+00', $1, $2, 1) RETURNING rental_id`,
    [inv.rows[0].inventory_id, customerId],
  );
  const rentalId = rental.rows[0].rental_id;
  await db.query(
    `INSERT INTO payment (customer_id, staff_id, rental_id, amount, payment_date)
     VALUES ($1, 1, $2, 4.99, '2022-07-15 10:05+00')`,
    [customerId, rentalId],
  );
  const history = await db.query(
    `SELECT f.title, c.last_name, p.amount
       FROM rental r JOIN inventory i ON i.inventory_id = r.inventory_id
       JOIN film f ON f.film_id = i.film_id
       JOIN customer c ON c.customer_id = r.customer_id
       JOIN payment p ON p.rental_id = r.rental_id
      WHERE r.customer_id = $1`,
    [customerId],
  );
  expect(history.rows.length === 1, 'one rental with its payment');
  await db.query('UPDATE rental SET return_date = $2 WHERE rental_id = $1', [rentalId, '2022-07-18 09:00+00']);
  const top = await db.query(
    `SELECT c.name, count(*)::int AS rentals
       FROM rental r JOIN inventory i ON i.inventory_id = r.inventory_id
       JOIN film_category fc ON fc.film_id = i.film_id JOIN category c ON c.category_id = fc.category_id
      WHERE r.rental_date >= '2022-07-01' AND r.rental_date < '2022-08-01'
      GROUP BY c.name ORDER BY rentals DESC LIMIT 3`,
  );
  expect(top.rows.length === 3, 'top categories');
}
