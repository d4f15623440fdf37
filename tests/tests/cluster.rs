//! Several hosts as one app on a real `nats-server` (JetStream on, a free
//! loopback port; installed by `scripts/setup-nats`), each host a real
//! `taskhost run` process.

use serde_json::Value;
use taskhost_tests::{NatsServer, Run, Running, TestApp};

fn ok(run: Run) -> Run {
    assert_eq!(run.code, Some(0), "{}", run.dump());
    run
}

/// A metric's value from a host's `/metrics`; 0 for a labelled counter
/// not counted yet (absent from the text).
fn metric(app: &TestApp, name: &str) -> f64 {
    let run = ok(app.cli(&["metrics"]));
    run.stdout
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Waits (up to 30 s) until metric `name` of `app` is `want`.
fn await_metric(app: &TestApp, name: &str, want: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let seen = metric(app, name);
        if seen == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stayed {seen}, not {want}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A host `host` of cluster `cluster` on `nats`, with `workers` workers and
/// `rest` of app.toml, started and serving.
fn host(
    nats: &NatsServer,
    cluster: &str,
    host: &str,
    workers: u32,
    rest: &str,
) -> (TestApp, Running) {
    let app = TestApp::new(&format!(
        r#"
        name = "clustered"
        workers = {workers}
        [cluster]
        nats = "{url}"
        name = "{cluster}"
        host = "{host}"
        [plugins.kit]
        path = "{{testkit}}"
        {rest}
        "#,
        url = nats.url,
    ));
    let running = app.spawn();
    (app, running)
}

#[test]
fn one_dispatch_wakes_the_waiters_of_every_host_exactly_once() {
    let nats = NatsServer::start();
    let waiters = r#"
        [[tasks]]
        plugin = "kit"
        factory = "waiter"
        name = "w"
        args = { event = "jobs.*" }
    "#;
    let mut hosts: Vec<(TestApp, Running)> = ["a", "b", "c"]
        .into_iter()
        .map(|name| host(&nats, "events", name, 2, waiters))
        .collect();
    for (app, running) in &hosts {
        assert!(
            running.seen().iter().any(|l| l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("joined cluster `events`"))),
            "{:?}",
            running.seen()
        );
        // One waiter per worker, registered.
        await_metric(app, "taskhost_event_waiters", 2.0);
    }

    // One dispatch on host a: every waiter of every host gets its payload.
    let payload = r#"{"job": 7, "note": "héllo, wörld \"quoted\""}"#;
    let woken = ok(hosts[0].0.cli(&["dispatch", "jobs.done", payload]));
    assert!(
        woken.stdout.contains('2'),
        "a's own waiters: {}",
        woken.dump()
    );
    for (app, running) in &mut hosts {
        running.wait_for(2, |l| l["event"] == "done" && l["task"] == "w");
        let results: Vec<Value> = running
            .seen()
            .iter()
            .filter(|l| l["event"] == "done" && l["task"] == "w")
            .map(|l| serde_json::from_str(l["result"].as_str().unwrap()).unwrap())
            .collect();
        assert_eq!(results, [Value::from(payload), Value::from(payload)]);
        assert_eq!(metric(app, "taskhost_event_waiters"), 0.0);
    }

    // Exactly once: a sent it once, b and c each received it once, and a
    // did not hear its own dispatch come back.
    let counted = |app: &TestApp, direction: &str| {
        metric(
            app,
            &format!("taskhost_cluster_events_total{{direction=\"{direction}\"}}"),
        )
    };
    assert_eq!(counted(&hosts[0].0, "sent"), 1.0);
    assert_eq!(counted(&hosts[0].0, "received"), 0.0);
    for (app, _) in &hosts[1..] {
        assert_eq!(counted(app, "sent"), 0.0);
        assert_eq!(counted(app, "received"), 1.0);
    }

    // A name that cannot be a subject is refused in a cluster, saying why.
    let refused = hosts[1].0.cli(&["dispatch", "jobs done", ""]);
    assert_ne!(refused.code, Some(0), "{}", refused.dump());
    assert!(
        refused
            .stderr
            .contains("cannot travel between the hosts of cluster `events`"),
        "{}",
        refused.dump()
    );

    for (_, running) in hosts {
        running.signal("TERM");
        let run = running.finish();
        assert_eq!(run.code, Some(0), "{}", run.dump());
    }
}

#[test]
fn a_host_that_cannot_reach_nats_says_where_it_looked() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = TestApp::new(&format!(
        r#"
        name = "lonely"
        [cluster]
        nats = "nats://127.0.0.1:{port}"
        name = "nowhere"
        host = "a"
        [plugins.kit]
        path = "{{testkit}}"
        "#
    ));
    let run = app.run_until_idle();
    assert_ne!(run.code, Some(0), "{}", run.dump());
    let said = format!("{}{}", run.stderr, run.stdout);
    assert!(
        said.contains("[cluster]") && said.contains(&format!("nats://127.0.0.1:{port}")),
        "{}",
        run.dump()
    );
}
