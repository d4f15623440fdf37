//! A plugin built with the guest SDK runs as a task under
//! `taskhost run app.toml`. Every test runs the real binary on real
//! components built from `plugins/`.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use taskhost_tests::{TestApp, repo, result_of, taskhost_bin};

#[test]
fn demo_app_runs_worker_tasks_once_per_worker_after_the_main_task() {
    let _storage = taskhost_tests::examples_storage();
    let scratch = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(taskhost_bin())
        .args(["run", "--until-idle", "--log-format", "json"])
        .arg(repo().join("examples/app.toml"))
        .env("TASKHOST_CONTROL_FILE", scratch.path().join("control.json"))
        .output()
        .expect("taskhost runs");
    let run = taskhost_tests::Run::from(output);
    assert_eq!(run.code, Some(0), "{}", run.dump());

    let announced = run.messages("Server successfully started!");
    let workers: BTreeSet<String> = announced.iter().map(|l| l["worker"].to_string()).collect();
    assert_eq!(announced.len(), 2, "{}", run.dump());
    assert_eq!(workers, BTreeSet::from(["0".into(), "1".into()]));

    // The main task logs the app name once, from the main scope, and has
    // ended before any worker task starts.
    let main_lines: Vec<_> = run.lines.iter().filter(|l| l["worker"] == "main").collect();
    assert_eq!(
        main_lines.iter().filter(|l| l["message"] == "demo").count(),
        1,
        "{}",
        run.dump()
    );
    let main_done = run
        .lines
        .iter()
        .position(|l| l["event"] == "done" && l["worker"] == "main")
        .expect("main task done");
    let first_worker_start = run
        .lines
        .iter()
        .position(|l| l["event"] == "started" && l["worker"] != "main")
        .expect("worker tasks started");
    assert!(main_done < first_worker_start, "{}", run.dump());

    // Every worker-scope task ran once per worker: 5 tasks x 2 workers (the
    // watcher too: without the demo's feed it counts failed polls).
    let worker_done = run
        .events("done")
        .into_iter()
        .filter(|l| l["worker"] != "main")
        .count();
    assert_eq!(worker_done, 10, "{}", run.dump());
    assert!(run.events("failed").is_empty(), "{}", run.dump());
}

#[test]
fn each_task_gets_the_app_handle_of_its_own_worker() {
    let app = TestApp::new(
        r#"
        name = "injected"
        workers = 3
        [plugins.kit]
        path = "{testkit}"
        [[tasks]]
        plugin = "kit"
        factory = "identity"
        [[tasks]]
        plugin = "kit"
        factory = "identity"
        scope = "main"
        "#,
    );
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    let seen: Vec<Value> = run.events("done").into_iter().map(result_of).collect();
    assert_eq!(seen.len(), 4, "{}", run.dump());
    assert!(seen.iter().all(|s| s["name"] == "injected"), "{seen:?}");
    let workers: BTreeSet<String> = seen.iter().map(|s| s["worker"].to_string()).collect();
    assert_eq!(
        workers,
        BTreeSet::from(["0".into(), "1".into(), "2".into(), "null".into()]),
        "three workers with distinct indexes, and the main scope with none"
    );
}

#[test]
fn typed_args_and_config_reach_the_task() {
    let app = TestApp::new(
        r#"
        name = "typed"
        [plugins.kit]
        path = "{testkit}"
        [config]
        limits = { retries = 3 }
        [[tasks]]
        plugin = "kit"
        factory = "typed"
        name = "typed"
        args = { num = 7, label = "seven" }
        [[tasks]]
        plugin = "kit"
        factory = "config_value"
        name = "config"
        args = { key = "limits" }
        [[tasks]]
        plugin = "kit"
        factory = "config_value"
        name = "absent"
        args = { key = "nope" }
        "#,
    );
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    let result = |task: &str| result_of(run.event_of("done", task)[0]);
    assert_eq!(
        result("typed"),
        json!({"num": 7, "label": "seven", "flag": null})
    );
    assert_eq!(result("config"), json!({"retries": 3}));
    assert_eq!(result("absent"), Value::Null);
}

#[test]
fn bad_args_are_refused_before_start_naming_task_and_field() {
    let cases = [
        (
            r#"{ num = "seven", label = "x" }"#,
            "argument `num`: invalid type: string \"seven\", expected u32",
        ),
        (r#"{ label = "x" }"#, "missing field `num`"),
        (
            r#"{ num = 1, label = "x", colour = "red" }"#,
            "unknown field `colour`",
        ),
    ];
    for (args, expected) in cases {
        let app = TestApp::new(&format!(
            r#"
            name = "bad"
            [plugins.kit]
            path = "{{testkit}}"
            [[tasks]]
            plugin = "kit"
            factory = "typed"
            args = {args}
            "#
        ));
        for run in [app.check(), app.run_until_idle()] {
            assert_eq!(run.code, Some(2), "{}", run.dump());
            assert!(
                run.stderr.contains("app.toml: tasks[0] (kit/typed)"),
                "{}",
                run.dump()
            );
            assert!(run.stderr.contains("factory `typed`"), "{}", run.dump());
            assert!(run.stderr.contains(expected), "{expected}\n{}", run.dump());
            assert!(run.events("started").is_empty(), "nothing may start");
        }
    }
}

#[test]
fn a_trap_or_panic_fails_only_that_task() {
    let app = TestApp::new(
        r#"
        name = "faults"
        workers = 2
        [plugins.kit]
        path = "{testkit}"
        [plugins.hostile]
        path = "{hostile}"
        [[tasks]]
        plugin = "hostile"
        factory = "panic"
        name = "panics"
        [[tasks]]
        plugin = "hostile"
        factory = "trap"
        name = "traps"
        [[tasks]]
        plugin = "kit"
        factory = "fail"
        name = "fails"
        [[tasks]]
        plugin = "kit"
        factory = "nap"
        name = "survivor"
        args = { ms = 50 }
        "#,
    );
    let run = app.run_until_idle();
    assert_eq!(
        run.code,
        Some(1),
        "a failed task makes --until-idle exit 1\n{}",
        run.dump()
    );

    let failed = |task: &str| -> Vec<String> {
        run.event_of("failed", task)
            .iter()
            .map(|l| l["error"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let panics = failed("panics");
    assert_eq!(panics.len(), 2, "{}", run.dump());
    assert!(
        panics
            .iter()
            .all(|e| e.contains("hostile panic on purpose")),
        "{panics:?}"
    );
    let traps = failed("traps");
    assert_eq!(traps.len(), 2, "{}", run.dump());
    assert!(traps.iter().all(|e| e.contains("unreachable")), "{traps:?}");
    assert_eq!(failed("fails"), vec!["testkit failure on purpose"; 2]);

    // The well-behaved task finished on both workers, after its neighbours died.
    assert_eq!(run.event_of("done", "survivor").len(), 2, "{}", run.dump());
    assert_eq!(run.messages("woke").len(), 2, "{}", run.dump());
}

#[test]
fn guest_stdout_and_stderr_become_attributed_log_lines() {
    let app = TestApp::new(
        r#"
        name = "printing"
        [plugins.kit]
        path = "{testkit}"
        [[tasks]]
        plugin = "kit"
        factory = "print"
        name = "printer"
        args = { text = "plain println" }
        "#,
    );
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    let out = run.messages("plain println");
    assert_eq!(out.len(), 1, "{}", run.dump());
    assert_eq!(out[0]["level"], "INFO");
    let err = run.messages("err: plain println");
    assert_eq!(err.len(), 1, "{}", run.dump());
    assert_eq!(err[0]["level"], "WARN");
    for line in [out[0], err[0]] {
        assert_eq!(line["task"], "printer");
        assert_eq!(line["worker"], 0);
        assert_eq!(line["plugin"], "kit");
        assert_eq!(line["factory"], "print");
    }
}

#[test]
fn json_log_lines_carry_the_documented_fields() {
    let app = TestApp::new(
        r#"
        name = "fields"
        [plugins.examples]
        path = "{examples}"
        [[tasks]]
        plugin = "examples"
        factory = "slow_work"
        args = { ms = 1 }
        "#,
    );
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    let logged = &run.messages("slow work done")[0];
    for field in [
        "worker", "task", "task_id", "plugin", "factory", "level", "message",
    ] {
        assert!(!logged[field].is_null(), "`{field}` missing from {logged}");
    }
    // Unnamed tasks are labelled by their id.
    assert_eq!(logged["task"], logged["task_id"].to_string());
    for event in ["started", "done"] {
        let line = &run.events(event)[0];
        for field in ["worker", "task", "plugin", "factory", "level"] {
            assert!(!line[field].is_null(), "`{field}` missing from {line}");
        }
    }
    assert_eq!(run.events("done")[0]["result"], "null");
}

#[test]
fn shutdown_signal_cancels_every_task_and_exits_zero() {
    let app = TestApp::new(
        r#"
        name = "long"
        workers = 2
        [plugins.kit]
        path = "{testkit}"
        [[tasks]]
        plugin = "kit"
        factory = "nap"
        name = "sleeper"
        args = { ms = 600000 }
        "#,
    );
    let mut host = app.spawn();
    host.wait_for(2, |l| l["event"] == "started");
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    let cancelled = run.event_of("cancelled", "sleeper");
    assert_eq!(cancelled.len(), 2, "{}", run.dump());
    assert!(
        cancelled.iter().all(|l| l["stage"] == "cooperative"),
        "{}",
        run.dump()
    );
}
