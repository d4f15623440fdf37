//! `[[queues]]` (issue 26): a task submitted to a queue waits (state
//! `queued`) until the queue lets it start, is refused only past the
//! queue's `max_waiting`, and can be got and cancelled while it waits; a
//! queue's `concurrency` holds across workers; `per_key`, fairness between
//! keys, priorities and ageing, `rate`, delays and `dedupe` decide who
//! starts when. Counts and orders are read from the host's log, in the
//! order it wrote them; where an order is asserted, a holder task keeps the
//! queue full until everything is queued, so the order does not depend on
//! how fast the host enqueues.

use serde_json::{Value, json};
use taskhost_tests::{Run, TestApp};

fn json_of(run: &Run) -> Value {
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.dump()))
}

/// `taskhost add kit nap --args {"ms": MS} --name NAME --queue QUEUE
/// --durable --json` and `extra`: what it answered.
fn add_durable_nap(app: &TestApp, name: &str, queue: &str, ms: u64, extra: &[&str]) -> Value {
    let nap = format!(r#"{{"ms": {ms}}}"#);
    let mut args = vec![
        "add",
        "kit",
        "nap",
        "--args",
        &nap,
        "--name",
        name,
        "--queue",
        queue,
        "--durable",
        "--json",
    ];
    args.extend_from_slice(extra);
    json_of(&app.cli(&args).ok())
}

/// The most tasks of `queue` running at once, replaying the log's
/// `started` and end lines in the order they were written.
fn most_running(lines: &[Value], queue: &[&str]) -> usize {
    let (mut running, mut most) = (0usize, 0usize);
    for line in lines {
        let ours = line["task"].as_str().is_some_and(|t| queue.contains(&t));
        if !ours {
            continue;
        }
        match line["event"].as_str() {
            Some("started") => {
                running += 1;
                most = most.max(running);
            }
            Some("done" | "failed" | "cancelled") => running -= 1,
            _ => {}
        }
    }
    most
}

#[test]
fn more_tasks_than_a_queues_concurrency_all_end_done_never_more_running() {
    let names: Vec<String> = (0..6).map(|i| format!("n{i}")).collect();
    let tasks: String = names
        .iter()
        .map(|name| {
            format!(
                "[[tasks]]\nplugin = \"kit\"\nfactory = \"waiter\"\nname = \"{name}\"\n\
                 args = {{ event = \"go\" }}\nqueue = \"narrow\"\n"
            )
        })
        .collect();
    let app = TestApp::new(&format!(
        r#"
        name = "queued"
        workers = 2
        [plugins.kit]
        path = "{{testkit}}"
        [[queues]]
        name = "narrow"
        concurrency = 2
        {tasks}
        "#
    ));
    let mut host = app.spawn();
    // Six entries on each of two workers: twelve tasks, all queued. Each
    // started one waits for `go`, so the queue is seen full, whatever the
    // timing: two running across both workers, ten waiting.
    for round in 1..=6 {
        host.wait_for(2 * round, |l| l["event"] == "started");
        let narrow = queue_of(&app, "narrow");
        assert_eq!(narrow["running"], 2, "round {round}: {narrow}");
        assert_eq!(
            narrow["waiting"],
            12 - 2 * round as u64,
            "round {round}: {narrow}"
        );
        app.cli(&["dispatch", "go", "", "--wait-for", "2"]).ok();
        host.wait_for(2 * round, |l| l["event"] == "done");
    }
    let run = host.stop();
    assert_eq!(run.events("queued").len(), 12, "{}", run.dump());
    assert_eq!(run.events("done").len(), 12, "{}", run.dump());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(most_running(&run.lines, &names), 2, "{}", run.dump());
}

#[test]
fn a_queued_task_can_be_got_and_cancelled_and_a_full_queue_refuses_naming_its_bound() {
    let app = TestApp::new(
        r#"
        name = "queued"
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "one"
        concurrency = 1
        max_waiting = 2
        "#,
    );
    let mut host = app.spawn();
    let add = |name: &str| {
        app.cli(&[
            "add",
            "kit",
            "waiter",
            "--args",
            r#"{"event": "go"}"#,
            "--name",
            name,
            "--queue",
            "one",
            "--json",
        ])
    };
    add("first").ok();
    host.wait_for(1, |l| l["event"] == "started" && l["task"] == "first");
    add("second").ok();
    add("third").ok();
    let second = json_of(&app.cli(&["task", "second", "--json"]).ok());
    assert_eq!(second[0]["state"], "queued", "{second}");
    assert_eq!(second[0]["queue"], "one", "{second}");
    let table = app.cli(&["tasks"]).ok();
    assert!(table.stdout.contains("in queue one"), "{}", table.dump());

    // Two wait: the third in line is refused, naming the queue and bound.
    let refused = add("fourth");
    assert_eq!(refused.code, Some(1), "{}", refused.dump());
    assert!(
        refused
            .stderr
            .contains("the waiting tasks of queue `one` ([[queues]] max_waiting) may be at most 2"),
        "{}",
        refused.dump()
    );

    // A cancelled queued task ends at once and never starts.
    let cancelled = json_of(&app.cli(&["cancel", "second", "--json"]).ok());
    assert_eq!(cancelled[0]["state"], "cancelled", "{cancelled}");

    // An unknown queue is refused, listing the queues there are.
    let unknown = app.cli(&[
        "add",
        "kit",
        "nap",
        "--args",
        r#"{"ms": 1}"#,
        "--queue",
        "nope",
    ]);
    assert_ne!(unknown.code, Some(0), "{}", unknown.dump());
    assert!(
        unknown
            .stderr
            .contains("no queue named `nope` (queues: one, default"),
        "{}",
        unknown.dump()
    );

    // The first ends; the third gets its turn, then ends too.
    app.cli(&["dispatch", "go", "", "--wait-for", "1"]).ok();
    host.wait_for(1, |l| l["event"] == "started" && l["task"] == "third");
    app.cli(&["dispatch", "go", "", "--wait-for", "1"]).ok();
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "third");
    host.signal("TERM");
    let run = host.finish();
    assert!(
        !run.lines
            .iter()
            .any(|l| l["event"] == "started" && l["task"] == "second"),
        "the cancelled task never started\n{}",
        run.dump()
    );
}

#[test]
fn bad_queues_and_queue_references_are_refused_at_check() {
    let app = TestApp::new(
        r#"
        name = "queued"
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "q"
        concurrency = 2
        [[tasks]]
        plugin = "kit"
        factory = "nap"
        name = "n"
        args = { ms = 1 }
        queue = "missing"
        "#,
    );
    let check = app.run_taskhost(&["check"]);
    assert_eq!(check.code, Some(2), "{}", check.dump());
    assert!(
        check
            .stderr
            .contains("no queue named `missing` (queues: q, default; add a [[queues]] entry"),
        "{}",
        check.dump()
    );
}

/// Review: a route to a queue that goes by key, with no `key_arg`,
/// passed check and then refused every request.
#[test]
fn a_route_to_a_keyed_queue_needs_its_key_arg() {
    let app = TestApp::new(
        r#"
        name = "hooked"
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "hooks"
        per_key = 1
        [[routes]]
        http = "POST /hooks/queued"
        plugin = "kit"
        factory = "hook_probe"
        queue = "hooks"
        "#,
    );
    let check = app.run_taskhost(&["check"]);
    assert_eq!(check.code, Some(2), "{}", check.dump());
    assert!(
        check.stderr.contains(
            "queue `hooks` goes by key (`per_key`) and a request gives none: give the queue a \
             `key_arg`"
        ),
        "{}",
        check.dump()
    );
}

#[test]
fn a_webhook_burst_is_queued_and_answered_not_refused_at_tasks_per_worker() {
    let app = TestApp::new(
        r#"
        name = "hooked"
        [limits]
        tasks_per_worker = 1
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "hooks"
        concurrency = 1
        [[routes]]
        http = "POST /hooks/queued"
        plugin = "kit"
        factory = "hook_probe"
        args = { mode = "sleep", ms = 20 }
        queue = "hooks"
        "#,
    );
    let (mut host, address) = taskhost_tests::routes::start(&app);
    let mut ids = Vec::new();
    for i in 0..5 {
        let response = ureq::post(&format!("http://{address}/hooks/queued"))
            .send_string(&format!("burst {i}"))
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(response.status(), 202);
        let answer: Value = serde_json::from_str(&response.into_string().unwrap()).unwrap();
        ids.push(answer["task_id"].as_u64().unwrap());
    }
    host.wait_for(5, |l| l["event"] == "done");
    host.signal("TERM");
    let run = host.finish();
    let names: Vec<String> = ids.iter().map(u64::to_string).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(most_running(&run.lines, &names), 1, "{}", run.dump());
    assert_eq!(run.events("queued").len(), 5, "{}", run.dump());
}

/// `[[tasks]]` entries, each `[plugin, factory, extra TOML lines]`.
fn entries(tasks: &[(&str, String)]) -> String {
    tasks
        .iter()
        .map(|(factory, extra)| {
            format!("[[tasks]]\nplugin = \"kit\"\nfactory = \"{factory}\"\n{extra}\n")
        })
        .collect()
}

/// The `task` field of the `started` lines, in log order.
fn start_order(run: &Run) -> Vec<String> {
    run.events("started")
        .iter()
        .map(|line| line["task"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A line's `timestamp`, in seconds.
fn seconds(line: &Value) -> f64 {
    let stamp = line["timestamp"].as_str().expect("a timestamp");
    let time = chrono::DateTime::parse_from_rfc3339(stamp).expect("an RFC 3339 timestamp");
    time.timestamp_micros() as f64 / 1e6
}

#[test]
fn per_key_bounds_each_keys_running_tasks_and_the_rest_wait() {
    let mut tasks = Vec::new();
    for key in ["a", "b", "c"] {
        for i in 0..3 {
            tasks.push((
                "waiter",
                format!(
                    "name = \"{key}{i}\"\nargs = {{ event = \"go\" }}\nqueue = \"api\"\nkey = \"{key}\""
                ),
            ));
        }
    }
    let app = TestApp::new(&format!(
        r#"
        name = "keyed"
        [plugins.kit]
        path = "{{testkit}}"
        [[queues]]
        name = "api"
        per_key = 2
        {}
        "#,
        entries(&tasks)
    ));
    let mut host = app.spawn();
    // Two of each key start; their waiters hold them, so the third of each
    // cannot, whatever the timing.
    host.wait_for(6, |l| l["event"] == "started");
    app.cli(&["dispatch", "go", "", "--wait-for", "6"]).ok();
    host.wait_for(9, |l| l["event"] == "started");
    app.cli(&["dispatch", "go", "", "--wait-for", "3"]).ok();
    host.wait_for(9, |l| l["event"] == "done");
    let run = host.stop();
    let order = start_order(&run);
    for key in ["a", "b", "c"] {
        let first_six = &order[..6];
        assert_eq!(
            first_six.iter().filter(|t| t.starts_with(key)).count(),
            2,
            "two of key {key} among the first six starts: {order:?}"
        );
        let names: Vec<String> = (0..3).map(|i| format!("{key}{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(most_running(&run.lines, &names), 2, "{}", run.dump());
    }
    assert!(
        run.events("queued").iter().all(|l| l["key"].is_string()),
        "the queued lines carry the key\n{}",
        run.dump()
    );
}

#[test]
fn a_keys_backlog_does_not_hold_back_another_keys_few_tasks() {
    let mut tasks = vec![(
        "waiter",
        "name = \"holder\"\nargs = { event = \"go\" }\nqueue = \"one\"\nkey = \"h\"".to_string(),
    )];
    for i in 0..100 {
        tasks.push((
            "nap",
            format!("name = \"a{i}\"\nargs = {{ ms = 1 }}\nqueue = \"one\"\nkey = \"a\""),
        ));
    }
    for i in 0..10 {
        tasks.push((
            "nap",
            format!("name = \"b{i}\"\nargs = {{ ms = 1 }}\nqueue = \"one\"\nkey = \"b\""),
        ));
    }
    let app = TestApp::new(&format!(
        r#"
        name = "fair"
        [plugins.kit]
        path = "{{testkit}}"
        [[queues]]
        name = "one"
        concurrency = 1
        {}
        "#,
        entries(&tasks)
    ));
    let mut host = app.spawn();
    host.wait_for(111, |l| l["event"] == "queued");
    app.cli(&["dispatch", "go", "", "--wait-for", "1"]).ok();
    host.wait_for(111, |l| l["event"] == "done");
    let run = host.stop();
    let order = start_order(&run);
    assert_eq!(order[0], "holder");
    let b_in_first_20 = order[1..21].iter().filter(|t| t.starts_with('b')).count();
    assert_eq!(
        b_in_first_20, 10,
        "b's ten start within the first 20 after the holder, by turns with a's hundred: {order:?}"
    );
    assert_eq!(
        most_running(
            &run.lines,
            &order.iter().map(String::as_str).collect::<Vec<_>>()
        ),
        1
    );
}

#[test]
fn higher_priority_starts_first_and_a_long_wait_ages_the_low() {
    let mut tasks = vec![(
        "waiter",
        "name = \"holder\"\nargs = { event = \"go\" }\nqueue = \"strict\"\npriority = 100"
            .to_string(),
    )];
    for (name, priority) in [
        ("low1", 0),
        ("high1", 5),
        ("low2", 0),
        ("high2", 5),
        ("neg", -3),
    ] {
        tasks.push((
            "nap",
            format!(
                "name = \"{name}\"\nargs = {{ ms = 1 }}\nqueue = \"strict\"\npriority = {priority}"
            ),
        ));
    }
    let app = TestApp::new(&format!(
        r#"
        name = "ranked"
        [plugins.kit]
        path = "{{testkit}}"
        [[queues]]
        name = "strict"
        concurrency = 1
        ageing = "off"
        [[queues]]
        name = "aged"
        concurrency = 1
        ageing = "100ms"
        {}
        "#,
        entries(&tasks)
    ));
    let mut host = app.spawn();
    host.wait_for(6, |l| l["event"] == "queued");
    app.cli(&["dispatch", "go", "", "--wait-for", "1"]).ok();
    host.wait_for(6, |l| l["event"] == "done");

    // Ageing: a priority-0 task that has waited at least 600 ms (six
    // steps of 100 ms) goes before a priority-3 task submitted after it.
    // The wait is the condition under test: a slower machine only makes
    // it longer, which ages the low task more.
    let add = |args: &[&str]| {
        let mut all = vec!["add", "kit"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--queue", "aged"]);
        app.cli(&all).ok()
    };
    add(&[
        "waiter",
        "--args",
        r#"{"event": "again"}"#,
        "--name",
        "aged-holder",
    ]);
    host.wait_for(1, |l| l["event"] == "started" && l["task"] == "aged-holder");
    add(&[
        "nap",
        "--args",
        r#"{"ms": 1}"#,
        "--name",
        "old-low",
        "--priority",
        "0",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(600));
    add(&[
        "nap",
        "--args",
        r#"{"ms": 1}"#,
        "--name",
        "new-high",
        "--priority",
        "3",
    ]);
    app.cli(&["dispatch", "again", "", "--wait-for", "1"]).ok();
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "new-high");
    let run = host.stop();
    let order = start_order(&run);
    assert_eq!(
        order,
        [
            "holder",
            "high1",
            "high2",
            "low1",
            "low2",
            "neg",
            "aged-holder",
            "old-low",
            "new-high"
        ],
        "{}",
        run.dump()
    );
}

#[test]
fn a_rate_limited_queue_spaces_its_starts() {
    // 20 a second, no burst: 30 starts take at least 29 intervals of 50 ms
    // after the first, however fast the host is.
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            (
                "nap",
                format!("name = \"r{i}\"\nargs = {{ ms = 1 }}\nqueue = \"paced\""),
            )
        })
        .collect();
    let app = TestApp::new(&format!(
        r#"
        name = "paced"
        [plugins.kit]
        path = "{{testkit}}"
        [[queues]]
        name = "paced"
        rate = "20/s"
        {}
        "#,
        entries(&tasks)
    ));
    let run = app.run_until_idle().ok();
    assert_eq!(run.events("done").len(), 30, "{}", run.dump());
    // The first task is dispatched as it is queued, before its `queued`
    // line is written; the last starts no sooner than 29 intervals later.
    let first_queued = seconds(run.events("queued")[0]);
    let last_started = seconds(run.events("started")[29]);
    let span = last_started - first_queued;
    assert!(
        span >= 1.45 - 0.05,
        "30 starts at 20/s took {span:.3} s, less than 29 intervals of 50 ms\n{}",
        run.dump()
    );
}

#[test]
fn a_delayed_task_waits_its_delay_and_a_dedupe_queue_starts_one_per_waiting_key() {
    let app = TestApp::new(
        r#"
        name = "later"
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "once"
        concurrency = 1
        dedupe = true
        "#,
    );
    let mut host = app.spawn();
    let added = json_of(
        &app.cli(&[
            "add",
            "kit",
            "nap",
            "--args",
            r#"{"ms": 1}"#,
            "--name",
            "later",
            "--delay",
            "1s",
            "--json",
        ])
        .ok(),
    );
    assert_eq!(added["tasks"][0]["created"], true, "{added}");
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "later");

    // Dedupe: while key `acme` has a task waiting, another submission of it
    // answers with that task.
    let add = |name: &str, key: &str| {
        json_of(
            &app.cli(&[
                "add",
                "kit",
                "waiter",
                "--args",
                r#"{"event": "go"}"#,
                "--name",
                name,
                "--queue",
                "once",
                "--key",
                key,
                "--json",
            ])
            .ok(),
        )
    };
    add("holder", "h");
    host.wait_for(1, |l| l["event"] == "started" && l["task"] == "holder");
    let first = add("acme1", "acme");
    let second = add("acme2", "acme");
    assert_eq!(first["tasks"][0]["created"], true, "{first}");
    assert_eq!(second["tasks"][0]["created"], false, "{second}");
    assert_eq!(
        second["tasks"][0]["id"], first["tasks"][0]["id"],
        "{second}"
    );
    assert_eq!(second["tasks"][0]["name"], "acme1", "{second}");
    app.cli(&["dispatch", "go", "", "--wait-for", "1"]).ok();
    host.wait_for(1, |l| l["event"] == "started" && l["task"] == "acme1");
    // acme1 runs now, so acme has none waiting: a new one is taken.
    let third = add("acme3", "acme");
    assert_eq!(third["tasks"][0]["created"], true, "{third}");
    app.cli(&["dispatch", "go", "", "--wait-for", "1"]).ok();
    host.wait_for(1, |l| l["event"] == "started" && l["task"] == "acme3");
    app.cli(&["dispatch", "go", "", "--wait-for", "1"]).ok();
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "acme3");
    let run = host.stop();

    let queued = run
        .events("queued")
        .into_iter()
        .find(|l| l["task"] == "later")
        .expect("the delayed task's queued line");
    assert!(queued["run_at"].is_string(), "{queued}");
    let started = run
        .events("started")
        .into_iter()
        .find(|l| l["task"] == "later")
        .expect("the delayed task started");
    // Its start is due a second after it was queued; its queued line is
    // written just after that, so allow the few ms in between.
    let waited = seconds(started) - seconds(queued);
    assert!(
        waited >= 0.95,
        "started {waited:.3} s after it was queued\n{}",
        run.dump()
    );
    assert!(
        !run.lines.iter().any(|l| l["task"] == "acme2"),
        "the deduplicated submission made no task\n{}",
        run.dump()
    );
}

#[test]
fn bad_queue_options_are_refused_naming_the_field_and_nothing_waits() {
    let bad_rate = TestApp::new(
        r#"
        name = "bad"
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "api"
        rate = "10 per s"
        "#,
    );
    let check = bad_rate.run_taskhost(&["check"]);
    assert_eq!(check.code, Some(2), "{}", check.dump());
    assert!(
        check
            .stderr
            .contains("queues[0] (`api`): `rate`: \"10 per s\" is not a rate: write COUNT/PERIOD"),
        "{}",
        check.dump()
    );
    let bad_task = TestApp::new(
        r#"
        name = "bad"
        [plugins.kit]
        path = "{testkit}"
        [[tasks]]
        plugin = "kit"
        factory = "nap"
        args = { ms = 1 }
        run_at = "tomorrow"
        "#,
    );
    let check = bad_task.run_taskhost(&["check"]);
    assert_eq!(check.code, Some(2), "{}", check.dump());
    assert!(
        check
            .stderr
            .contains("tasks[0] (kit/nap): `run_at` \"tomorrow\" is not an RFC 3339 time"),
        "{}",
        check.dump()
    );

    let app = TestApp::new(
        r#"
        name = "bad"
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "api"
        per_key = 1
        key_arg = "customer"
        [[queues]]
        name = "keyed"
        per_key = 1
        "#,
    );
    let host = app.spawn();
    let refused = |args: &[&str], expected: &str| {
        let mut all = vec!["add", "kit", "nap", "--name", "bad"];
        all.extend_from_slice(args);
        let run = app.cli(&all);
        assert_ne!(run.code, Some(0), "{}", run.dump());
        assert!(run.stderr.contains(expected), "{expected}\n{}", run.dump());
    };
    refused(
        &["--args", r#"{"ms": 1}"#, "--priority", "101"],
        "`priority` 101 is out of range: from -100 to 100",
    );
    refused(
        &["--args", r#"{"ms": 1}"#, "--queue", "api"],
        "queue `api` takes each task's key from its argument `customer` (`key_arg`), which these \
         arguments do not have",
    );
    refused(
        &["--args", r#"{"ms": 1}"#, "--queue", "keyed"],
        "queue `keyed` goes by key (`per_key`): give the task a `key`",
    );
    refused(
        &["--args", r#"{"ms": 1}"#, "--run-at", "5pm"],
        "`run_at` \"5pm\" is not an RFC 3339 time such as \"2026-12-05T14:30:00Z\"",
    );
    refused(
        &["--args", r#"{"ms": 1}"#, "--delay", "soon"],
        "`delay` \"soon\" is not a duration",
    );
    let tasks = json_of(&app.cli(&["tasks", "--json"]).ok());
    assert_eq!(tasks, serde_json::json!([]), "nothing half-queued: {tasks}");
    host.stop();
}

/// `taskhost queues --json`'s entry for `name`.
fn queue_of(app: &TestApp, name: &str) -> Value {
    let queues = json_of(&app.cli(&["queues", "--json"]).ok());
    queues
        .as_array()
        .and_then(|all| all.iter().find(|q| q["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no queue {name} in {queues}"))
}

#[test]
fn a_queue_is_paused_drained_and_its_limits_changed_at_run_time_and_kept_across_restarts() {
    let app = TestApp::new(
        r#"
        name = "steered"
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "api"
        concurrency = 2
        per_key = 1
        "#,
    );
    let mut host = app.spawn();
    host.wait_until_serving();
    app.cli(&["queue", "pause", "api"]).ok();
    for key in ["a", "a", "b"] {
        app.cli(&[
            "add",
            "kit",
            "nap",
            "--args",
            r#"{"ms": 1}"#,
            "--queue",
            "api",
            "--key",
            key,
        ])
        .ok();
    }
    // Paused: all three wait, none runs, whatever the timing.
    let paused = queue_of(&app, "api");
    assert_eq!(paused["paused"], true, "{paused}");
    assert_eq!(
        (paused["waiting"].as_u64(), paused["running"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(paused["top_keys"][0]["key"], "a", "{paused}");
    assert_eq!(paused["top_keys"][0]["waiting"], 2, "{paused}");
    let table = app.cli(&["queues"]).ok();
    assert!(table.stdout.contains("paused"), "{}", table.dump());

    // Limits change at run time, each field on its own; bad ones are
    // refused naming the field.
    let set = json_of(
        &app.cli(&[
            "queue",
            "set",
            "api",
            "--concurrency",
            "5",
            "--rate",
            "50/s",
            "--json",
        ])
        .ok(),
    );
    assert_eq!(set["limits"]["concurrency"], 5, "{set}");
    assert_eq!(set["limits"]["per_key"], 1, "app.toml's stays: {set}");
    assert_eq!(set["limits"]["rate"], "50/s", "{set}");
    let bad = app.cli(&["queue", "set", "api", "--rate", "10 per s"]);
    assert_eq!(bad.code, Some(1), "{}", bad.dump());
    assert!(
        bad.stderr
            .contains("queue `api`: `rate`: \"10 per s\" is not a rate"),
        "{}",
        bad.dump()
    );
    let unknown = app.cli(&["queue", "pause", "nope"]);
    assert!(
        unknown.stderr.contains("no queue named `nope`"),
        "{}",
        unknown.dump()
    );

    app.cli(&["queue", "resume", "api"]).ok();
    host.wait_for(3, |l| l["event"] == "done");

    // Draining: a submission is refused (409), naming the way back.
    app.cli(&["queue", "drain", "api"]).ok();
    let refused = app.cli(&[
        "add",
        "kit",
        "nap",
        "--args",
        r#"{"ms": 1}"#,
        "--queue",
        "api",
        "--key",
        "c",
    ]);
    assert_eq!(refused.code, Some(1), "{}", refused.dump());
    assert!(
        refused.stderr.contains(
            "queue `api` is draining: it takes no new task until `taskhost queue resume api`"
        ),
        "{}",
        refused.dump()
    );
    host.stop();

    // A restart keeps the drain and the limits set at run time.
    let mut host = app.spawn();
    host.wait_until_serving();
    let kept = queue_of(&app, "api");
    assert_eq!(kept["draining"], true, "{kept}");
    assert_eq!(kept["limits"]["concurrency"], 5, "{kept}");
    assert_eq!(kept["changed"]["rate"], "50/s", "{kept}");
    let reset = json_of(&app.cli(&["queue", "reset", "api", "--json"]).ok());
    assert_eq!(reset["draining"], false, "{reset}");
    assert_eq!(
        reset["limits"]["concurrency"], 2,
        "app.toml's again: {reset}"
    );
    assert!(reset["limits"]["rate"].is_null(), "{reset}");
    assert!(reset["changed"].is_null(), "{reset}");
    host.stop();
}

#[test]
fn a_queued_task_that_fails_its_last_attempt_is_a_dead_letter_to_retry_or_discard() {
    let app = TestApp::new(
        r#"
        name = "dead"
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "jobs"
        "#,
    );
    let mut host = app.spawn();
    host.wait_until_serving();
    app.cli(&[
        "add",
        "kit",
        "fail",
        "--args",
        r#"{"reason": "no such customer"}"#,
        "--name",
        "job",
        "--queue",
        "jobs",
        "--key",
        "acme",
        "--priority",
        "7",
        "--retry",
        "2",
    ])
    .ok();
    host.wait_for(1, |l| l["event"] == "failed" && l["task"] == "job");
    let page = json_of(&app.cli(&["dead", "jobs", "--json"]).ok());
    let letter = &page["letters"][0];
    assert_eq!(letter["queue"], "jobs", "{page}");
    assert_eq!(letter["factory"], "fail", "{page}");
    assert_eq!(letter["error"], "no such customer", "{page}");
    assert_eq!(letter["attempts"], 2, "both attempts were made: {page}");
    assert_eq!(letter["key"], "acme", "{page}");
    assert_eq!(letter["priority"], 7, "{page}");
    assert_eq!(letter["retry"]["attempts"], 2, "{page}");
    let first = letter["id"].as_u64().unwrap();
    assert_eq!(queue_of(&app, "jobs")["dead"], 1);

    // Its name is still taken by the failed task: a retry is refused and
    // the letter stays; once purged, the retry runs it again.
    let taken = app.cli(&["dead", "retry", &first.to_string()]);
    assert_eq!(taken.code, Some(1), "{}", taken.dump());
    assert_eq!(
        json_of(&app.cli(&["dead", "--json"]).ok())["letters"][0]["id"],
        first
    );
    app.cli(&["purge"]).ok();
    app.cli(&["dead", "retry", &first.to_string()]).ok();
    host.wait_for(2, |l| l["event"] == "failed" && l["task"] == "job");
    let page = json_of(&app.cli(&["dead", "--json"]).ok());
    let letters = page["letters"].as_array().unwrap();
    assert_eq!(
        letters.len(),
        1,
        "the retried letter went, its new failure came: {page}"
    );
    let second = letters[0]["id"].as_u64().unwrap();
    assert!(second > first, "{page}");

    let listed = app.cli(&["dead"]).ok();
    assert!(
        listed.stdout.contains("no such customer"),
        "{}",
        listed.dump()
    );
    app.cli(&["dead", "discard", &second.to_string()]).ok();
    let empty = json_of(&app.cli(&["dead", "--json"]).ok());
    assert_eq!(empty["letters"], serde_json::json!([]), "{empty}");
    let typo = app.cli(&["dead", "jbos"]);
    assert!(
        typo.stderr.contains("no queue named `jbos`"),
        "{}",
        typo.dump()
    );
    let missing = app.cli(&["dead", "discard", &second.to_string()]);
    assert!(
        missing.stderr.contains(&format!("no dead letter {second}")),
        "{}",
        missing.dump()
    );

    // A durable task's letter says so, and its retry is durable again.
    app.cli(&[
        "add",
        "kit",
        "fail",
        "--name",
        "lasting",
        "--queue",
        "jobs",
        "--durable",
    ])
    .ok();
    host.wait_for(1, |l| l["event"] == "failed" && l["task"] == "lasting");
    let page = json_of(&app.cli(&["dead", "--json"]).ok());
    assert_eq!(page["letters"][0]["durable"], true, "{page}");
    let id = page["letters"][0]["id"].as_u64().unwrap().to_string();
    app.cli(&["purge"]).ok();
    app.cli(&["dead", "retry", &id]).ok();
    host.wait_for(2, |l| l["event"] == "failed" && l["task"] == "lasting");
    let lasting = json_of(&app.cli(&["task", "lasting", "--json"]).ok());
    assert_eq!(lasting[0]["durable"], true, "retried durable: {lasting}");

    let (api, _) = taskhost_tests::Api::of(&app);
    let metrics = api.get_text("/metrics");
    for line in [
        r#"taskhost_queue_dead_letters_total{queue="jobs"} 4"#,
        r#"taskhost_queue_started_total{queue="jobs"} 4"#,
        r#"taskhost_queue_waiting{queue="jobs"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    assert!(
        metrics.contains("taskhost_queue_wait_seconds_bucket{"),
        "{metrics}"
    );
    host.stop();
}

#[test]
fn a_schedules_runs_wait_in_its_queue_and_a_bad_schedule_queue_is_refused_at_check() {
    let app = TestApp::new(
        r#"
        name = "scheduled"
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "nightly"
        per_key = 1
        [[schedules]]
        name = "report"
        plugin = "kit"
        factory = "nap"
        args = { ms = 1 }
        cron = "0 3 * * *"
        queue = "nightly"
        key = "reports"
        priority = 9
        "#,
    );
    let check = app.run_taskhost(&["check"]);
    assert_eq!(check.code, Some(0), "{}", check.dump());
    assert!(
        check
            .stdout
            .contains("schedule report (kit/nap, cron \"0 3 * * *\" (UTC), queue nightly)"),
        "{}",
        check.dump()
    );
    assert!(
        check.stdout.contains(", queue nightly)"),
        "{}",
        check.dump()
    );
    assert!(
        check
            .stdout
            .contains("queue nightly: max_waiting 10000, per_key 1"),
        "{}",
        check.dump()
    );

    let mut host = app.spawn();
    host.wait_until_serving();
    app.cli(&["queue", "pause", "nightly"]).ok();
    app.cli(&["schedule", "trigger", "report"]).ok();
    host.wait_for(1, |l| l["event"] == "queued");
    let queued = json_of(&app.cli(&["tasks", "--json"]).ok());
    assert_eq!(queued[0]["state"], "queued", "{queued}");
    assert_eq!(queued[0]["queue"], "nightly", "{queued}");
    app.cli(&["queue", "resume", "nightly"]).ok();
    host.wait_for(1, |l| l["event"] == "done");
    let run = host.stop();
    let line = run.events("queued")[0].clone();
    assert_eq!(
        (line["key"].as_str(), line["priority"].as_i64()),
        (Some("reports"), Some(9))
    );

    for (extra, expected) in [
        ("queue = \"nope\"", "no queue named `nope`"),
        (
            "queue = \"nightly\"",
            "queue `nightly` goes by key (`per_key`)",
        ),
    ] {
        app.rewrite(&format!(
            r#"
            name = "scheduled"
            [plugins.kit]
            path = "{{testkit}}"
            [[queues]]
            name = "nightly"
            per_key = 1
            [[schedules]]
            name = "report"
            plugin = "kit"
            factory = "nap"
            args = {{ ms = 1 }}
            every = "1h"
            {extra}
            "#
        ));
        let check = app.run_taskhost(&["check"]);
        assert_eq!(check.code, Some(2), "{extra}: {}", check.dump());
        assert!(
            check.stderr.contains("schedules[0] (\"report\")"),
            "{}",
            check.dump()
        );
        assert!(
            check.stderr.contains(expected),
            "{expected}: {}",
            check.dump()
        );
    }
}

#[test]
fn keep_ended_drops_an_ended_task_once_it_is_that_old_and_frees_its_name() {
    let app = TestApp::new(
        r#"
        name = "kept"
        [limits]
        keep_ended = "1s"
        [plugins.kit]
        path = "{testkit}"
        "#,
    );
    let mut host = app.spawn();
    host.wait_until_serving();
    app.cli(&[
        "add",
        "kit",
        "nap",
        "--args",
        r#"{"ms": 1}"#,
        "--name",
        "short",
    ])
    .ok();
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "short");
    let ended_at = host
        .seen()
        .iter()
        .find(|l| l["event"] == "done" && l["task"] == "short")
        .map(seconds)
        .unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    // Listed exactly while younger than 1 s, whenever the listing comes: a
    // slow machine may list it late, and then it must be gone.
    let listed_at = |listing: &Value, before: f64, after: f64| {
        if listing.as_array().is_some_and(|tasks| !tasks.is_empty()) {
            assert!(
                before - ended_at < 1.0 + 0.05,
                "listed {:.3} s after it ended",
                before - ended_at
            );
        } else {
            assert!(
                after - ended_at >= 1.0 - 0.05,
                "gone {:.3} s after it ended",
                after - ended_at
            );
        }
    };
    let before = now();
    let listing = json_of(&app.cli(&["tasks", "--json"]).ok());
    listed_at(&listing, before, now());
    // The time passing is what is tested; a slower machine waits longer.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let before = now();
    let listing = json_of(&app.cli(&["tasks", "--json"]).ok());
    listed_at(&listing, before, now());
    assert_eq!(
        listing,
        serde_json::json!([]),
        "dropped after 1s: {listing}"
    );
    app.cli(&[
        "add",
        "kit",
        "nap",
        "--args",
        r#"{"ms": 1}"#,
        "--name",
        "short",
    ])
    .ok();
    host.stop();
}

/// `free`, a queue that bounds nothing, and `one`, one task at a time.
const FREE_AND_ONE: &str = r#"
    name = "counted"
    [plugins.kit]
    path = "{testkit}"
    [[queues]]
    name = "free"
    [[queues]]
    name = "one"
    concurrency = 1
"#;

/// A durable task whose queue gives its turn as it enters has its first
/// attempt counted in its record (one write fewer than at its turn); one
/// that waits is recorded with none. Killed while they run, each runs
/// again as its next attempt.
#[test]
fn a_durable_task_started_as_it_enters_its_queue_counts_its_attempt_across_kill_9() {
    let app = TestApp::new(FREE_AND_ONE);
    let mut host = app.spawn();
    host.wait_until_serving();
    let add = |name: &str, queue: &str| {
        let added = add_durable_nap(&app, name, queue, 600_000, &[]);
        assert_eq!(added["tasks"][0]["created"], true, "{added}");
    };
    // `free` has no limits: its task starts as it enters. `one` holds
    // `first` running and `second` waiting behind it.
    add("at-once", "free");
    add("first", "one");
    add("second", "one");
    host.wait_for(2, |l| l["event"] == "started");
    host.signal("KILL");
    let killed = host.finish();
    assert!(
        killed.event_of("started", "second").is_empty(),
        "{}",
        killed.dump()
    );

    let mut host = app.spawn();
    host.wait_for(2, |l| l["event"] == "started");
    let attempt = |name: &str| {
        let shown = json_of(&app.cli(&["task", name, "--json"]));
        (shown[0]["state"].clone(), shown[0]["attempt"].clone())
    };
    assert_eq!(attempt("at-once"), (json!("running"), json!(2)));
    assert_eq!(attempt("first"), (json!("running"), json!(2)));
    // A wait is not an attempt.
    assert_eq!(attempt("second"), (json!("queued"), json!(1)));
    host.stop();

    // What the first attempt's count in the record saves: a task that
    // starts as it enters is two storage writes (its record, its end), one
    // counted at its turn three.
    // A new app: the first one's `first` holds `one` for ten minutes.
    let app = TestApp::new(FREE_AND_ONE);
    let mut host = app.spawn();
    host.wait_until_serving();
    let calls = || {
        app.metric("taskhost_storage_call_seconds_count")
            .unwrap_or(0.0)
    };
    // A task delayed for an hour waits in `free`: it does not hold the
    // next back, which still starts as it enters (its record counted it
    // as not started, one write more, while delayed tasks counted).
    let delayed = add_durable_nap(&app, "later", "free", 1, &["--delay", "1h"]);
    assert_eq!(delayed["tasks"][0]["created"], true, "{delayed}");
    for (queue, writes) in [("free", 2.0), ("one", 3.0)] {
        let before = calls();
        let added = add_durable_nap(&app, queue, queue, 1, &[]);
        assert_eq!(added["tasks"][0]["created"], true, "{added}");
        host.wait_for(1, |l| l["event"] == "done" && l["task"] == queue);
        app.await_metric("taskhost_storage_call_seconds_count", before + writes);
    }
    host.stop();
}

#[test]
fn durable_queued_tasks_wait_across_kill_9_in_order_and_a_delay_is_kept() {
    let app = TestApp::new(
        r#"
        name = "lasting"
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "one"
        concurrency = 1
        "#,
    );
    let mut host = app.spawn();
    host.wait_until_serving();
    // Paused (kept across restarts), so none can start before the kill.
    app.cli(&["queue", "pause", "one"]).ok();
    let add = |name: &str, extra: &[&str]| add_durable_nap(&app, name, "one", 1, extra);
    let mut d1_added = None;
    for name in ["d1", "d2", "d3"] {
        let added = add(name, &[]);
        assert_eq!(added["tasks"][0]["created"], true, "{added}");
        d1_added.get_or_insert_with(std::time::SystemTime::now);
    }
    let later = add("later", &["--delay", "3s"]);
    assert_eq!(later["tasks"][0]["name"], "later", "{later}");
    let submitted = std::time::SystemTime::now();
    let listed = json_of(&app.cli(&["tasks", "--json"]).ok());
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] == "queued"),
        "{listed}"
    );
    host.signal("KILL");
    let first = host.finish();
    let run_at = |run: &taskhost_tests::Run| {
        run.events("queued")
            .into_iter()
            .find(|l| l["task"] == "later")
            .map(|l| l["run_at"].clone())
            .unwrap()
    };
    let before = run_at(&first);

    let mut host = app.spawn();
    host.wait_until_serving();
    let back = json_of(&app.cli(&["tasks", "--json"]).ok());
    let names: Vec<&str> = back
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "queued")
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["d1", "d2", "d3", "later"],
        "back in their queue, in order: {back}"
    );
    // d1 has waited since it was submitted, not since the restart (its
    // priority ages from then too): the oldest wait says so. A few ms
    // spare for the clocks' reads.
    let asked = std::time::SystemTime::now();
    let oldest = queue_of(&app, "one")["oldest_wait_ms"].as_u64().unwrap();
    let since_d1 = asked.duration_since(d1_added.unwrap()).unwrap().as_millis() as u64;
    assert!(
        oldest + 5 >= since_d1,
        "the oldest wait is {oldest} ms, d1 was added {since_d1} ms before: it counts from \
         the restart"
    );
    app.cli(&["queue", "resume", "one"]).ok();
    host.wait_for(4, |l| l["event"] == "done");
    // Each ran once, as attempt 1: waiting, and a restart while waiting,
    // are not attempts.
    let ended = json_of(&app.cli(&["tasks", "--json"]).ok());
    for task in ended.as_array().unwrap() {
        let state = (task["state"].as_str(), task["attempt"].as_u64());
        assert_eq!(state, (Some("done"), Some(1)), "{ended}");
    }
    let run = host.stop();
    assert_eq!(
        start_order(&run),
        ["d1", "d2", "d3", "later"],
        "{}",
        run.dump()
    );
    // Put back with the time it was given, not a new delay from the restart.
    assert!(before.is_string(), "{}", first.dump());
    assert_eq!(run_at(&run), before, "{}", run.dump());
    let started = run
        .events("started")
        .into_iter()
        .find(|l| l["task"] == "later")
        .map(seconds)
        .unwrap();
    let submitted = submitted
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started >= submitted + 3.0 - 0.05,
        "the delayed task started {:.3} s after it was submitted, its delay was 3 s",
        started - submitted
    );
}

/// Review of 4cc60c0: in a queue without `concurrency`, a task got its
/// turn at once and then waited for room on its worker outside the
/// queue's count, so `max_waiting` bounded nothing. Now such a task
/// waits, and counts, until its worker has room.
#[test]
fn tasks_waiting_for_room_on_their_worker_still_count_against_max_waiting() {
    let app = TestApp::new(
        r#"
        name = "roomless"
        [limits]
        tasks_per_worker = 1
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "open"
        max_waiting = 2
        "#,
    );
    let mut host = app.spawn();
    host.wait_until_serving();
    let add = |name: &str| {
        app.cli(&[
            "add",
            "kit",
            "waiter",
            "--args",
            r#"{"event": "go"}"#,
            "--name",
            name,
            "--queue",
            "open",
        ])
    };
    add("holder").ok();
    host.wait_for(1, |l| l["event"] == "started" && l["task"] == "holder");
    add("second").ok();
    add("third").ok();
    let open = queue_of(&app, "open");
    assert_eq!(
        (open["waiting"].as_u64(), open["running"].as_u64()),
        (Some(2), Some(1)),
        "{open}"
    );
    let refused = add("fourth");
    assert_eq!(refused.code, Some(1), "{}", refused.dump());
    assert!(
        refused.stderr.contains(
            "the waiting tasks of queue `open` ([[queues]] max_waiting) may be at most 2"
        ),
        "{}",
        refused.dump()
    );
    for round in 1..=3 {
        app.cli(&["dispatch", "go", "", "--wait-for", "1"]).ok();
        host.wait_for(round, |l| l["event"] == "done");
    }
    host.stop();
}

/// A limit set at run time bounds the queue's tasks at once, not only its
/// listing.
#[test]
fn a_concurrency_set_at_run_time_bounds_what_runs() {
    let app = TestApp::new(
        r#"
        name = "narrowed"
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "q"
        "#,
    );
    let mut host = app.spawn();
    host.wait_until_serving();
    app.cli(&["queue", "set", "q", "--concurrency", "1"]).ok();
    for name in ["w1", "w2", "w3"] {
        app.cli(&[
            "add",
            "kit",
            "waiter",
            "--args",
            r#"{"event": "go"}"#,
            "--name",
            name,
            "--queue",
            "q",
        ])
        .ok();
    }
    for round in 1..=3 {
        host.wait_for(round, |l| l["event"] == "started");
        let q = queue_of(&app, "q");
        let counts = (q["running"].as_u64(), q["waiting"].as_u64());
        assert_eq!(
            counts,
            (Some(1), Some(3 - round as u64)),
            "round {round}: {q}"
        );
        app.cli(&["dispatch", "go", "", "--wait-for", "1"]).ok();
        host.wait_for(round, |l| l["event"] == "done");
    }
    host.stop();
}

/// A guest places a task in a queue (WIT 0.3.0's `task-options.placement`)
/// and reads it back `queued`; a bad placement is refused naming the
/// field.
#[test]
fn a_guest_starts_a_task_in_a_queue_and_sees_it_queued() {
    let app = TestApp::new(
        r#"
        name = "placed"
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "held"
        "#,
    );
    let mut host = app.spawn();
    host.wait_until_serving();
    app.cli(&["queue", "pause", "held"]).ok();
    let mut place = |name: &str, args: &str| -> Value {
        app.cli(&["add", "kit", "place", "--args", args, "--name", name])
            .ok();
        host.wait_for(1, |l| l["event"] == "done" && l["task"] == name);
        let task = json_of(&app.cli(&["task", name, "--json"]).ok());
        serde_json::from_str(task[0]["result"].as_str().unwrap()).unwrap()
    };
    let placed = place(
        "placer",
        r#"{"name": "waiting", "queue": "held", "key": "acme", "priority": 7}"#,
    );
    assert_eq!(placed, serde_json::json!({"state": "queued"}));
    let bad = place(
        "bad",
        r#"{"name": "nope", "queue": "held", "priority": 101}"#,
    );
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("`priority` 101 is out of range")),
        "{bad}"
    );
    let unknown = place("unknown", r#"{"name": "nope2", "queue": "missing"}"#);
    assert!(
        unknown["error"]
            .as_str()
            .is_some_and(|e| e.contains("no queue named `missing`")),
        "{unknown}"
    );
    let waiting = json_of(&app.cli(&["task", "waiting", "--json"]).ok());
    assert_eq!(waiting[0]["state"], "queued", "{waiting}");
    assert_eq!(waiting[0]["queue"], "held", "{waiting}");
    host.stop();
}
