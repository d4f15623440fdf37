//! Tasks that reach Postgres and Redis with ordinary Rust clients, over
//! TCP (`wasi:sockets`). The plugin needs a `tcp` grant naming each
//! server, and reads where they are from its variables:
//!
//! ```toml
//! [plugins.databases]
//! path = "plugins/databases"
//! [plugins.databases.grants]
//! tcp = ["127.0.0.1:5432", "127.0.0.1:6379"]
//! [plugins.databases.variables]
//! pg_url = "postgres://reporter:secret@127.0.0.1:5432/shop"
//! redis_url = "redis://127.0.0.1:6379/"
//! ```
//!
//! Crates, as built for `wasm32-wasip2`: `tokio-postgres` 0.7 on tokio's
//! current-thread runtime (`rt`, `net`), and `redis` 1.x's synchronous
//! client; both with default features off (no TLS).

use serde_json::{Value, json};
use std::net::ToSocketAddrs;
use taskhost_guest_sdk::{App, Error, Result, plugin};

/// The variable `name`, or `given` if the caller passed one.
fn setting(app: &App, given: Option<String>, name: &str) -> Result<String> {
    if let Some(given) = given {
        return Ok(given);
    }
    app.variable(name)?.ok_or_else(|| {
        Error::permanent(format!(
            "no {name}: pass it as an argument, or set it in [plugins.NAME.variables]"
        ))
    })
}

/// Reads every order and writes one summary row, in Postgres (the tables
/// are in `schema.sql`, beside this crate's Cargo.toml).
async fn report(url: &str) -> Result<Value> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| Error::permanent(format!("pg_url is not a Postgres URL: {e}")))?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => return Err(Error::permanent("pg_url names no TCP host")),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    // Looked up here (through the host, which answers only granted names):
    // tokio would look names up on a thread, and a task has none.
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| Error::msg(format!("cannot look up {host}: {e}")))?
        .collect();
    let stream = tokio::net::TcpStream::connect(&addrs[..])
        .await
        .map_err(|e| Error::msg(format!("cannot connect to {host}:{port}: {e}")))?;
    let (client, connection) = config.connect_raw(stream, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    let totals = client
        .query_one(
            "SELECT count(*), coalesce(sum(amount_cents), 0)::bigint FROM orders",
            &[],
        )
        .await?;
    let (orders, total_cents): (i64, i64) = (totals.get(0), totals.get(1));
    let top_customer: Option<String> = client
        .query_opt(
            "SELECT customer FROM orders GROUP BY customer \
             ORDER BY sum(amount_cents) DESC, customer LIMIT 1",
            &[],
        )
        .await?
        .map(|row| row.get(0));
    let row = client
        .query_one(
            "INSERT INTO order_reports (orders, total_cents, top_customer) \
             VALUES ($1, $2, $3) RETURNING id",
            &[&orders, &total_cents, &top_customer],
        )
        .await?;
    let id: i32 = row.get(0);
    drop(client);
    let _ = connection.await;
    Ok(json!({
        "report": id,
        "orders": orders,
        "total_cents": total_cents,
        "top_customer": top_customer,
    }))
}

plugin! {
    /// Summarises the `orders` table into a new `order_reports` row (see
    /// [`report`]) and returns it. `url` defaults to the `pg_url` variable.
    fn pg_report(app: &App, url: Option<String>) -> Result<Value> {
        let url = setting(app, url, "pg_url")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let summary = runtime.block_on(report(&url))?;
        app.info(format!("order report written: {summary}"));
        Ok(summary)
    }

    /// Adds `by` (default 1) to the Redis counter `key` and returns its new
    /// value. `url` defaults to the `redis_url` variable.
    fn redis_counter(app: &App, key: String, by: Option<i64>, url: Option<String>) -> Result<i64> {
        let url = setting(app, url, "redis_url")?;
        let client = redis::Client::open(url.as_str())
            .map_err(|e| Error::permanent(format!("redis_url: {e}")))?;
        let mut connection = client.get_connection()?;
        let value: i64 = redis::cmd("INCRBY")
            .arg(&key)
            .arg(by.unwrap_or(1))
            .query(&mut connection)?;
        Ok(value)
    }
}
