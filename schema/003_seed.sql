-- Fixture rows every test starts with.
INSERT INTO products (sku, title, price_cents) VALUES
  ('TEA-001', 'Green tea', 450),
  ('TEA-002', 'Black tea', 390),
  ('MUG-001', 'Mug', 1200);
