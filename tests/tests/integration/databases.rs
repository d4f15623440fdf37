//! Tasks reaching real databases through a `tcp` grant: a PostgreSQL
//! cluster and a redis-server each test starts on loopback (Debian's
//! packages, installed by `scripts/setup-databases`), and the example
//! plugins `databases` (Rust: tokio-postgres, redis) and `py-databases`
//! (Python: pg8000, redis-py), which have the same factories.

use serde_json::{Value, json};
use std::io::Write;
use taskhost_tests::{Postgres, Redis, TestApp, millis, poll_until, secs};

/// The tables `pg_report` reads and writes, with three orders.
fn shop(postgres: &Postgres) {
    postgres.shop_tables();
    postgres.psql(
        "shop",
        "INSERT INTO orders (customer, amount_cents) \
             VALUES ('acme', 1250), ('globex', 4000), ('acme', 3000);",
    );
}

/// The plugins under test, as app.toml's placeholders name them.
const PLUGINS: [&str; 2] = ["databases", "py-databases"];

fn app(plugin: &str, postgres: Option<&Postgres>, redis: Option<&Redis>, extra: &str) -> TestApp {
    let mut grants = Vec::new();
    let mut variables = Vec::new();
    if let Some(postgres) = postgres {
        grants.push(format!("\"127.0.0.1:{}\"", postgres.port));
        variables.push(format!("pg_url = \"{}\"", postgres.url()));
    }
    if let Some(redis) = redis {
        grants.push(format!("\"127.0.0.1:{}\"", redis.port));
        variables.push(format!("redis_url = \"{}\"", redis.url()));
    }
    TestApp::new(&format!(
        r#"
        name = "shop"
        cancel_grace_ms = 10000
        {extra}
        [plugins.databases]
        path = "{{{plugin}}}"
        [plugins.databases.grants]
        tcp = [{grants}]
        [plugins.databases.variables]
        {variables}
        "#,
        grants = grants.join(", "),
        variables = variables.join("\n"),
    ))
}

#[test]
fn rust_and_python_tasks_read_rows_from_postgres_and_write_a_summary_row() {
    let postgres = Postgres::start();
    shop(&postgres);
    for (report, plugin) in PLUGINS.into_iter().enumerate() {
        let app = app(
            plugin,
            Some(&postgres),
            None,
            r#"
            [[tasks]]
            plugin = "databases"
            factory = "pg_report"
            name = "nightly"
            "#,
        );
        let run = app.run_until_idle();
        assert_eq!(
            run.results_of("nightly"),
            vec![json!({
                "report": report + 1,
                "orders": 3,
                "total_cents": 8250,
                "top_customer": "acme",
            })],
            "{plugin}: {}",
            run.dump()
        );
    }
    assert_eq!(
        postgres.psql(
            "shop",
            "SELECT orders, total_cents, top_customer FROM order_reports ORDER BY id"
        ),
        "3|8250|acme\n3|8250|acme"
    );
}

#[test]
fn a_cancel_during_a_blocked_query_ends_the_task_cooperatively() {
    for plugin in PLUGINS {
        cancel_during_a_blocked_query(plugin);
    }
}

fn cancel_during_a_blocked_query(plugin: &str) {
    let postgres = Postgres::start();
    shop(&postgres);
    // Another session holds the orders table: the report's first query
    // waits for it, blocked, as on a slow query.
    let mut holder = postgres.session();
    holder
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE; SELECT 1;\n")
        .unwrap();
    let app = app(plugin, Some(&postgres), None, "");
    let host = app.spawn();
    let add = app.cli(&["add", "databases", "pg_report", "--name", "report"]);
    assert_eq!(add.code, Some(0), "{}", add.dump());
    // Postgres says when the report's query waits on the lock.
    poll_until(secs(120), millis(20), || {
        let waiting = postgres.psql(
            "shop",
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE 'SELECT count(*)%orders%'",
        );
        match waiting.as_str() {
            "1" => Ok(()),
            other => Err(format!("{other} queries waiting on the lock")),
        }
    });
    let cancelled = app.cli(&["cancel", "report", "--json"]);
    assert_eq!(cancelled.code, Some(0), "{}", cancelled.dump());
    let ended: Value = serde_json::from_str(cancelled.stdout.trim()).unwrap();
    // Forcing would take the 10 s grace period and say `forced`.
    assert_eq!(ended[0]["state"], "cancelled", "{plugin}: {ended}");
    assert_eq!(ended[0]["cancel_stage"], "cooperative", "{plugin}: {ended}");
    drop(holder.stdin.take());
    let _ = holder.wait();
    assert_eq!(
        postgres.psql("shop", "SELECT count(*) FROM order_reports"),
        "0"
    );
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}

#[test]
fn a_redis_counter_incremented_by_tasks_on_two_workers_ends_exact() {
    for plugin in PLUGINS {
        redis_counter_on_two_workers(plugin);
    }
}

fn redis_counter_on_two_workers(plugin: &str) {
    let redis = Redis::start();
    // Each [[tasks]] entry runs once per worker: 25 entries on 2 workers.
    let tasks: String = (0..25)
        .map(|i| {
            format!(
                r#"
                [[tasks]]
                plugin = "databases"
                factory = "redis_counter"
                name = "count{i}"
                args = {{ key = "visits" }}
                "#
            )
        })
        .collect();
    let app = app(plugin, None, Some(&redis), &format!("workers = 2\n{tasks}"));
    let run = app.run_until_idle();
    let done = run.events("done");
    assert_eq!(done.len(), 50, "{}", run.dump());
    for worker in [0, 1] {
        assert_eq!(
            done.iter().filter(|l| l["worker"] == worker).count(),
            25,
            "{}",
            run.dump()
        );
    }
    let mut seen: Vec<i64> = done
        .iter()
        .map(|l| taskhost_tests::result_of(l).as_i64().unwrap())
        .collect();
    seen.sort();
    // Every increment saw its own value: 1 to 50, none lost or repeated.
    assert_eq!(seen, (1..=50).collect::<Vec<_>>());
    assert_eq!(redis.cli(&["GET", "visits"]), "50");
}
