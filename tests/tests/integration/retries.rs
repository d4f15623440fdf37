//! Retries: a failed attempt (an error or a trap) is tried again in a fresh
//! instance after a growing wait, the guest sees its attempt number, a
//! permanent failure stops at once, and a cancel during the wait ends the
//! task cancelled.

use serde_json::{Value, json};
use taskhost_tests::{Run, TestApp};

fn app(tasks: &str) -> TestApp {
    TestApp::new(&format!(
        r#"
        name = "retrying"
        [plugins.kit]
        path = "{{testkit}}"
        {tasks}
        "#
    ))
}

fn flaky(name: &str, args: &str, retry: &str) -> String {
    format!(
        r#"
        [[tasks]]
        plugin = "kit"
        factory = "flaky"
        name = "{name}"
        args = {{ {args} }}
        retry = {{ {retry} }}
        "#
    )
}

fn retries<'a>(run: &'a Run, task: &str) -> Vec<&'a Value> {
    run.event_of("retrying", task)
}

#[test]
fn failing_twice_then_succeeding_ends_done_after_three_attempts_with_growing_waits() {
    let run = app(&[
        flaky(
            "errors",
            "fail_times = 2",
            r#"attempts = 5, initial = "20ms", jitter = false"#,
        ),
        flaky(
            "traps",
            "fail_times = 1, trap = true",
            r#"attempts = 2, initial = "1ms""#,
        ),
    ]
    .concat())
    .run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(run.results_of("errors"), vec![json!(3)], "{}", run.dump());
    let waits: Vec<(Value, Value, Value)> = retries(&run, "errors")
        .iter()
        .map(|l| {
            (
                l["attempt"].clone(),
                l["delay_ms"].clone(),
                l["error"].clone(),
            )
        })
        .collect();
    assert_eq!(
        waits,
        vec![
            (json!(2), json!(20.0), json!("attempt 1 failed")),
            (json!(3), json!(40.0), json!("attempt 2 failed")),
        ]
    );
    // One started line for all attempts: one task.
    assert_eq!(run.event_of("started", "errors").len(), 1);
    assert_eq!(run.results_of("traps"), vec![json!(2)], "{}", run.dump());
    assert!(
        retries(&run, "traps")[0]["error"]
            .as_str()
            .unwrap()
            .contains("attempt 1 panicked"),
        "{}",
        run.dump()
    );
}

#[test]
fn a_permanent_failure_stops_at_once_and_attempts_run_out() {
    let run = app(&[
        flaky(
            "permanent",
            "fail_times = 5, permanent = true",
            r#"attempts = 5, initial = "1ms""#,
        ),
        flaky(
            "exhausted",
            "fail_times = 10",
            r#"attempts = 3, initial = "1ms", backoff = "fixed""#,
        ),
    ]
    .concat())
    .run_until_idle();
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert!(retries(&run, "permanent").is_empty(), "{}", run.dump());
    assert_eq!(
        run.event_of("failed", "permanent")[0]["error"],
        "attempt 1 failed for good"
    );
    assert_eq!(retries(&run, "exhausted").len(), 2, "{}", run.dump());
    assert_eq!(
        run.event_of("failed", "exhausted")[0]["error"],
        "attempt 3 failed"
    );
}

#[test]
fn a_cancel_during_the_wait_ends_the_task_cancelled_and_the_cli_retries_too() {
    let app = app(&flaky(
        "waiting",
        "fail_times = 10",
        r#"attempts = 5, initial = "10m", max = "10m""#,
    ));
    let mut host = app.spawn();
    host.wait_for(1, |l| l["event"] == "retrying" && l["task"] == "waiting");
    let shown = app.cli(&["task", "waiting", "--json"]);
    let shown: Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(
        (shown[0]["state"].clone(), shown[0]["attempt"].clone()),
        (json!("running"), json!(2))
    );
    let cancelled = app.cli(&["cancel", "waiting", "--json"]);
    assert_eq!(cancelled.code, Some(0), "{}", cancelled.stderr);
    let ended: Value = serde_json::from_str(cancelled.stdout.trim()).unwrap();
    assert_eq!(ended[0]["cancel_stage"], "cooperative", "{ended}");

    let added = app.cli(&[
        "add",
        "kit",
        "flaky",
        "--name",
        "from-cli",
        "--retry",
        "3",
        "--args",
        r#"{"fail_times": 1}"#,
    ]);
    assert_eq!(added.code, Some(0), "{}", added.stderr);
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "from-cli");
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.results_of("from-cli"), vec![json!(2)], "{}", run.dump());
}

#[test]
fn a_bad_retry_policy_is_refused_naming_the_task_and_field() {
    let app = app(&flaky(
        "bad",
        "fail_times = 0",
        r#"attempts = 2, max = "soon""#,
    ));
    let check = app.check();
    assert_eq!(check.code, Some(2), "{}", check.dump());
    assert!(
        check.stderr.contains("tasks[0].retry") && check.stderr.contains("`max`"),
        "{}",
        check.stderr
    );
}

#[test]
fn a_timed_out_attempt_is_retried_and_the_next_gets_the_whole_limit() {
    // Attempts 1 and 2 hang until `timeout_ms` stops them; attempt 3
    // returns. Before the limit was per attempt, the first timeout
    // cancelled the task itself and it ended failed after one attempt.
    let run = TestApp::new(&format!(
        r#"
        name = "retrying"
        cancel_grace_ms = 100
        [plugins.kit]
        path = "{{testkit}}"
        [plugins.kit.limits]
        timeout_ms = 150
        {}
        "#,
        flaky(
            "slow",
            "fail_times = 2, hang = true",
            r#"attempts = 3, initial = "1ms""#,
        )
    ))
    .run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(run.results_of("slow"), vec![json!(3)], "{}", run.dump());
    let errors: Vec<&Value> = retries(&run, "slow").iter().map(|l| &l["error"]).collect();
    assert_eq!(
        errors,
        vec![
            &json!("timed out after 150 ms (limit `timeout_ms`); it stopped when told"),
            &json!("timed out after 150 ms (limit `timeout_ms`); it stopped when told"),
        ],
        "{}",
        run.dump()
    );
}

/// Issue 24, item 11: a task that failed because the allow-list refused
/// its request was tried again, to be refused again. A policy failure is
/// now final: one attempt, no `retrying` line.
#[test]
fn a_failure_after_a_request_the_allow_list_refused_is_not_retried() {
    let run = app(r#"
        [[tasks]]
        plugin = "kit"
        factory = "http_get"
        name = "denied"
        args = { url = "http://127.0.0.1:9/nowhere" }
        retry = { attempts = 3, initial = "10ms" }
        "#)
    .run_until_idle();
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert_eq!(run.event_of("failed", "denied").len(), 1, "{}", run.dump());
    assert!(retries(&run, "denied").is_empty(), "{}", run.dump());
}
