//! Tasks reaching real databases through a `tcp` grant: a PostgreSQL
//! cluster and a redis-server each test starts on loopback (Debian's
//! packages, installed by `scripts/setup-databases`), and the example
//! plugins `databases` (Rust: tokio-postgres, redis), `py-databases`
//! (Python: pg8000, redis-py) and `js-databases` (JavaScript: the host's
//! `taskhost:db` interfaces), which have the same factories.

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
const PLUGINS: [&str; 3] = ["databases", "py-databases", "js-databases"];

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
fn rust_python_and_js_tasks_read_rows_from_postgres_and_write_a_summary_row() {
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
        "3|8250|acme\n3|8250|acme\n3|8250|acme"
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
    if plugin == "js-databases" {
        // The host's connection also asked the server to cancel the
        // query: it stops waiting while the lock is still held.
        poll_until(secs(60), millis(20), || {
            let waiting = postgres.psql(
                "shop",
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
            );
            match waiting.as_str() {
                "0" => Ok(()),
                other => Err(format!("{other} queries still waiting on the lock")),
            }
        });
    }
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

/// `js-databases`' `pg_query` and `redis_command` tasks, each with its
/// `args`, in one app whose plugin is granted `grants`.
fn js_app(grants: &str, limits: &str, tasks: &[(&str, &str, Value)]) -> TestApp {
    let tasks: String = tasks
        .iter()
        .map(|(name, factory, args)| {
            format!(
                "[[tasks]]\nplugin = \"databases\"\nfactory = \"{factory}\"\nname = \"{name}\"\n\
                 args = {args}\n",
                args = toml_of(args),
            )
        })
        .collect();
    TestApp::new(&format!(
        r#"
        name = "shop"
        {tasks}
        [plugins.databases]
        path = "{{js-databases}}"
        [plugins.databases.grants]
        tcp = [{grants}]
        [plugins.databases.limits]
        {limits}
        "#
    ))
}

/// A JSON value (no nulls: TOML has none) as a TOML inline value.
fn toml_of(value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_of).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{} = {}", Value::from(k.as_str()), toml_of(v)))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
        Value::Null => panic!("TOML has no null"),
        // Strings, numbers and booleans: JSON's forms are TOML's.
        other => other.to_string(),
    }
}

#[test]
fn js_tasks_get_postgres_values_by_type_and_send_parameters_as_text() {
    let postgres = Postgres::start();
    let url = postgres.url();
    let sql = "SELECT 1::int2 AS small, 2::int4 AS int, 9007199254740993::int8 AS big, \
               1.5::float8 AS float, true AS yes, 'héllo'::text AS text, \
               12345678.90::numeric(12,2) AS price, -0.000120::numeric AS tiny, \
               '\\x00ff'::bytea AS bytes, '2026-12-06'::date AS day, \
               '2026-12-06 10:30:00.25+00'::timestamptz AS at, \
               '{\"a\": [1, 2]}'::jsonb AS doc, \
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS id, NULL::int4 AS nothing, \
               $1::int4 + 1 AS p1, $2::numeric * 2 AS p2, $3::date + 1 AS p3, \
               $4::jsonb -> 'k' AS p4, $5::bool AS p5";
    let app = js_app(
        &format!("\"127.0.0.1:{}\"", postgres.port),
        "",
        &[
            (
                "types",
                "pg_query",
                json!({"url": url, "sql": sql,
                       "params": [41, 1.25, "2026-12-31", {"k": "v"}, false]}),
            ),
            (
                "interval",
                "pg_query",
                json!({"url": url, "sql": "SELECT '1 day'::interval AS span"}),
            ),
            ("syntax", "pg_query", json!({"url": url, "sql": "SELEC 1"})),
            (
                "arity",
                "pg_query",
                json!({"url": url, "sql": "SELECT $1::int AS a", "params": []}),
            ),
        ],
    );
    let run = app.run_until_idle();
    assert_eq!(
        run.results_of("types"),
        vec![json!([{
            "small": 1, "int": 2, "big": "9007199254740993", "float": 1.5, "yes": true,
            "text": "héllo", "price": "12345678.90", "tiny": "-0.000120",
            "bytes": [0, 255], "day": "2026-12-06", "at": "2026-12-06T10:30:00.250Z",
            "doc": "{\"a\": [1, 2]}", "id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "nothing": null, "p1": 42, "p2": "2.50", "p3": "2027-01-01", "p4": "\"v\"",
            "p5": false,
        }])],
        "{}",
        run.dump()
    );
    let interval = run.error_of("interval");
    assert!(
        interval.contains("column `span`")
            && interval.contains("type interval")
            && interval.contains("::text"),
        "{interval}"
    );
    let syntax = run.error_of("syntax");
    assert!(syntax.contains("ERROR 42601: syntax error"), "{syntax}");
    let arity = run.error_of("arity");
    assert!(arity.contains("takes 1 parameter(s)"), "{arity}");
}

#[test]
fn js_connections_are_refused_outside_the_grant_and_answers_past_the_limit() {
    let postgres = Postgres::start();
    let redis = Redis::start();
    let granted = format!(
        "\"127.0.0.1:{}\", \"localhost:{}\"",
        postgres.port, redis.port
    );
    let app = js_app(
        &granted,
        "db_result_bytes = 4096",
        &[
            (
                "other_port",
                "pg_query",
                json!({"url": format!("postgres://taskhost:secret@127.0.0.1:{}/shop", redis.port + 1),
                       "sql": "SELECT 1"}),
            ),
            (
                "other_name",
                "redis_command",
                json!({"url": format!("redis://127.0.0.1.nip.io:{}", redis.port), "command": "PING"}),
            ),
            (
                "bad_url",
                "pg_query",
                json!({"url": "mysql://root@127.0.0.1/shop", "sql": "SELECT 1"}),
            ),
            (
                "small",
                "pg_query",
                json!({"url": postgres.url(), "sql": "SELECT repeat('x', 1000) AS s"}),
            ),
            (
                "large",
                "pg_query",
                json!({"url": postgres.url(), "sql": "SELECT repeat('x', 100000) AS s"}),
            ),
            (
                "by_name",
                "redis_command",
                json!({"url": format!("redis://localhost:{}", redis.port), "command": "PING"}),
            ),
            (
                "subscribe",
                "redis_command",
                json!({"url": format!("redis://localhost:{}", redis.port),
                       "command": "subscribe", "args": ["news"]}),
            ),
        ],
    );
    let run = app.run_until_idle();
    let other_port = run.error_of("other_port");
    assert!(
        other_port.contains("not in [plugins.databases.grants] tcp")
            && other_port.contains(&format!("add \"127.0.0.1:{}\"", redis.port + 1)),
        "{other_port}"
    );
    let other_name = run.error_of("other_name");
    assert!(
        other_name.contains(&format!("add \"127.0.0.1.nip.io:{}\"", redis.port)),
        "{other_name}"
    );
    // A refusal is not retried: the next attempt would be refused the same.
    assert_eq!(
        run.event_of("retrying", "other_port").len(),
        0,
        "{}",
        run.dump()
    );
    let bad_url = run.error_of("bad_url");
    assert!(bad_url.contains("not a Postgres URL"), "{bad_url}");
    assert_eq!(run.results_of("small").len(), 1, "{}", run.dump());
    let large = run.error_of("large");
    assert!(
        large.contains("over 4096 bytes ([limits] db_result_bytes)"),
        "{large}"
    );
    assert_eq!(
        run.results_of("by_name"),
        vec![json!("PONG")],
        "{}",
        run.dump()
    );
    let subscribe = run.error_of("subscribe");
    assert!(
        subscribe.contains("SUBSCRIBE is not offered"),
        "{subscribe}"
    );
}

#[test]
fn js_redis_replies_keep_their_shape() {
    let redis = Redis::start();
    let url = redis.url();
    let app = js_app(
        &format!("\"127.0.0.1:{}\"", redis.port),
        "",
        &[(
            "script",
            "redis_command",
            // One command whose reply nests arrays, with every kind of element.
            json!({"url": url, "command": "EVAL", "args": [
                "return {1, 'two', {3, {'four'}}, false, redis.status_reply('FINE')}", 0
            ]}),
        )],
    );
    let run = app.run_until_idle();
    assert_eq!(
        run.results_of("script"),
        vec![json!([1, "two", [3, ["four"]], null, "FINE"])],
        "{}",
        run.dump()
    );
}
