// Postgres and Redis from JavaScript tasks. componentize-js has no
// sockets, so the host makes the connections (`app.postgres`, `app.redis`:
// the taskhost:db interfaces), to addresses the plugin's `tcp` grant
// lists. Where the servers are comes from the plugin's variables `pg_url`
// and `redis_url`. The factories are plugins/databases' (Rust) and
// plugins/py-databases' (Python), on the same tables (its schema.sql).
import { task } from 'taskhost';

function setting(app, given, name) {
  const value = given || app.variable(name);
  if (!value) {
    throw new Error(`no ${name}: pass it as an argument, or set it in [plugins.NAME.variables]`);
  }
  return value;
}

export const pg_report = task(
  (app, { url }) => {
    const db = app.postgres(setting(app, url, 'pg_url'));
    try {
      const [{ orders, total_cents }] = db.query(
        'SELECT count(*) AS orders, coalesce(sum(amount_cents), 0)::bigint AS total_cents FROM orders',
      );
      const top = db.query(
        'SELECT customer FROM orders GROUP BY customer ORDER BY sum(amount_cents) DESC, customer LIMIT 1',
      );
      const topCustomer = top.length ? top[0].customer : null;
      const [{ id }] = db.query(
        'INSERT INTO order_reports (orders, total_cents, top_customer) VALUES ($1, $2, $3) RETURNING id',
        [orders, total_cents, topCustomer],
      );
      const summary = { report: id, orders, total_cents, top_customer: topCustomer };
      app.info(`order report written: ${JSON.stringify(summary)}`);
      return summary;
    } finally {
      db.close();
    }
  },
  {
    description: 'Reads the orders table and writes one summary row into order_reports; returns it.',
    args: { url: 'string?' },
  },
);

export const redis_counter = task(
  (app, { key, by, url }) => {
    const redis = app.redis(setting(app, url, 'redis_url'));
    try {
      return redis.incr(key, by);
    } finally {
      redis.close();
    }
  },
  {
    description: 'Adds `by` to the Redis counter `key`; returns its new value.',
    args: { key: 'string', by: { type: 'integer', default: 1 }, url: 'string?' },
  },
);

/** A value as JSON can hold it: bytes as an array, a bigint as text. */
function plain(value) {
  if (typeof value === 'bigint') return value.toString();
  if (ArrayBuffer.isView(value)) return Array.from(value);
  if (Array.isArray(value)) return value.map(plain);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}

export const pg_query = task(
  (app, { sql, params, url }) => {
    const db = app.postgres(setting(app, url, 'pg_url'));
    try {
      return plain(db.query(sql, params));
    } finally {
      db.close();
    }
  },
  {
    description: 'Runs one SQL query with its params ($1, $2...); returns its rows as objects.',
    args: { sql: 'string', params: { type: 'array', default: [] }, url: 'string?' },
  },
);

export const redis_command = task(
  (app, { command, args, url }) => {
    const redis = app.redis(setting(app, url, 'redis_url'));
    try {
      return plain(redis.command(command, ...args));
    } finally {
      redis.close();
    }
  },
  {
    description: 'Runs one Redis command with its arguments; returns its reply.',
    args: { command: 'string', args: { type: 'array', default: [] }, url: 'string?' },
  },
);
