-- The tables pg_report reads and writes (plugins/databases and
-- plugins/py-databases): `psql -f plugins/databases/schema.sql DATABASE`.
CREATE TABLE orders (
    id serial PRIMARY KEY,
    customer text NOT NULL,
    amount_cents bigint NOT NULL
);
CREATE TABLE order_reports (
    id serial PRIMARY KEY,
    made_at timestamptz NOT NULL DEFAULT now(),
    orders bigint NOT NULL,
    total_cents bigint NOT NULL,
    top_customer text
);
