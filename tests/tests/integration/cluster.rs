//! Several hosts as one app on a real `nats-server` (JetStream on, a free
//! loopback port; installed by `scripts/setup-nats`), each host a real
//! `taskhost run` process.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use taskhost::control::routes;
use taskhost_tests::{Api, NatsServer, Run, Running, TestApp, millis, poll_until, secs};

/// A metric's value from a host's `/metrics`; 0 for a labelled counter
/// not counted yet (absent from the text).
fn metric(app: &TestApp, name: &str) -> f64 {
    app.metric(name).unwrap_or(0.0)
}

fn await_metric(app: &TestApp, name: &str, want: f64) {
    app.await_metric(name, want);
}

/// Waits (up to 30 s) until `app`'s host sees `count` hosts, every one
/// taking requests (its heartbeat says `serving`).
fn await_all_serving(app: &TestApp, count: usize) {
    poll_until(secs(30), millis(50), || {
        let hosts = hosts_of(app);
        let all = hosts.as_array().unwrap();
        if all.len() == count && all.iter().all(|h| h["serving"] == true) {
            Ok(())
        } else {
            Err(format!("hosts: {hosts}"))
        }
    });
}

/// What `app`'s host says of the hosts of its cluster (`taskhost hosts`).
fn hosts_of(app: &TestApp) -> Value {
    serde_json::from_str(app.cli(&["hosts", "--json"]).ok().stdout.trim()).unwrap()
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
    host_with(nats, cluster, host, workers, "", "", rest)
}

/// [`host`] with `top` (app.toml's top-level keys) and `fields` of
/// `[cluster]` besides its address and names.
fn host_with(
    nats: &NatsServer,
    cluster: &str,
    host: &str,
    workers: u32,
    top: &str,
    fields: &str,
    rest: &str,
) -> (TestApp, Running) {
    let app = TestApp::new(&format!(
        r#"
        name = "clustered"
        workers = {workers}
        {top}
        [cluster]
        nats = "{url}"
        name = "{cluster}"
        host = "{host}"
        {fields}
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
    let woken = hosts[0].0.cli(&["dispatch", "jobs.done", payload]).ok();
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
        running.stop();
    }
}

/// The names of the tasks `app`'s host lists (ended ones too).
fn task_names(app: &TestApp) -> Vec<String> {
    let run = app.cli(&["tasks", "--json"]).ok();
    let tasks: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    tasks
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn tasks_go_to_any_host_a_named_one_or_all_and_are_seen_and_cancelled_from_any() {
    let nats = NatsServer::start();
    let mut hosts: Vec<(TestApp, Running)> = ["a", "b", "c"]
        .into_iter()
        .map(|name| host(&nats, "submit", name, 1, ""))
        .collect();
    for (app, _) in &hosts {
        await_all_serving(app, 3);
    }
    let (api, _) = Api::of(&hosts[0].0);

    // 30 tasks for `any` host: NATS's queue group spreads them.
    let mut by_host: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..30 {
        let (status, added) = api.post_status(
            routes::SUBMIT.path,
            json!({"plugin": "kit", "factory": "identity", "name": format!("any-{i}"), "host": "any"}),
        );
        assert_eq!(status, 201, "{added}");
        let tasks = added["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 1, "{added}");
        *by_host
            .entry(tasks[0]["host"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    // Each host got some: a queue group picks at random, and all 30 on two
    // hosts has a chance of 3 x (2/3)^30, about 1 in 60,000.
    assert_eq!(
        by_host.keys().collect::<Vec<_>>(),
        ["a", "b", "c"],
        "{by_host:?}"
    );
    // Each ran once, on the host its answer named.
    let mut all_names = Vec::new();
    for (app, _) in &hosts {
        let host = app_host(app, &hosts);
        let names: Vec<String> = task_names(app)
            .into_iter()
            .filter(|n| n.starts_with("any-"))
            .collect();
        assert_eq!(names.len(), by_host[host], "{host}: {names:?}");
        all_names.extend(names);
    }
    all_names.sort();
    all_names.dedup();
    assert_eq!(all_names.len(), 30, "{all_names:?}");

    // A named host, from the CLI.
    let added = hosts[0]
        .0
        .cli(&["add", "kit", "identity", "--name", "only-c", "--host", "c"])
        .ok();
    assert!(
        added.stdout.contains("on host c, worker 0"),
        "{}",
        added.dump()
    );
    for (app, _) in &hosts {
        let here = task_names(app).contains(&"only-c".to_string());
        assert_eq!(here, app_host(app, &hosts) == "c");
    }

    // All hosts: one task each, said host by host.
    let (status, added) = api.post_status(
        routes::SUBMIT.path,
        json!({"plugin": "kit", "factory": "identity", "name": "everywhere", "host": "all"}),
    );
    assert_eq!(status, 201, "{added}");
    let on: Vec<&str> = added["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["host"].as_str().unwrap())
        .collect();
    assert_eq!(on, ["a", "b", "c"], "{added}");
    for (app, _) in &hosts {
        assert!(task_names(app).contains(&"everywhere".to_string()));
    }

    // No such host: 503, never a quiet local run.
    let refused = hosts[1]
        .0
        .cli(&["add", "kit", "identity", "--name", "lost", "--host", "zzz"]);
    assert_ne!(refused.code, Some(0), "{}", refused.dump());
    assert!(
        refused
            .stderr
            .contains("no host of cluster `submit` answers for zzz"),
        "{}",
        refused.dump()
    );
    assert!(!task_names(&hosts[1].0).contains(&"lost".to_string()));

    // The cluster-wide view: hosts, and tasks gathered from every host.
    let listed = hosts[1].0.cli(&["hosts", "--json"]).ok();
    let listed: Value = serde_json::from_str(listed.stdout.trim()).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"], "{listed}");
    let everywhere = hosts[1]
        .0
        .cli(&["task", "everywhere", "--cluster", "--json"])
        .ok();
    let everywhere: Value = serde_json::from_str(everywhere.stdout.trim()).unwrap();
    let on: Vec<&str> = everywhere
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["host"].as_str().unwrap())
        .collect();
    assert_eq!(on, ["a", "b", "c"], "{everywhere}");
    let table = hosts[1].0.cli(&["tasks", "--cluster"]).ok().stdout;
    assert!(table.starts_with("HOST"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with('c') && l.contains("only-c")),
        "{table}"
    );

    let builds = hosts[0].0.cli(&["plugins", "--cluster", "--json"]).ok();
    let builds: Value = serde_json::from_str(builds.stdout.trim()).unwrap();
    let on: Vec<&str> = builds
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["host"].as_str().unwrap())
        .collect();
    assert_eq!(on, ["a", "b", "c"], "{builds}");

    // Cancel by name from a host that does not run it.
    hosts[0]
        .0
        .cli(&[
            "add",
            "kit",
            "nap",
            "--args",
            r#"{"ms": 600000}"#,
            "--name",
            "far",
            "--host",
            "c",
        ])
        .ok();
    let (_, running_c) = &mut hosts[2];
    running_c.wait_for(1, |l| l["event"] == "started" && l["task"] == "far");
    let ended = hosts[1]
        .0
        .cli(&["cancel", "far", "--cluster", "--json"])
        .ok();
    let ended: Value = serde_json::from_str(ended.stdout.trim()).unwrap();
    assert_eq!(ended.as_array().unwrap().len(), 1, "{ended}");
    assert_eq!(ended[0]["host"], "c", "{ended}");
    assert_eq!(ended[0]["cancel_stage"], "cooperative", "{ended}");
    // No such task anywhere: not found, as on one host.
    let missing = hosts[1].0.cli(&["cancel", "nowhere", "--cluster"]);
    assert_eq!(missing.code, Some(3), "{}", missing.dump());

    // A purge of every host: one count per host, each saying which.
    let purged = api.post(routes::CLUSTER_PURGE.path, json!({}));
    let counts: Vec<(&str, u64)> = purged
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["host"].as_str().unwrap(), p["purged"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        counts.iter().map(|(host, _)| *host).collect::<Vec<_>>(),
        ["a", "b", "c"],
        "{purged}"
    );
    assert!(counts.iter().all(|(_, n)| *n > 0), "{purged}");

    for (_, running) in hosts {
        running.stop();
    }
}

/// Which host of `hosts` `app` is.
fn app_host<'a>(app: &TestApp, hosts: &[(TestApp, Running)]) -> &'a str {
    let index = hosts
        .iter()
        .position(|(other, _)| std::ptr::eq(other, app))
        .unwrap();
    ["a", "b", "c"][index]
}

/// Adds a 10-minute `nap` named `solo` on `app`'s host, its name
/// cluster-scoped.
fn add_solo(app: &TestApp) -> Run {
    app.cli(&[
        "add",
        "kit",
        "nap",
        "--args",
        r#"{"ms": 600000}"#,
        "--name",
        "solo",
        "--scope",
        "cluster",
    ])
}

#[test]
fn a_cluster_scoped_name_is_won_by_one_host_and_freed_by_its_purge() {
    let nats = NatsServer::start();
    let hosts: Vec<(TestApp, Running)> = ["a", "b", "c"]
        .into_iter()
        .map(|name| host(&nats, "names", name, 1, ""))
        .collect();
    for (app, _) in &hosts {
        await_all_serving(app, 3);
    }
    // The same name on a and b at once: one wins, the other is told who has it.
    let (app_a, app_b) = (&hosts[0].0, &hosts[1].0);
    let (on_a, on_b) = std::thread::scope(|s| {
        let a = s.spawn(|| add_solo(app_a));
        let b = s.spawn(|| add_solo(app_b));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (winner, loser, lost) = match (on_a.code, on_b.code) {
        (Some(0), Some(0)) => panic!("both won:\n{}\n{}", on_a.dump(), on_b.dump()),
        (Some(0), _) => (0, 1, on_b),
        (_, Some(0)) => (1, 0, on_a),
        _ => panic!("neither won:\n{}\n{}", on_a.dump(), on_b.dump()),
    };
    let winner_name = ["a", "b"][winner];
    assert!(
        lost.stderr.contains(&format!("runs on host {winner_name}")),
        "{}",
        lost.dump()
    );
    // A third host still cannot take it; a per-worker name of the same
    // text is another thing, and allowed.
    let third = add_solo(&hosts[2].0);
    assert_ne!(third.code, Some(0), "{}", third.dump());
    hosts[2]
        .0
        .cli(&["add", "kit", "identity", "--name", "solo"])
        .ok();

    // A host that joins later has not heard the others yet: it must not
    // take their claims for a dead host's.
    let (late, late_running) = host(&nats, "names", "d", 1, "");
    let refused = add_solo(&late);
    assert_ne!(refused.code, Some(0), "{}", refused.dump());
    assert!(
        refused
            .stderr
            .contains(&format!("runs on host {winner_name}")),
        "{}",
        refused.dump()
    );
    late_running.stop();

    // Cancelled from the third host, purged where it ran: the name is free.
    let ended = hosts[2]
        .0
        .cli(&["cancel", "solo", "--cluster", "--json"])
        .ok();
    assert!(
        ended
            .stdout
            .contains(&format!("\"host\":\"{winner_name}\"")),
        "{}",
        ended.dump()
    );
    hosts[winner].0.cli(&["purge"]).ok();
    let again = add_solo(&hosts[loser].0).ok();
    assert!(again.stdout.contains("started task"), "{}", again.dump());

    for (_, running) in hosts {
        running.stop();
    }
    // Every name freed, and no marker of a freed one left in the stream
    // (the bucket grew by one per name ever claimed before).
    assert_eq!(stream_messages(&nats, "KV_names-names"), 0);
}

#[test]
fn a_schedule_in_a_three_host_cluster_fires_once_per_tick() {
    let nats = NatsServer::start();
    let schedule = r#"
        [[schedules]]
        name = "beat"
        plugin = "kit"
        factory = "identity"
        cron = "* * * * * *"
    "#;
    let hosts: Vec<(TestApp, Running)> = ["a", "b", "c"]
        .into_iter()
        .map(|name| host(&nats, "ticks", name, 1, schedule))
        .collect();
    // Every host runs the schedule; each tick's task is on one host only.
    // Five ticks after all three hosts serve.
    let first: Vec<usize> = hosts
        .iter()
        .map(|(app, _)| {
            task_names(app)
                .iter()
                .filter(|n| n.starts_with("beat@"))
                .count()
        })
        .collect();
    let before: usize = first.iter().sum();
    poll_until(secs(60), millis(200), || {
        let mut ticks: Vec<String> = hosts
            .iter()
            .flat_map(|(app, _)| task_names(app))
            .filter(|name| name.starts_with("beat@"))
            .collect();
        let all = ticks.len();
        ticks.sort();
        ticks.dedup();
        assert_eq!(ticks.len(), all, "a tick ran twice: {ticks:?}");
        if all >= before + 5 {
            Ok(())
        } else {
            Err(format!("ticks run: {ticks:?}"))
        }
    });
    for (_, running) in hosts {
        let run = running.stop();
        // The ticks a host did not win it left to the others, without
        // counting them missed.
        assert!(
            run.lines.iter().all(|l| l["event"] != "schedule_missed"),
            "{}",
            run.dump()
        );
    }
}

/// Waits (up to 30 s) until `app`'s host says it is `status`.
fn await_health(app: &TestApp, status: &str) {
    poll_until(secs(30), millis(50), || {
        let run = app.cli(&["health", "--json"]);
        let health: Value = serde_json::from_str(run.stdout.trim()).unwrap_or(Value::Null);
        if health["status"] == status {
            Ok(())
        } else {
            Err(format!("health is {health}, not {status}"))
        }
    });
}

#[test]
fn when_nats_goes_away_local_work_goes_on_and_the_hosts_come_back() {
    let mut nats = NatsServer::start();
    let waiter = r#"
        [[tasks]]
        plugin = "kit"
        factory = "waiter"
        name = "w"
        args = { event = "jobs.*" }
    "#;
    let (a, mut running_a) = host(&nats, "outage", "a", 1, waiter);
    let (b, mut running_b) = host(&nats, "outage", "b", 1, "");
    await_metric(&a, "taskhost_event_waiters", 1.0);
    for app in [&a, &b] {
        await_all_serving(app, 2);
        let health = app.cli(&["health"]).ok();
        assert_eq!(health.stdout.trim(), "ok", "{}", health.dump());
    }

    // NATS dies: both hosts say they are degraded, and why, and go on
    // running their own work.
    // A durable task on b, which ends while NATS is away.
    b.cli(&[
        "add",
        "kit",
        "keyed_nap",
        "--args",
        r#"{"ms": 1500}"#,
        "--name",
        "through",
        "--durable",
    ])
    .ok();
    running_b.wait_for(1, |l| l["event"] == "started" && l["task"] == "through");
    nats.kill();
    for app in [&a, &b] {
        await_health(app, "degraded");
    }
    running_b.wait_for(1, |l| l["event"] == "done" && l["task"] == "through");
    // A durable submission cannot be recorded now: 503, nothing started.
    let (api_b, _) = Api::of(&b);
    let (status, refused) = api_b.post_any(
        routes::SUBMIT.path,
        json!({"plugin": "kit", "factory": "nap", "args": {"ms": 1}, "name": "later", "durable": true}),
    );
    assert_eq!(status, 503, "{refused}");
    assert!(
        refused.to_string().contains("NATS is unreachable"),
        "{refused}"
    );
    assert!(!task_names(&b).contains(&"later".to_string()));
    let said = b.cli(&["health"]);
    assert_eq!(said.code, Some(1), "{}", said.dump());
    assert!(
        said.stdout.contains("NATS is unreachable"),
        "{}",
        said.dump()
    );
    b.cli(&["add", "kit", "identity", "--name", "meanwhile"])
        .ok();
    let tasks = b.cli(&["task", "meanwhile", "--json"]).ok();
    assert!(tasks.stdout.contains("\"meanwhile\""), "{}", tasks.dump());

    // NATS comes back on its port and store: the hosts reconnect and
    // resubscribe, and events flow again. A dispatch made before a's
    // subscription is back reaches nobody there (at most once), so b
    // dispatches until a's waiter has heard one.
    nats.restart();
    for app in [&a, &b] {
        await_health(app, "ok");
    }
    poll_until(secs(30), millis(100), || {
        b.cli(&["dispatch", "jobs.back", "\"again\""]).ok();
        let heard = a.cli(&["task", "w", "--json"]).ok();
        if heard.stdout.contains("\"done\"") {
            Ok(())
        } else {
            Err(heard.dump())
        }
    });
    running_a.wait_for(1, |l| l["event"] == "done" && l["task"] == "w");
    // The end of the durable task is recorded once NATS is back, and its
    // message leaves the queue.
    poll_until(secs(30), millis(100), || {
        let (queued, records) = durable_state(&nats, "outage");
        if queued == 0 && records["through"]["state"] == "done" {
            Ok(())
        } else {
            Err(format!("{queued} queued: {records:?}"))
        }
    });
    for running in [running_a, running_b] {
        running.stop();
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

/// What cluster `cluster` left in JetStream: the messages of its durable
/// queue, and its durable tasks' records by name.
fn durable_state(nats: &NatsServer, cluster: &str) -> (u64, BTreeMap<String, Value>) {
    use futures_util::StreamExt;
    with_jetstream(nats, async |jetstream| {
        let bucket = format!("{cluster}-durable");
        let mut stream = jetstream.get_stream(&bucket).await.unwrap();
        let messages = stream.info().await.unwrap().state.messages;
        let records = jetstream.get_key_value(&bucket).await.unwrap();
        let mut keys = records.keys().await.unwrap();
        let mut by_name = BTreeMap::new();
        while let Some(key) = keys.next().await {
            let key = key.unwrap();
            if !key.starts_with("t.") {
                continue;
            }
            let value = records.get(&key).await.unwrap().unwrap();
            let record: Value = serde_json::from_slice(&value).unwrap();
            by_name.insert(record["name"].as_str().unwrap().to_string(), record);
        }
        (messages, by_name)
    })
}

#[test]
fn a_durable_task_outlives_its_host_and_a_cancelled_one_is_not_run_again() {
    let nats = NatsServer::start();
    // A short ack_wait, so a dead host's tasks come back within seconds;
    // a long grace, so a cancelled task is still running when its host dies.
    let (a, mut running_a) = host_with(
        &nats,
        "durable",
        "a",
        1,
        "cancel_grace_ms = 60000",
        "ack_wait_ms = 2000",
        "",
    );
    let (b, mut running_b) = host_with(&nats, "durable", "b", 1, "", "ack_wait_ms = 2000", "");
    for app in [&a, &b] {
        await_all_serving(app, 2);
    }

    // Two durable tasks on a: one to finish elsewhere, one that a cancel
    // cannot stop at once (pure computation, forced only after the grace).
    a.cli(&[
        "add",
        "kit",
        "keyed_nap",
        "--args",
        r#"{"ms": 5000}"#,
        "--name",
        "job",
        "--durable",
    ])
    .ok();
    a.cli(&[
        "add",
        "kit",
        "crunch",
        "--args",
        r#"{"rounds": 1000000000000}"#,
        "--name",
        "stuck",
        "--durable",
    ])
    .ok();
    for name in ["job", "stuck"] {
        running_a.wait_for(1, |l| l["event"] == "started" && l["task"] == name);
    }
    let (queued, records) = durable_state(&nats, "durable");
    assert_eq!(queued, 2, "{records:?}");
    assert_eq!(records["job"]["host"], "a", "{records:?}");

    // The cancel of `stuck` is recorded before it is sent; the task goes
    // on computing, and its host dies before it ends.
    let cancel = a.cli(&["cancel", "stuck", "--timeout-ms", "200"]);
    assert_ne!(
        cancel.code,
        Some(0),
        "it cannot have ended: {}",
        cancel.dump()
    );
    poll_until(secs(10), millis(50), || {
        let records = durable_state(&nats, "durable").1;
        if records["stuck"]["cancel_requested"] == true {
            Ok(())
        } else {
            Err(format!("the cancel is not recorded: {records:?}"))
        }
    });
    running_a.signal("KILL");
    let killed = running_a.finish();
    assert_eq!(killed.code, None, "{}", killed.dump());

    // b runs `job` again, as attempt 2, once a is gone and its message
    // came back; `stuck` is recorded as cancelled there, not run.
    running_b.wait_for(1, |l| l["event"] == "done" && l["task"] == "job");
    running_b.wait_for(1, |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("stuck was cancelled while host a ran it"))
    });
    let done = running_b
        .seen()
        .iter()
        .find(|l| l["event"] == "done" && l["task"] == "job")
        .unwrap()
        .clone();
    let result: Value = serde_json::from_str(done["result"].as_str().unwrap()).unwrap();
    assert_eq!(result["attempt"], 2, "{done}");
    assert!(
        running_b
            .seen()
            .iter()
            .all(|l| !(l["event"] == "started" && l["task"] == "stuck")),
        "stuck ran again on b"
    );
    let (queued, records) = durable_state(&nats, "durable");
    assert_eq!(queued, 0, "the queue ends empty: {records:?}");
    assert_eq!(records["job"]["state"], "done", "{records:?}");
    assert_eq!(records["job"]["host"], "b", "{records:?}");
    assert_eq!(records["job"]["attempt"], 2, "{records:?}");
    assert_eq!(records["stuck"]["state"], "cancelled", "{records:?}");
    assert_eq!(records["stuck"]["attempt"], 1, "{records:?}");
    running_b.stop();
}

/// The build plugin `plugin` serves on `app`'s host.
fn serving_build(app: &TestApp, plugin: &str) -> String {
    let builds = app.cli(&["plugins", "--json"]).ok();
    let builds: Value = serde_json::from_str(builds.stdout.trim()).unwrap();
    builds
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == plugin && b["state"] == "serving")
        .unwrap_or_else(|| panic!("no serving build of {plugin}: {builds}"))["version"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_build_loaded_with_cluster_runs_on_every_host_and_a_bad_digest_nowhere() {
    let nats = NatsServer::start();
    // `roll` starts as the greeter; the testkit is rolled out in its place.
    let roll = r#"
        [plugins.roll]
        path = "{greeter}"
    "#;
    let mut hosts: Vec<(TestApp, Running)> = ["a", "b"]
        .into_iter()
        .map(|name| host(&nats, "rollout", name, 1, roll))
        .collect();
    for (app, _) in &hosts {
        await_all_serving(app, 2);
    }
    let greeter_build = serving_build(&hosts[0].0, "roll");
    let testkit = taskhost_tests::plugin("testkit");
    let loaded = hosts[0]
        .0
        .cli(&[
            "load",
            "roll",
            testkit.to_str().unwrap(),
            "--cluster",
            "--json",
        ])
        .ok();
    let loaded: Value = serde_json::from_str(loaded.stdout.trim()).unwrap();
    let new_build = loaded["version"].as_str().unwrap().to_string();
    assert_ne!(new_build, greeter_build);
    let said: Vec<(&str, &str)> = loaded["rollout"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["host"].as_str().unwrap(), h["build"].as_str().unwrap()))
        .collect();
    assert_eq!(said, [("a", &*new_build), ("b", &*new_build)], "{loaded}");
    // It runs on every host: a factory only the new build has.
    for (app, running) in &mut hosts {
        assert_eq!(serving_build(app, "roll"), new_build);
        app.cli(&["add", "roll", "identity", "--name", "new-build"])
            .ok();
        running.wait_for(1, |l| l["event"] == "done" && l["task"] == "new-build");
    }
    // A host that joins later loads the rolled-out build at its start.
    let (c, mut running_c) = host(&nats, "rollout", "c", 1, roll);
    running_c.wait_for(1, |l| {
        l["event"] == "plugin_loaded" && l["version"].as_str() == Some(&*new_build)
    });
    assert_eq!(serving_build(&c, "roll"), new_build);
    hosts.push((c, running_c));

    // An object whose bytes do not match the digest it was put with (a
    // build damaged after its digest was taken: the greeter's bytes, the
    // digest of those bytes with one changed) is refused by every host,
    // and the rolled-out build keeps serving.
    let greeter = std::fs::read(taskhost_tests::plugin("greeter")).unwrap();
    let mut damaged = greeter.clone();
    *damaged.last_mut().unwrap() ^= 1;
    let claimed = taskhost::cluster::rollout::digest_of(&damaged);
    with_jetstream(&nats, async |jetstream| {
        let store = jetstream.get_object_store("rollout-plugins").await.unwrap();
        let meta = async_nats::jetstream::object_store::ObjectMetadata {
            name: "roll".into(),
            metadata: [("digest".to_string(), claimed.clone())].into(),
            ..Default::default()
        };
        store.put(meta, &mut greeter.as_slice()).await.unwrap();
    });
    for (app, running) in &mut hosts {
        running.wait_for(1, |l| {
            l["event"] == "plugin_refused"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("does not match its digest"))
        });
        assert_eq!(serving_build(app, "roll"), new_build);
    }
    for (_, running) in hosts {
        running.stop();
    }
}

/// Issue 27 item 4: `load --cluster --restart-tasks` restarts the
/// plugin's startup tasks on the new build on every host, and a host that
/// joins afterwards starts its tasks on the cluster's build, not on
/// app.toml's (before, it started them on its own build and then moved to
/// the cluster's, leaving them draining on the stale one).
#[test]
fn load_cluster_restart_tasks_moves_startup_tasks_everywhere_and_a_joiner_starts_on_the_new_build()
{
    let nats = NatsServer::start();
    let builds = tempfile::tempdir().unwrap();
    let v1 = taskhost_tests::versioned("v1", builds.path());
    let v2 = taskhost_tests::versioned("v2", builds.path());
    let resident = format!(
        r#"
        [plugins.versioned]
        path = "{}"
        [[tasks]]
        plugin = "versioned"
        factory = "linger"
        name = "resident"
        args = {{ event = "never" }}
        "#,
        v1.display()
    );
    let mut hosts: Vec<(TestApp, Running)> = ["a", "b"]
        .into_iter()
        .map(|name| host(&nats, "moving", name, 1, &resident))
        .collect();
    for (app, running) in &mut hosts {
        await_all_serving(app, 2);
        running.wait_for(1, |l| l["message"] == "lingering on v1");
    }
    let loaded = hosts[0]
        .0
        .cli(&[
            "load",
            "versioned",
            v2.to_str().unwrap(),
            "--cluster",
            "--restart-tasks",
            "--json",
        ])
        .ok();
    let loaded: Value = serde_json::from_str(loaded.stdout.trim()).unwrap();
    let said: Vec<(&str, &Value)> = loaded["rollout"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["host"].as_str().unwrap(), &h["restarted"]))
        .collect();
    assert_eq!(said, [("a", &json!(1)), ("b", &json!(1))], "{loaded}");
    for (_, running) in &mut hosts {
        running.wait_for(1, |l| l["message"] == "lingering on v2");
    }
    // A host joining now loads the cluster's build before its tasks.
    let (_c, mut running_c) = host(&nats, "moving", "c", 1, &resident);
    running_c.wait_for(1, |l| l["message"] == "lingering on v2");
    let run_c = running_c.stop();
    assert!(
        run_c.messages("lingering on v1").is_empty(),
        "c started its task on app.toml's build: {}",
        run_c.dump()
    );
    for (_, running) in hosts {
        running.stop();
    }
}

/// The hosts that run a copy of `name` now, as the cluster lists it.
fn running_copies(app: &TestApp, name: &str) -> Vec<String> {
    let listed = app.cli(&["task", name, "--cluster", "--json"]);
    let listed: Value = serde_json::from_str(listed.stdout.trim()).unwrap_or(json!([]));
    listed
        .as_array()
        .map(|tasks| {
            tasks
                .iter()
                .filter(|t| t["state"] == "running")
                .map(|t| t["host"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 27 item 3: `scope = "app"` runs one copy in the whole cluster;
/// pausing its host past the lease moves it, and the paused copy does
/// nothing once resumed (fenced: its next host call traps); killing the
/// new holder moves it back.
#[test]
fn an_app_scoped_task_runs_once_in_the_cluster_and_moves_when_its_host_stops_answering() {
    let nats = NatsServer::start();
    let single = r#"
        [[tasks]]
        plugin = "kit"
        factory = "heartbeat"
        name = "single"
        scope = "app"
        args = { every_ms = 50 }
    "#;
    let mut hosts: Vec<(TestApp, Running)> = ["a", "b"]
        .into_iter()
        .map(|name| host_with(&nats, "single", name, 2, "", "ack_wait_ms = 2000", single))
        .collect();
    for (app, _) in &hosts {
        await_all_serving(app, 2);
    }
    let mut holder = String::new();
    poll_until(secs(30), millis(50), || {
        let copies = running_copies(&hosts[0].0, "single");
        match copies.as_slice() {
            [one] => {
                holder = one.clone();
                Ok(())
            }
            other => Err(format!("copies running on {other:?}")),
        }
    });
    let (held, other) = if holder == "a" { (0, 1) } else { (1, 0) };
    // Past a whole lease, still one copy, and the other host never
    // started one (it would be listed, running or ended).
    hosts[held].1.wait_for(1, |l| l["message"] == "beat 50");
    let listed = hosts[other]
        .0
        .cli(&["task", "single", "--cluster", "--json"])
        .ok();
    let listed: Value = serde_json::from_str(listed.stdout.trim()).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    // The holder stops answering (SIGSTOP) past the lease: the other host
    // takes the claim and runs the task.
    hosts[held].1.signal("STOP");
    hosts[other]
        .1
        .wait_for(1, |l| l["event"] == "started" && l["task"] == "single");
    hosts[other].1.wait_for(1, |l| l["message"] == "beat 3");
    let resumed_at = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    hosts[held].1.signal("CONT");
    // Its copy is fenced: stopped, without one more beat.
    hosts[held].1.wait_for(1, |l| {
        l["event"] == "cancelled" && l["task"] == "single" && l["stage"] == "forced"
    });
    let late: Vec<&Value> = hosts[held]
        .1
        .seen()
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("beat "))
                && l["timestamp"].as_str().is_some_and(|t| *t >= *resumed_at)
        })
        .collect();
    assert!(late.is_empty(), "the fenced copy acted: {late:?}");
    assert_eq!(
        running_copies(&hosts[other].0, "single"),
        [hosts_name(other)]
    );

    // The new holder dies: the first host takes the task back.
    hosts[other].1.signal("KILL");
    hosts[held]
        .1
        .wait_for(2, |l| l["event"] == "started" && l["task"] == "single");
    hosts[held].1.wait_for(1, |l| {
        l["message"] == "app-scoped task single runs on this host"
    });
    let (_, running) = hosts.swap_remove(held);
    running.stop();
}

fn hosts_name(index: usize) -> String {
    ["a", "b"][index].to_string()
}

#[test]
fn a_host_paused_past_ack_wait_stops_its_copy_of_a_task_rerun_elsewhere() {
    let nats = NatsServer::start();
    let (a, mut running_a) = host_with(&nats, "paused", "a", 1, "", "ack_wait_ms = 2000", "");
    let (b, mut running_b) = host_with(&nats, "paused", "b", 1, "", "ack_wait_ms = 2000", "");
    for app in [&a, &b] {
        await_all_serving(app, 2);
    }
    // Attempt 1 hangs; attempt 2 returns at once.
    a.cli(&[
        "add",
        "kit",
        "flaky",
        "--args",
        r#"{"fail_times": 1, "hang": true}"#,
        "--name",
        "held",
        "--durable",
    ])
    .ok();
    running_a.wait_for(1, |l| l["event"] == "started" && l["task"] == "held");

    // a stops answering (SIGSTOP): b runs the task again and it ends there.
    running_a.signal("STOP");
    running_b.wait_for(1, |l| l["event"] == "done" && l["task"] == "held");
    let done = running_b
        .seen()
        .iter()
        .find(|l| l["event"] == "done" && l["task"] == "held")
        .unwrap()
        .clone();
    assert_eq!(done["result"], "2", "{done}");

    // a wakes up and stops its own copy without recording anything for
    // it, saying why: whichever comes first, the guest's next host call
    // (its lease has lapsed) or a's reading of the record (b has it now).
    running_a.signal("CONT");
    running_a.wait_for(1, |l| l["event"] == "cancelled" && l["task"] == "held");
    let why = running_a.seen().iter().any(|l| {
        l["task"] == "held"
            && l["message"].as_str().is_some_and(|m| {
                m.contains("held runs on host b now (attempt 2)") || m.contains("lease lapsed")
            })
    });
    assert!(why, "{:#?}", running_a.seen());
    let (queued, records) = durable_state(&nats, "paused");
    assert_eq!(queued, 0, "{records:?}");
    assert_eq!(records["held"]["state"], "done", "{records:?}");
    assert_eq!(records["held"]["host"], "b", "{records:?}");
    assert_eq!(records["held"]["attempt"], 2, "{records:?}");
    for running in [running_a, running_b] {
        running.stop();
    }
}

/// Adds testkit's `kv` task `name` with `args` on `app`'s host and returns
/// its `done` result, or its `failed` error as `Err`.
fn kv_on(app: &TestApp, running: &mut Running, name: &str, args: Value) -> Result<Value, String> {
    app.cli(&[
        "add",
        "kit",
        "kv",
        "--args",
        &args.to_string(),
        "--name",
        name,
    ])
    .ok();
    running.wait_for(1, |l| {
        (l["event"] == "done" || l["event"] == "failed") && l["task"] == name
    });
    let line = running
        .seen()
        .iter()
        .find(|l| (l["event"] == "done" || l["event"] == "failed") && l["task"] == name)
        .unwrap();
    if line["event"] == "done" {
        Ok(serde_json::from_str(line["result"].as_str().unwrap()).unwrap())
    } else {
        Err(line["error"].as_str().unwrap().to_string())
    }
}

#[test]
fn key_value_state_is_one_store_for_every_host_and_its_limits_hold_there() {
    let nats = NatsServer::start();
    let limits = "[limits]\nkv_keys_per_bucket = 3";
    let (a, mut running_a) = host_with(&nats, "state", "a", 2, limits, "", "");
    let (b, mut running_b) = host_with(&nats, "state", "b", 2, limits, "", "");
    for app in [&a, &b] {
        await_all_serving(app, 2);
    }

    // Four workers on two hosts add 1 to one key 100 times each, through
    // compare-and-swap on JetStream: none of the 400 is lost.
    a.cli(&[
        "add",
        "kit",
        "kv",
        "--args",
        r#"{"bucket": "c", "op": "increment", "key": "n", "times": 100}"#,
        "--name",
        "count",
        "--all-workers",
        "--host",
        "all",
    ])
    .ok();
    for running in [&mut running_a, &mut running_b] {
        running.wait_for(2, |l| l["event"] == "done" && l["task"] == "count");
    }
    let read = b.cli(&["kv", "get", "kit/c", "n"]).ok();
    assert_eq!(read.stdout.trim(), "400", "{}", read.dump());
    assert_eq!(
        kv_on(
            &a,
            &mut running_a,
            "read-n",
            json!({"bucket": "c", "op": "get", "key": "n"})
        ),
        Ok(json!(400))
    );

    // The key limit holds across hosts: two keys from a, one from b, and a
    // fourth from a is refused.
    let set =
        |key: &str, value: i64| json!({"bucket": "m", "op": "set", "key": key, "value": value});
    assert_eq!(
        kv_on(
            &a,
            &mut running_a,
            "xy",
            json!({"bucket": "m", "op": "set_many", "key": "x,y", "value": 1})
        ),
        Ok(json!(true))
    );
    assert_eq!(kv_on(&b, &mut running_b, "z", set("z", 1)), Ok(json!(true)));
    let refused = kv_on(&a, &mut running_a, "w", set("w", 1)).unwrap_err();
    assert!(
        refused.contains("bucket kit/m may be at most 3 keys")
            && refused.contains("kv_keys_per_bucket"),
        "{refused}"
    );
    // A batch over the limit writes nothing, not even the key it only
    // overwrites.
    let refused = kv_on(
        &b,
        &mut running_b,
        "zv",
        json!({"bucket": "m", "op": "set_many", "key": "z,v", "value": 2}),
    )
    .unwrap_err();
    assert!(refused.contains("kv_keys_per_bucket"), "{refused}");
    assert_eq!(
        kv_on(
            &a,
            &mut running_a,
            "read-z",
            json!({"bucket": "m", "op": "get", "key": "z"})
        ),
        Ok(json!(1))
    );
    // Deleting frees the keys' room at once, on every host.
    assert_eq!(
        kv_on(
            &b,
            &mut running_b,
            "del",
            json!({"bucket": "m", "op": "delete_many", "key": "x,y"})
        ),
        Ok(json!(true))
    );
    assert_eq!(
        kv_on(&a, &mut running_a, "w2", set("w", 2)),
        Ok(json!(true))
    );
    let keys = a.cli(&["kv", "list", "kit/m", "--json"]).ok();
    let keys: Value = serde_json::from_str(keys.stdout.trim()).unwrap();
    assert_eq!(keys, json!(["w", "z"]));
    let buckets = b.cli(&["kv", "list", "--json"]).ok();
    let buckets: Value = serde_json::from_str(buckets.stdout.trim()).unwrap();
    let listed: Vec<(&str, u64)> = buckets
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["bucket"].as_str().unwrap(), b["keys"].as_u64().unwrap()))
        .collect();
    assert_eq!(listed, [("kit/c", 1), ("kit/m", 2)], "{buckets}");

    for running in [running_a, running_b] {
        running.stop();
    }
}

/// Adds testkit's `spread` on `app`'s host (`args`) and returns its result.
fn spread(app: &TestApp, running: &mut Running, name: &str, args: Value) -> Value {
    app.cli(&[
        "add",
        "kit",
        "spread",
        "--args",
        &args.to_string(),
        "--name",
        name,
    ])
    .ok();
    running.wait_for(1, |l| l["event"] == "done" && l["task"] == name);
    let line = running
        .seen()
        .iter()
        .find(|l| l["event"] == "done" && l["task"] == name)
        .unwrap();
    serde_json::from_str(line["result"].as_str().unwrap()).unwrap()
}

#[test]
fn a_guest_starts_tasks_on_any_host_a_named_one_or_all() {
    let nats = NatsServer::start();
    let (a, mut running_a) = host(&nats, "guests", "a", 1, "");
    let (b, mut running_b) = host(&nats, "guests", "b", 1, "");
    for app in [&a, &b] {
        await_all_serving(app, 2);
    }

    // All hosts: one task each, and the guest is told where.
    let all = spread(
        &a,
        &mut running_a,
        "to-all",
        json!({"host": "all", "name": "everywhere", "ms": 1}),
    );
    let hosts: Vec<&str> = all["placed"]
        .as_array()
        .unwrap_or_else(|| panic!("{all}"))
        .iter()
        .map(|p| p["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["a", "b"], "{all}");
    running_b.wait_for(1, |l| l["event"] == "done" && l["task"] == "everywhere");

    // A named host, with the name claimed across the cluster: a second
    // start of that name, for any host, is a duplicate.
    let solo = spread(
        &a,
        &mut running_a,
        "to-b",
        json!({"host": "b", "name": "solo", "ms": 600000, "cluster_name": true}),
    );
    assert_eq!(solo["placed"][0]["host"], "b", "{solo}");
    running_b.wait_for(1, |l| l["event"] == "started" && l["task"] == "solo");
    let again = spread(
        &a,
        &mut running_a,
        "to-any",
        json!({"host": "any", "name": "solo", "ms": 1, "cluster_name": true}),
    );
    assert_eq!(again["error"], "DuplicateName", "{again}");

    // No such host: failed, saying so; nothing runs here instead.
    let lost = spread(
        &a,
        &mut running_a,
        "to-zzz",
        json!({"host": "zzz", "name": "lost", "ms": 1}),
    );
    assert_eq!(lost["error"], "Failed", "{lost}");
    assert!(
        lost["message"]
            .as_str()
            .unwrap()
            .contains("no host of cluster `guests` answers for zzz"),
        "{lost}"
    );
    assert!(!task_names(&a).contains(&"lost".to_string()));
    for running in [running_a, running_b] {
        running.stop();
    }

    // Without a cluster: failed, pointing at start-task.
    let alone = TestApp::new(
        r#"
        name = "alone"
        workers = 1
        [plugins.kit]
        path = "{testkit}"
        [[tasks]]
        plugin = "kit"
        factory = "spread"
        name = "to-any"
        args = { host = "any", name = "x", ms = 1 }
        "#,
    );
    let run = alone.run_until_idle().ok();
    let result = taskhost_tests::result_of(run.events("done")[0]);
    assert_eq!(result["error"], "Failed", "{}", run.dump());
    assert!(
        result["message"].as_str().unwrap().contains("no [cluster]"),
        "{}",
        run.dump()
    );
}

/// A guest joins the tasks it placed on the hosts of its cluster: the
/// host that runs each is asked, and the join returns once each ended,
/// with its result.
#[test]
fn a_guest_joins_the_tasks_it_placed_on_every_host() {
    let nats = NatsServer::start();
    let (a, mut running_a) = host(&nats, "joins", "a", 1, "");
    let (b, mut running_b) = host(&nats, "joins", "b", 1, "");
    for app in [&a, &b] {
        await_all_serving(app, 2);
    }
    let fan = spread(
        &a,
        &mut running_a,
        "fan",
        json!({"host": "all", "name": "napper", "ms": 300, "join": true}),
    );
    let placed = fan["placed"].as_array().unwrap_or_else(|| panic!("{fan}"));
    let joined = fan["joined"].as_array().unwrap_or_else(|| panic!("{fan}"));
    assert_eq!(placed.len(), 2, "{fan}");
    for (place, ended) in placed.iter().zip(joined) {
        assert_eq!(ended["id"], place["id"], "{fan}");
        assert_eq!(ended["name"], "napper", "{fan}");
        assert_eq!(ended["state"], "done", "{fan}");
        assert_eq!(ended["result"], "300", "{fan}");
    }
    running_b.wait_for(1, |l| l["event"] == "done" && l["task"] == "napper");
    for running in [running_a, running_b] {
        running.stop();
    }
}

/// Waits (up to 10 s) until `app`'s host sees host `name` say it
/// serves (or, with `false`, that it does not).
fn await_serving(app: &TestApp, name: &str, want: bool) {
    poll_until(secs(10), millis(50), || {
        let hosts = hosts_of(app);
        let serves = hosts
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["host"] == name && h["serving"] == true);
        if serves == want {
            Ok(())
        } else {
            Err(format!("hosts: {hosts}"))
        }
    });
}

#[test]
fn a_stopping_host_takes_no_more_tasks_from_the_others() {
    let nats = NatsServer::start();
    let (a, _running_a) = host(&nats, "stopping", "a", 1, "");
    // b's task ignores its cancel (pure computation) for the whole grace,
    // so b stays a while in its shutdown.
    let (b, mut running_b) =
        host_with(&nats, "stopping", "b", 1, "cancel_grace_ms = 60000", "", "");
    await_serving(&a, "b", true);
    b.cli(&[
        "add",
        "kit",
        "crunch",
        "--args",
        r#"{"rounds": 1000000000000}"#,
        "--name",
        "stuck",
    ])
    .ok();
    running_b.wait_for(1, |l| l["event"] == "started" && l["task"] == "stuck");
    running_b.signal("TERM");
    running_b.wait_for(1, |l| {
        l["message"] == "shutting down: cancelling every task"
    });
    // b's heartbeat says it no longer serves; its subscriptions are gone.
    await_serving(&a, "b", false);
    let (api, _) = Api::of(&a);
    for i in 0..10 {
        let (status, added) = api.post_any(
            routes::SUBMIT.path,
            json!({"plugin": "kit", "factory": "identity", "name": format!("late-{i}"), "host": "any"}),
        );
        assert_eq!(status, 201, "{added}");
        assert_eq!(added["tasks"][0]["host"], "a", "{added}");
    }
    let (status, added) = api.post_any(
        routes::SUBMIT.path,
        json!({"plugin": "kit", "factory": "identity", "name": "late-all", "host": "all"}),
    );
    assert_eq!(status, 201, "{added}");
    let on: Vec<&str> = added["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["host"].as_str().unwrap())
        .collect();
    assert_eq!(on, ["a"], "{added}");
    running_b.signal("KILL");
    running_b.finish();
}

#[test]
fn an_answer_over_the_nats_message_limit_says_so_instead_of_timing_out() {
    let nats = NatsServer::start();
    let (a, _running) = host(&nats, "big", "a", 1, "");
    let (api, _) = Api::of(&a);
    // About 4,000 ended tasks with long names: their listing is well over
    // the server's 1 MiB max_payload.
    let long = "x".repeat(200);
    for i in 0..4000 {
        api.post(
            routes::SUBMIT.path,
            json!({"plugin": "kit", "factory": "identity", "name": format!("{long}-{i}")}),
        );
    }
    let listed = a.cli(&["tasks", "--cluster"]);
    assert_ne!(listed.code, Some(0), "{}", listed.dump());
    assert!(
        listed
            .stderr
            .contains("over the NATS server's max_payload of 1048576 bytes"),
        "{}",
        listed.dump()
    );
    // The host's own listing still works.
    assert!(a.cli(&["tasks", "--json"]).ok().stdout.len() > 1 << 20);
}

#[test]
fn tasks_for_any_host_go_to_the_hosts_with_room() {
    let nats = NatsServer::start();
    // a takes two tasks at most; b many.
    let (a, _running_a) = host_with(
        &nats,
        "room",
        "a",
        1,
        "[limits]\ntasks_per_worker = 2",
        "",
        "",
    );
    let (b, _running_b) = host(&nats, "room", "b", 1, "");
    await_serving(&a, "b", true);
    await_serving(&b, "a", true);
    // a is full.
    for name in ["full-1", "full-2"] {
        a.add_sleeper("kit", name);
    }
    // Every task for any host goes to b, asked of a or of b: a takes none
    // (a queue group would have given a about half, each refused).
    for (i, app) in [&a, &b].into_iter().cycle().take(12).enumerate() {
        let (api, _) = Api::of(app);
        let (status, added) = api.post_any(
            routes::SUBMIT.path,
            json!({"plugin": "kit", "factory": "nap", "args": {"ms": 600000}, "name": format!("room-{i}"), "host": "any"}),
        );
        assert_eq!(status, 201, "{added}");
        assert_eq!(added["tasks"][0]["host"], "b", "{added}");
    }
}

/// A loopback HTTP server that answers 200 to every request and keeps
/// each request line: what a task's effects reached the outside world.
fn recording_server() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let kept = kept.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let request = line.trim().to_string();
                    // The rest of the head.
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header == "\r\n" {
                            break;
                        }
                    }
                    kept.lock().unwrap().push(request);
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (address, seen)
}

/// Issue 24, item 4: a host paused past `ack_wait` while a durable task
/// makes an HTTP call every 100 ms. The task runs again on b (attempt 2);
/// when a wakes, its copy's next call used to go out before it noticed.
/// Now a's lease ran out during the pause: its copy is fenced, makes no
/// call, and stops; b keeps the task (a never takes it back).
#[test]
fn a_paused_hosts_copy_performs_no_effect_after_another_host_took_its_task() {
    let nats = NatsServer::start();
    let (server, seen) = recording_server();
    let grants = r#"
        [plugins.kit.grants]
        http = ["http://127.0.0.1:*"]
    "#;
    let (a, mut running_a) = host_with(&nats, "fenced", "a", 1, "", "ack_wait_ms = 2000", grants);
    let (b, mut running_b) = host_with(&nats, "fenced", "b", 1, "", "ack_wait_ms = 2000", grants);
    for app in [&a, &b] {
        await_all_serving(app, 2);
    }
    let args = json!({"url": format!("http://{server}/tick"), "every_ms": 100, "times": 1_000_000});
    a.cli(&[
        "add",
        "kit",
        "ticker",
        "--args",
        &args.to_string(),
        "--name",
        "pulse",
        "--durable",
    ])
    .ok();
    let count = |attempt: u32| {
        let needle = format!("attempt={attempt}&");
        seen.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&needle))
            .count()
    };
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        poll_until(secs(60), millis(50), || {
            if done() {
                Ok(())
            } else {
                Err(format!("waiting until {what}"))
            }
        })
    };
    wait("attempt 1 made its first calls", &|| count(1) >= 3);

    running_a.signal("STOP");
    running_b.wait_for(1, |l| l["event"] == "started" && l["task"] == "pulse");
    wait("attempt 2 on b made a call", &|| count(2) >= 1);
    // Whatever attempt 1 sent before the pause has arrived by now.
    let before = count(1);
    running_a.signal("CONT");
    running_a.wait_for(1, |l| l["event"] == "cancelled" && l["task"] == "pulse");
    // b goes on calling; a's copy never called again.
    let b_calls = count(2);
    wait("attempt 2 goes on", &|| count(2) >= b_calls + 5);
    assert_eq!(count(1), before, "a's stale copy acted after the pause");
    let (_, records) = durable_state(&nats, "fenced");
    assert_eq!(records["pulse"]["host"], "b", "{records:?}");
    assert_eq!(records["pulse"]["attempt"], 2, "{records:?}");
    b.cli(&["cancel", "pulse"]).ok();
    for running in [running_a, running_b] {
        running.stop();
    }
}

/// Issue 24, item 4: while host a is paused past the expiry, the others
/// free its cluster-scoped name and b takes it; a used to go on running
/// its task of that name, so it ran on both. Back, a re-checks its claims
/// and stops the task that lost its name.
#[test]
fn a_returning_host_stops_a_task_whose_cluster_scoped_name_was_taken_meanwhile() {
    let nats = NatsServer::start();
    let (a, mut running_a) = host(&nats, "renamed", "a", 1, "");
    let (b, running_b) = host(&nats, "renamed", "b", 1, "");
    for app in [&a, &b] {
        await_all_serving(app, 2);
    }
    add_solo(&a).ok();
    running_a.signal("STOP");
    // b takes the name once the claim of silent a is swept.
    poll_until(secs(60), millis(200), || {
        let taken = add_solo(&b);
        if taken.code == Some(0) {
            Ok(())
        } else {
            Err(taken.dump())
        }
    });
    running_a.signal("CONT");
    running_a.wait_for(1, |l| {
        l["message"].as_str().is_some_and(|m| {
            m.contains("solo lost its cluster-scoped name") && m.contains("host b")
        })
    });
    running_a.wait_for(1, |l| l["event"] == "cancelled" && l["task"] == "solo");
    b.cli(&["cancel", "solo"]).ok();
    for running in [running_a, running_b] {
        running.stop();
    }
}

/// `app`'s queue `name`, as `taskhost queues --json` shows it.
fn queue_on(app: &TestApp, name: &str) -> Value {
    let queues: Value = serde_json::from_str(app.cli(&["queues", "--json"]).ok().stdout.trim())
        .expect("queues as JSON");
    queues
        .as_array()
        .and_then(|all| all.iter().find(|q| q["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no queue {name} in {queues}"))
}

/// How many messages the JetStream stream `name` holds now.
fn stream_messages(nats: &NatsServer, name: &str) -> u64 {
    with_jetstream(nats, async |jetstream| {
        let mut stream = jetstream.get_stream(name).await.unwrap();
        stream.info().await.unwrap().state.messages
    })
}

/// Runs `work` with a JetStream client of `nats`, on a runtime of its own
/// (the tests are synchronous), to look at or set what the cluster keeps.
fn with_jetstream<T>(
    nats: &NatsServer,
    work: impl AsyncFnOnce(async_nats::jetstream::Context) -> T,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(&nats.url).await.unwrap();
        work(async_nats::jetstream::new(client)).await
    })
}

/// The `[[queues]]` entry `api` (one task of a key at a time, across the
/// cluster) and `count` waiters of key `acme` in it, named `{prefix}N`.
fn keyed_waiters(prefix: &str, count: usize) -> String {
    let mut toml = String::from("[[queues]]\nname = \"api\"\nper_key = 1\n");
    for i in 0..count {
        toml.push_str(&format!(
            "[[tasks]]\nplugin = \"kit\"\nfactory = \"waiter\"\nname = \"{prefix}{i}\"\n\
             args = {{ event = \"go\" }}\nqueue = \"api\"\nkey = \"acme\"\n"
        ));
    }
    toml
}

/// A line's `timestamp`, in microseconds: the hosts run on one machine,
/// so their lines merge into one order by it.
fn micros(line: &Value) -> i64 {
    let stamp = line["timestamp"].as_str().expect("a timestamp");
    chrono::DateTime::parse_from_rfc3339(stamp)
        .expect("an RFC 3339 timestamp")
        .timestamp_micros()
}

#[test]
fn two_hosts_share_one_queues_per_key_limit() {
    let nats = NatsServer::start();
    let (a, mut running_a) = host(&nats, "shared", "a", 1, &keyed_waiters("a", 3));
    let (b, mut running_b) = host(&nats, "shared", "b", 1, &keyed_waiters("b", 3));
    // Six tasks of one key, three on each host, under `per_key = 1`: one
    // runs in the whole cluster at a time. Each round waits until every
    // host with tasks left has its next one running or held by the
    // cluster (`blocked`), whatever the timing, then sees exactly one
    // running, and ends it. Without the cluster's share, each host ran
    // one: two at once.
    for round in 1..=6u64 {
        let settled = poll_until(secs(60), millis(50), || {
            let queues = [queue_on(&a, "api"), queue_on(&b, "api")];
            let count = |q: &Value, field: &str| q[field].as_u64().unwrap();
            let ready = queues.iter().all(|q| {
                count(q, "waiting") + count(q, "running") == 0
                    || count(q, "running") + count(q, "blocked") >= 1
            });
            let running: u64 = queues.iter().map(|q| count(q, "running")).sum();
            if ready && running >= 1 {
                Ok(queues)
            } else {
                Err(format!("round {round}: {queues:?}"))
            }
        });
        let running: Vec<u64> = settled
            .iter()
            .map(|q| q["running"].as_u64().unwrap())
            .collect();
        assert_eq!(running.iter().sum::<u64>(), 1, "round {round}: {settled:?}");
        let (app, host_running) = if running[0] == 1 {
            (&a, &mut running_a)
        } else {
            (&b, &mut running_b)
        };
        app.cli(&["dispatch", "go", "", "--wait-for", "1"]).ok();
        let done = host_running
            .seen()
            .iter()
            .filter(|l| l["event"] == "done")
            .count();
        host_running.wait_for(done + 1, |l| l["event"] == "done");
    }
    // Nothing runs or waits: the slot entry is gone, and so is the marker
    // its delete left in the stream (one per key ever used, otherwise).
    poll_until(secs(30), millis(100), || {
        match stream_messages(&nats, "KV_shared-queue-slots") {
            0 => Ok(()),
            left => Err(format!("{left} messages left in the slots stream")),
        }
    });
    let runs = [running_a.stop(), running_b.stop()];
    // Replayed in the order the two hosts wrote them: never two running.
    let mut lines: Vec<&Value> = runs.iter().flat_map(|run| run.lines.iter()).collect();
    lines.sort_by_key(|line| micros(line));
    let (mut now, mut most) = (0i32, 0i32);
    for line in &lines {
        match line["event"].as_str() {
            Some("started") => {
                now += 1;
                most = most.max(now);
            }
            Some("done" | "failed" | "cancelled") => now -= 1,
            _ => {}
        }
    }
    assert_eq!(most, 1, "{}\n{}", runs[0].dump(), runs[1].dump());
    for run in &runs {
        assert_eq!(run.events("done").len(), 3, "{}", run.dump());
    }
}

#[test]
fn a_dead_hosts_queue_slots_come_free_and_its_durable_queued_task_runs_elsewhere() {
    let nats = NatsServer::start();
    let (a, mut running_a) = host_with(
        &nats,
        "slots",
        "a",
        1,
        "",
        "ack_wait_ms = 2000",
        &keyed_waiters("a", 1),
    );
    running_a.wait_for(1, |l| l["event"] == "started" && l["task"] == "a0");
    let (b, mut running_b) = host_with(
        &nats,
        "slots",
        "b",
        1,
        "",
        "ack_wait_ms = 2000",
        &keyed_waiters("b", 1),
    );
    for app in [&a, &b] {
        await_all_serving(app, 2);
    }
    // a holds the key's one slot: b's task waits for the cluster, and a
    // durable task of the key submitted to a waits in a's queue.
    poll_until(secs(30), millis(50), || {
        let api = queue_on(&b, "api");
        if api["blocked"] == 1 {
            Ok(())
        } else {
            Err(format!("{api}"))
        }
    });
    a.cli(&[
        "add",
        "kit",
        "keyed_nap",
        "--args",
        r#"{"ms": 1}"#,
        "--name",
        "later",
        "--durable",
        "--queue",
        "api",
        "--key",
        "acme",
    ])
    .ok();
    running_a.wait_for(1, |l| l["event"] == "queued" && l["task"] == "later");
    running_a.signal("KILL");
    let killed = running_a.finish();
    assert!(
        killed
            .events("started")
            .iter()
            .all(|l| l["task"] != "later"),
        "{}",
        killed.dump()
    );
    // b frees the dead host's slot once a has been silent twice past the
    // expiry: its own task starts; `later` comes back to b after
    // ack_wait and runs there once the key's slot is free again.
    running_b.wait_for(1, |l| l["event"] == "started" && l["task"] == "b0");
    running_b.wait_for(1, |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("host a is gone: its queue slots are free again"))
    });
    b.cli(&["dispatch", "go", "", "--wait-for", "1"]).ok();
    running_b.wait_for(1, |l| l["event"] == "done" && l["task"] == "b0");
    running_b.wait_for(1, |l| l["event"] == "done" && l["task"] == "later");
    let run = running_b.stop();
    let started: Vec<&str> = run
        .events("started")
        .iter()
        .filter_map(|l| l["task"].as_str())
        .collect();
    assert_eq!(started, ["b0", "later"], "{}", run.dump());
}

#[test]
fn a_freed_queue_slot_goes_round_the_hosts_so_one_hosts_backlog_holds_back_no_other() {
    let nats = NatsServer::start();
    let queue = "[[queues]]\nname = \"fair\"\nconcurrency = 1\n";
    let (a, mut running_a) = host(&nats, "fair", "a", 1, queue);
    let (b, mut running_b) = host(&nats, "fair", "b", 1, queue);
    for app in [&a, &b] {
        await_all_serving(app, 2);
    }
    // A holder on a takes the queue's one slot; then a's backlog of eight
    // waits behind it on a, and b's three behind it in the cluster (b's
    // next one held by the cluster).
    let add = |app: &TestApp, factory: &str, args: &str, name: &str| {
        app.cli(&[
            "add", "kit", factory, "--args", args, "--name", name, "--queue", "fair",
        ])
        .ok();
    };
    add(&a, "waiter", r#"{"event": "go"}"#, "holder");
    running_a.wait_for(1, |l| l["event"] == "started" && l["task"] == "holder");
    for i in 0..8 {
        add(&a, "keyed_nap", r#"{"ms": 20}"#, &format!("A{i}"));
    }
    for i in 0..3 {
        add(&b, "keyed_nap", r#"{"ms": 20}"#, &format!("B{i}"));
    }
    poll_until(secs(30), millis(50), || {
        let queues = [queue_on(&a, "fair"), queue_on(&b, "fair")];
        if queues[0]["waiting"] == 8 && queues[1]["blocked"] == 1 {
            Ok(())
        } else {
            Err(format!("{queues:?}"))
        }
    });
    a.cli(&["dispatch", "go", "", "--wait-for", "1"]).ok();
    running_a.wait_for(9, |l| l["event"] == "done");
    running_b.wait_for(3, |l| l["event"] == "done");
    let runs = [running_a.stop(), running_b.stop()];
    let mut starts: Vec<&Value> = runs
        .iter()
        .flat_map(|run| run.events("started"))
        .filter(|l| l["task"] != "holder")
        .collect();
    starts.sort_by_key(|line| micros(line));
    let order: Vec<&str> = starts.iter().filter_map(|l| l["task"].as_str()).collect();
    // The slot alternates between the hosts while both wait: b's three
    // start among the first six, not after a's eight.
    assert_eq!(
        order[..6].iter().filter(|t| t.starts_with('B')).count(),
        3,
        "{order:?}"
    );
    assert_eq!(order.len(), 11, "{order:?}");
}

#[test]
fn an_operators_queue_change_on_one_host_holds_on_every_host_and_later_ones() {
    let nats = NatsServer::start();
    let queue = "[[queues]]\nname = \"fair\"\nconcurrency = 1\n";
    let (a, running_a) = host(&nats, "steer", "a", 1, queue);
    let (b, running_b) = host(&nats, "steer", "b", 1, queue);
    for app in [&a, &b] {
        await_all_serving(app, 2);
    }
    let seen = |app: &TestApp, paused: bool, concurrency: u64| {
        poll_until(secs(30), millis(50), || {
            let fair = queue_on(app, "fair");
            if fair["paused"] == paused && fair["limits"]["concurrency"] == concurrency {
                Ok(())
            } else {
                Err(format!("{fair}"))
            }
        });
    };
    a.cli(&["queue", "pause", "fair"]).ok();
    seen(&b, true, 1);
    b.cli(&["queue", "set", "fair", "--concurrency", "3"]).ok();
    seen(&a, true, 3);
    // A host that joins later starts with the cluster's settings.
    let (c, running_c) = host(&nats, "steer", "c", 1, queue);
    seen(&c, true, 3);
    c.cli(&["queue", "reset", "fair"]).ok();
    for app in [&a, &b, &c] {
        seen(app, false, 1);
    }
    let run = running_a.stop();
    assert!(
        run.lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("limits") && m.contains("(set in the cluster)"))),
        "a logs what b set: {}",
        run.dump()
    );
    running_b.stop();
    running_c.stop();
}

/// A trace crosses hosts: a guest on host `a` starts a task on host `b`,
/// and `b`'s span of that task is the child of `a`'s span of the start,
/// in the trace the caller began; each host names itself in its spans
/// (`service.instance.id`).
#[test]
fn a_trace_follows_a_task_a_guest_starts_on_another_host() {
    use crate::telemetry::{hex, receiver};
    let (otlp, seen) = receiver();
    let nats = NatsServer::start();
    let telemetry = format!("[telemetry]\notlp = \"http://{otlp}\"\nbatch_ms = 50");
    let (a, mut running_a) = host(&nats, "traces", "a", 1, &telemetry);
    let (b, mut running_b) = host(&nats, "traces", "b", 1, &telemetry);
    for app in [&a, &b] {
        await_all_serving(app, 2);
    }
    let trace_id = "5b8efff798038103d269b633813fc60c";
    let caller_span = "eee19b7ec3c1b174";
    a.cli(&[
        "add",
        "kit",
        "spread",
        "--args",
        &json!({"host": "b", "name": "over-there", "ms": 1, "join": true}).to_string(),
        "--name",
        "hop",
        "--traceparent",
        &format!("00-{trace_id}-{caller_span}-01"),
    ])
    .ok();
    running_a.wait_for(1, |l| l["event"] == "done" && l["task"] == "hop");
    running_b.wait_for(1, |l| l["event"] == "done" && l["task"] == "over-there");
    let names = ["task kit/spread", "start task kit/nap on b", "task kit/nap"];
    poll_until(secs(60), millis(20), || {
        let seen = seen.lock().unwrap();
        match names
            .iter()
            .all(|name| seen.spans.iter().any(|s| s.name == *name))
        {
            true => Ok(()),
            false => Err(format!("{} spans so far", seen.spans.len())),
        }
    });
    let seen = seen.lock().unwrap();
    let [spread, start, remote] = names.map(|name| seen.span(name));
    for span in [spread, start, remote] {
        assert_eq!(hex(&span.trace_id), trace_id, "{}", span.name);
    }
    assert_eq!(hex(&spread.parent_span_id), caller_span);
    assert_eq!(start.parent_span_id, spread.span_id);
    assert_eq!(
        remote.parent_span_id, start.span_id,
        "b's task under a's start"
    );
    let instance =
        |span: &opentelemetry_proto::tonic::trace::v1::Span| seen.instances[&span.span_id].clone();
    assert!(instance(spread).contains("\"a\""), "{}", instance(spread));
    assert!(instance(start).contains("\"a\""), "{}", instance(start));
    assert!(instance(remote).contains("\"b\""), "{}", instance(remote));
    drop(seen);
    // The dashboard's host filter: one host's tasks, asked of any host.
    let (api, _) = Api::of(&a);
    let on_b = api.get(&format!("{}?host=b&limit=10", routes::CLUSTER_TASKS.path));
    let names: Vec<&str> = on_b
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["over-there"], "{on_b}");
    assert_eq!(on_b[0]["host"], "b", "{on_b}");
    for running in [running_a, running_b] {
        running.stop();
    }
}

/// An app.toml section with the `examples` plugin (the component of
/// placeholder `component`) allowed to reach `server`.
fn examples_reaching(server: std::net::SocketAddr, component: &str) -> String {
    format!(
        r#"
        [plugins.examples]
        path = "{component}"
        [plugins.examples.grants]
        http = ["http://127.0.0.1:{port}"]
        "#,
        port = server.port()
    )
}

/// Issue 30, the cluster variant: a resuming task whose host is killed
/// after its third POST resumes on another host from the journal its
/// first host kept in JetStream: each step is taken once, and it ends
/// with an uninterrupted run's result. Host b serves another component
/// as `examples` (one without `post_steps`): the task resumes there on
/// the build it began with, which a kept in the cluster.
#[test]
fn a_resuming_task_whose_host_dies_resumes_on_another_host() {
    let nats = NatsServer::start();
    let (third, saw_third) = std::sync::mpsc::channel();
    let (server, posts) = super::durable::post_server(third);
    let on_a = examples_reaching(server, "{examples}");
    let (a, running_a) = host_with(&nats, "resumes", "a", 1, "", "ack_wait_ms = 2000", &on_a);
    let on_b = examples_reaching(server, "{testkit}");
    let (b, mut running_b) = host_with(&nats, "resumes", "b", 1, "", "ack_wait_ms = 2000", &on_b);
    for app in [&a, &b] {
        await_all_serving(app, 2);
    }
    super::durable::add_poster(&a, server, 5, 300);
    saw_third
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the third POST arrives");
    running_a.signal("KILL");
    running_a.finish();

    running_b.wait_for(1, |l| l["event"] == "done" && l["task"] == "poster");
    let done = running_b
        .seen()
        .iter()
        .find(|l| l["event"] == "done" && l["task"] == "poster")
        .unwrap()
        .clone();
    assert_eq!(done["result"], "5", "{done}");
    super::durable::each_step_taken_once(&posts.lock().unwrap(), 5);
    let (_, records) = durable_state(&nats, "resumes");
    assert_eq!(records["poster"]["host"], "b", "{records:?}");
    assert_eq!(records["poster"]["attempt"], 2, "{records:?}");
    // b replayed what a journaled: at least the three POSTs' intents and
    // answers, and the sleeps between them.
    let replayed = b
        .metric("taskhost_journal_steps_replayed_total")
        .unwrap_or(0.0);
    assert!(replayed >= 6.0, "replayed {replayed}");
    assert!(
        running_b.seen().iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("poster resumes on build"))),
        "b resumed it on a's build"
    );
    running_b.stop();
}

/// Issue 30: a host paused past `ack_wait` while its resuming task sleeps
/// between POSTs. b takes the task over and resumes it from the journal;
/// when a wakes, its copy is fenced: it neither POSTs nor appends to the
/// journal b now extends, and b's run ends with every step taken once.
#[test]
fn a_paused_hosts_copy_of_a_resuming_task_cannot_act_after_another_resumed_it() {
    let nats = NatsServer::start();
    let (third, saw_third) = std::sync::mpsc::channel();
    let (server, posts) = super::durable::post_server(third);
    let rest = examples_reaching(server, "{examples}");
    let (a, mut running_a) = host_with(&nats, "paused", "a", 1, "", "ack_wait_ms = 2000", &rest);
    let (b, mut running_b) = host_with(&nats, "paused", "b", 1, "", "ack_wait_ms = 2000", &rest);
    for app in [&a, &b] {
        await_all_serving(app, 2);
    }
    super::durable::add_poster(&a, server, 8, 300);
    saw_third
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the third POST arrives");
    running_a.signal("STOP");
    running_b.wait_for(1, |l| l["event"] == "done" && l["task"] == "poster");
    let after_b = posts.lock().unwrap().seen.len();
    running_a.signal("CONT");
    // a finds its lease gone: its copy stops without a POST.
    running_a.wait_for(1, |l| {
        l["task"] == "poster" && (l["event"] == "cancelled" || l["event"] == "failed")
    });
    assert_eq!(
        posts.lock().unwrap().seen.len(),
        after_b,
        "a's stale copy acted after the pause: {:?}",
        posts.lock().unwrap().seen
    );
    super::durable::each_step_taken_once(&posts.lock().unwrap(), 8);
    let (_, records) = durable_state(&nats, "paused");
    assert_eq!(records["poster"]["state"], "done", "{records:?}");
    assert_eq!(records["poster"]["host"], "b", "{records:?}");
    for running in [running_a, running_b] {
        running.stop();
    }
}
