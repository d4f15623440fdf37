//! Supervised tasks (`restart = ...`, issue 27 item 2): a task that ends is
//! started again after a growing wait, up to its intensity; one that
//! failed in a way a restart would repeat is not; restarts are lifecycle
//! events, counted in metrics and shown by `taskhost tasks`.

use serde_json::{Value, json};
use taskhost_tests::{Run, TestApp};

fn app(tasks: &str) -> TestApp {
    TestApp::new(&format!(
        r#"
        name = "supervised"
        [plugins.kit]
        path = "{{testkit}}"
        {tasks}
        "#
    ))
}

/// A `[[tasks]]` entry of testkit's `factory`.
fn task(name: &str, factory: &str, args: &str, extra: &str) -> String {
    format!(
        r#"
        [[tasks]]
        plugin = "kit"
        factory = "{factory}"
        name = "{name}"
        args = {{ {args} }}
        {extra}
        "#
    )
}

fn restarts<'a>(run: &'a Run, task: &str) -> Vec<&'a Value> {
    run.event_of("restarting", task)
}

#[test]
fn a_task_that_keeps_failing_is_restarted_with_growing_waits_then_given_up() {
    let run = app(&[
        task(
            "poller",
            "flaky",
            "fail_times = 100",
            r#"restart = { when = "on-failure", intensity = 3, period = "1m", initial = "20ms", max = "1s" }"#,
        ),
        // A request the allow-list refuses is refused again: no restart.
        task(
            "denied",
            "http_get",
            r#"url = "http://127.0.0.1:9/nowhere""#,
            r#"restart = "on-failure""#,
        ),
        // Nor after the guest said its failure is for good.
        task(
            "permanent",
            "flaky",
            "fail_times = 5, permanent = true",
            r#"restart = "always""#,
        ),
    ]
    .concat())
    .run_until_idle();
    assert_eq!(run.code, Some(1), "{}", run.dump());
    let seen: Vec<(Value, Value, Value)> = restarts(&run, "poller")
        .iter()
        .map(|l| {
            (
                l["restart"].clone(),
                l["delay_ms"].clone(),
                l["error"].clone(),
            )
        })
        .collect();
    // Each restart is a new run: its attempt is 1 again.
    assert_eq!(
        seen,
        vec![
            (json!(1), json!(20.0), json!("attempt 1 failed")),
            (json!(2), json!(40.0), json!("attempt 1 failed")),
            (json!(3), json!(80.0), json!("attempt 1 failed")),
        ],
        "{}",
        run.dump()
    );
    let failed = run.event_of("failed", "poller");
    assert_eq!(failed.len(), 1, "{}", run.dump());
    let error = failed[0]["error"].as_str().unwrap();
    assert!(
        error.contains("restarted 3 times within 1m")
            && error.contains("`restart.intensity`")
            && error.contains("failed: attempt 1 failed"),
        "{error}"
    );
    // One task all along: one started line.
    assert_eq!(run.event_of("started", "poller").len(), 1, "{}", run.dump());
    for task in ["denied", "permanent"] {
        assert!(restarts(&run, task).is_empty(), "{task}: {}", run.dump());
        assert_eq!(run.event_of("failed", task).len(), 1, "{}", run.dump());
    }
}

#[test]
fn always_restarts_a_run_that_ended_done_and_each_run_gets_its_retries() {
    // Each run fails its first attempt and is retried once; its second
    // attempt returns 2, and the task is restarted, twice, then given up.
    let run = app(&task(
        "beat",
        "flaky",
        "fail_times = 1",
        r#"retry = { attempts = 2, initial = "1ms" }
        restart = { when = "always", intensity = 2, initial = "5ms" }"#,
    ))
    .run_until_idle();
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert_eq!(run.event_of("retrying", "beat").len(), 3, "{}", run.dump());
    let restarted = restarts(&run, "beat");
    assert_eq!(restarted.len(), 2, "{}", run.dump());
    assert!(
        restarted.iter().all(|l| l.get("error").is_none()),
        "{}",
        run.dump()
    );
    let error = run.event_of("failed", "beat")[0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("Its last run ended done"), "{error}");
}

#[test]
fn an_added_task_is_supervised_shown_counted_and_a_cancel_in_its_wait_ends_it() {
    let app = app("");
    let mut host = app.spawn();
    host.wait_until_serving();
    let added = app.cli(&[
        "add",
        "kit",
        "flaky",
        "--name",
        "watcher",
        "--restart",
        "on-failure",
        "--restart-intensity",
        "50",
        "--args",
        r#"{"fail_times": 100}"#,
    ]);
    assert_eq!(added.code, Some(0), "{}", added.dump());
    // The first restart waits 1 s (the default), the second 2 s: the
    // cancel below lands in a wait.
    host.wait_for(1, |l| l["event"] == "restarting" && l["task"] == "watcher");
    let shown = app.cli(&["task", "watcher", "--json"]);
    let shown: Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(shown[0]["state"], "running", "{shown}");
    assert!(shown[0]["restarts"].as_u64().unwrap() >= 1, "{shown}");
    let table = app.cli(&["tasks"]);
    assert!(
        table.stdout.lines().next().unwrap().contains("RESTARTS"),
        "{}",
        table.stdout
    );
    assert!(
        app.metric("taskhost_task_restarts_total{plugin=\"kit\"}")
            .unwrap()
            >= 1.0
    );
    let cancelled = app.cli(&["cancel", "watcher", "--json"]);
    assert_eq!(cancelled.code, Some(0), "{}", cancelled.dump());
    let ended: Value = serde_json::from_str(cancelled.stdout.trim()).unwrap();
    assert_eq!(ended[0]["state"], "cancelled", "{ended}");

    // Refused, naming what to change.
    let refused = app.cli(&[
        "add",
        "kit",
        "flaky",
        "--restart",
        "always",
        "--restart-intensity",
        "0",
    ]);
    assert_ne!(refused.code, Some(0), "{}", refused.dump());
    assert!(refused.stderr.contains("`intensity`"), "{}", refused.dump());
    let refused = app.cli(&["add", "kit", "flaky", "--restart", "always", "--durable"]);
    assert_ne!(refused.code, Some(0), "{}", refused.dump());
    assert!(refused.stderr.contains("--durable"), "{}", refused.dump());
    // A queued task's arguments are checked as it starts: refused, they
    // would be refused again, so neither its retries nor its supervisor
    // try again. (It was retried before.)
    let added = app.cli(&[
        "add",
        "kit",
        "typed",
        "--name",
        "bad-args",
        "--queue",
        "default",
        "--retry",
        "3",
        "--restart",
        "on-failure",
        "--args",
        r#"{"num": "seven", "label": "x"}"#,
    ]);
    assert_eq!(added.code, Some(0), "{}", added.dump());
    host.wait_for(1, |l| l["event"] == "failed" && l["task"] == "bad-args");
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(
        run.event_of("cancelled", "watcher").len(),
        1,
        "{}",
        run.dump()
    );
    let error = run.event_of("failed", "bad-args")[0]["error"].clone();
    assert!(
        error.as_str().unwrap().contains("argument `num`"),
        "{}",
        run.dump()
    );
    for event in ["retrying", "restarting"] {
        assert!(run.event_of(event, "bad-args").is_empty(), "{}", run.dump());
    }
}

#[test]
fn bad_restart_policies_are_refused_at_check_naming_the_task_and_field() {
    let refused = |extra: &str, wants: &[&str]| {
        let app = app(&task("bad", "flaky", "fail_times = 0", extra));
        let check = app.check();
        assert_eq!(check.code, Some(2), "{}", check.dump());
        for want in wants {
            assert!(check.stderr.contains(want), "{want}: {}", check.stderr);
        }
    };
    refused(
        r#"restart = { when = "always", intensity = 0 }"#,
        &["tasks[0].restart", "`intensity` must be at least 1"],
    );
    refused(
        r#"restart = "sometimes""#,
        &["\"always\" or \"on-failure\""],
    );
    refused(
        r#"restart = { when = "on-failure", initial = "2s", max = "1s" }"#,
        &["tasks[0].restart", "`max`"],
    );
    refused(
        r#"restart = "on-failure"
        durable = true"#,
        &["\"bad\"", "`restart` and `durable`"],
    );
    refused(
        r#"restart = "always"
        scope = "main""#,
        &["\"bad\"", "never let the workers start"],
    );
}

/// WIT 0.5.0's `task-options.restart`, through the Rust SDK: a guest
/// starts a supervised task; a bad policy is `invalid-args`, naming the
/// field.
#[test]
fn a_guest_starts_a_supervised_task_and_a_bad_policy_is_refused() {
    let run = app(&[
        task("starter", "supervise", r#"name = "kid", intensity = 2"#, ""),
        task(
            "refused",
            "supervise",
            r#"name = "never", intensity = 0"#,
            "",
        ),
    ]
    .concat())
    .run_until_idle();
    assert_eq!(run.code, Some(1), "{}", run.dump());
    let delays: Vec<Value> = restarts(&run, "kid")
        .iter()
        .map(|l| l["delay_ms"].clone())
        .collect();
    assert_eq!(delays, vec![json!(5.0), json!(10.0)], "{}", run.dump());
    let failed = run.event_of("failed", "kid");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("restarted 2 times within 1m"),
        "{}",
        run.dump()
    );
    let refused = &run.results_of("refused")[0];
    assert_eq!(refused["kind"], "InvalidArgs", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("task-options.restart: `intensity` must be at least 1"),
        "{refused}"
    );
    assert!(
        run.event_of("started", "never").is_empty(),
        "{}",
        run.dump()
    );
}
