"""Postgres and Redis from Python tasks, with the ordinary pure-Python
clients pg8000 and redis-py over wasi:sockets. The plugin needs a `tcp`
grant naming each server; where they are comes from its variables
`pg_url` and `redis_url` (see plugins/databases, the same in Rust)."""

from typing import Optional
from urllib.parse import unquote, urlparse

import pg8000.native
import redis

from taskhost import App, task


def setting(app: App, given: Optional[str], name: str) -> str:
    """`given`, else the plugin's variable `name`."""
    value = given or app.variable(name)
    if not value:
        raise ValueError(f"no {name}: pass it as an argument, or set it in "
                         "[plugins.NAME.variables]")
    return value


def connect(url: str) -> pg8000.native.Connection:
    """A connection to the Postgres `url` names (no TLS: the component's
    Python has none)."""
    parts = urlparse(url)
    return pg8000.native.Connection(
        user=unquote(parts.username or ""),
        password=unquote(parts.password) if parts.password else None,
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        database=parts.path.lstrip("/") or None,
        ssl_context=False,
    )


@task
def pg_report(app: App, url: Optional[str] = None) -> dict:
    """Reads the `orders` table and writes one summary row into
    `order_reports` (the tables of plugins/databases); returns it."""
    db = connect(setting(app, url, "pg_url"))
    try:
        [[orders, total_cents]] = db.run(
            "SELECT count(*), coalesce(sum(amount_cents), 0)::bigint FROM orders")
        top = db.run(
            "SELECT customer FROM orders GROUP BY customer "
            "ORDER BY sum(amount_cents) DESC, customer LIMIT 1")
        top_customer = top[0][0] if top else None
        [[report]] = db.run(
            "INSERT INTO order_reports (orders, total_cents, top_customer) "
            "VALUES (:orders, :total, :top) RETURNING id",
            orders=orders, total=total_cents, top=top_customer)
    finally:
        db.close()
    summary = {"report": report, "orders": orders, "total_cents": total_cents,
               "top_customer": top_customer}
    app.info(f"order report written: {summary}")
    return summary


@task
def redis_counter(app: App, key: str, by: int = 1, url: Optional[str] = None) -> int:
    """Adds `by` to the Redis counter `key`; returns its new value."""
    client = redis.Redis.from_url(setting(app, url, "redis_url"))
    try:
        return int(client.incrby(key, by))
    finally:
        client.close()
