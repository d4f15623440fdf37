//! A plugin in Python: `plugins/py-examples`, built by `taskhost build`
//! (componentize-py, installed by taskhost into its cache) with the Python
//! SDK, run through the real binary.

use serde_json::{Value, json};
use taskhost_tests::TestApp;

fn app(tasks: &str) -> TestApp {
    TestApp::new(&format!(
        r#"
        name = "py"
        workers = 2
        [plugins.py]
        path = "{{py-examples}}"
        [config]
        greeting = "hallo"
        {tasks}
        "#
    ))
}

fn task(factory: &str, name: &str, args: &str) -> String {
    format!(
        "[[tasks]]\nplugin = \"py\"\nfactory = \"{factory}\"\nname = \"{name}\"\nargs = {args}\n"
    )
}

#[test]
fn python_tasks_run_per_worker_with_typed_args_app_calls_and_tracebacks() {
    let run = app(&[
        task("slow_work", "slow", "{ ms = 10 }"),
        task("typed", "typed", r#"{ num = 7, label = "seven" }"#),
        task("tour", "tour", "{}"),
        task("boom", "boom", "{}"),
        task("hog", "hog", "{ mb = 200 }"),
    ]
    .concat())
    .run_until_idle();
    assert_eq!(run.code, Some(1), "boom fails the run\n{}", run.dump());
    // Startup tasks run once per worker.
    assert_eq!(run.messages("slow work done").len(), 2, "{}", run.dump());
    assert_eq!(
        run.results_of("typed")[0],
        json!({"num": 7, "label": "seven", "flag": null})
    );
    let tour = &run.results_of("tour")[0];
    assert_eq!(
        tour,
        &json!({"seen": "running", "missing": "NotFound", "bad_args": "InvalidArgs",
                "cancelled": "cancelled", "woken": 0, "listed": true, "purged": true,
                "greeting": "hallo"}),
        "{}",
        run.dump()
    );
    // An uncaught exception fails the task with its Python traceback.
    let error = run.event_of("failed", "boom")[0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("Traceback")
            && error.contains("helper_that_fails")
            && error.contains("ValueError: the python guest blew up"),
        "{error}"
    );
    // 200 MiB against the 64 MiB default: a MemoryError inside the guest.
    assert_eq!(
        run.results_of("hog")[0],
        json!("MemoryError"),
        "{}",
        run.dump()
    );
}

#[test]
fn python_arguments_are_checked_by_name_and_type_before_anything_runs() {
    for (args, says) in [
        (
            r#"{ num = "x", label = "l" }"#,
            "argument `num` must be an integer, got \"x\"",
        ),
        (r#"{ num = 1 }"#, "missing argument `label`"),
        (
            r#"{ num = 1, label = "l", colour = "red" }"#,
            "unknown argument `colour`",
        ),
    ] {
        let check = app(&task("typed", "typed", args)).check();
        assert_eq!(check.code, Some(2), "{args}: {}", check.dump());
        assert!(check.stderr.contains(says), "{args}: {}", check.stderr);
    }
    let check = app(&task("no_such", "x", "{}")).check();
    assert_eq!(check.code, Some(2), "{}", check.dump());
    assert!(
        check.stderr.contains("slow_work"),
        "lists the factories: {}",
        check.stderr
    );
}

#[test]
fn a_python_cancel_runs_finally_past_a_broad_except_and_a_loop_is_forced() {
    let app = app(&[
        task("sleeper", "sleeper", r#"{ marker = "m1" }"#),
        task("spinner", "spinner", "{}"),
    ]
    .concat());
    let mut host = app.spawn();
    host.wait_for(2, |l| l["event"] == "started" && l["task"] == "spinner");
    host.wait_for(2, |l| l["event"] == "started" && l["task"] == "sleeper");
    let cancelled = app.cli(&["cancel", "sleeper", "--worker", "0", "--json"]);
    assert_eq!(cancelled.code, Some(0), "{}", cancelled.stderr);
    let ended: Value = serde_json::from_str(cancelled.stdout.trim()).unwrap();
    assert_eq!(ended[0]["cancel_stage"], "cooperative", "{ended}");
    let cleaned = app.cli(&["kv", "get", "py/cleanup", "m1"]);
    assert!(cleaned.stdout.contains("cleaned up"), "{}", cleaned.dump());
    let forced = app.cli(&["cancel", "spinner", "--worker", "0", "--json"]);
    let forced: Value = serde_json::from_str(forced.stdout.trim()).unwrap();
    assert_eq!(forced[0]["cancel_stage"], "forced", "{forced}");
    host.signal("TERM");
    let run = host.finish();
    assert!(
        run.messages("a broad except caught the cancel: a bug in the SDK")
            .is_empty(),
        "{}",
        run.dump()
    );
}
