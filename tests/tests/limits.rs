//! Issue 5 (first part): `[limits]` hold against hostile plugins, and the
//! well-behaved tasks next to them finish.

use serde_json::json;
use taskhost_tests::TestApp;

#[test]
fn a_memory_bomb_fails_alone_at_the_memory_limit() {
    let app = TestApp::new(
        r#"
        name = "bomb"
        workers = 1
        [limits]
        memory_mb = 16
        [plugins.kit]
        path = "{testkit}"
        [[tasks]]
        plugin = "kit"
        factory = "memory_bomb"
        name = "bomb"
        [[tasks]]
        plugin = "kit"
        factory = "nap"
        name = "neighbour"
        args = { ms = 20 }
        "#,
    );
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(1), "{}", run.dump());
    let failed = run.event_of("failed", "bomb");
    assert_eq!(failed.len(), 1, "{}", run.dump());
    let error = failed[0]["error"].as_str().unwrap();
    assert!(error.contains("memory allocation"), "{error}");
    assert_eq!(run.results_of("neighbour"), vec![json!(20)]);
}

#[test]
fn a_spawn_bomb_gets_a_limit_error_at_the_per_worker_cap() {
    let app = TestApp::new(
        r#"
        name = "spawns"
        workers = 1
        [limits]
        tasks_per_worker = 20
        [plugins.kit]
        path = "{testkit}"
        [[tasks]]
        plugin = "kit"
        factory = "spawn_bomb"
        name = "bomb"
        "#,
    );
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    let report = &run.results_of("bomb")[0];
    // The bomb itself is one of the 20 live tasks.
    assert_eq!(report["spawned"], 19, "{report}");
    assert_eq!(report["kind"], "Limit", "{report}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("tasks_per_worker"),
        "{report}"
    );
    // Every spawned waiter was cancelled and ended.
    assert_eq!(run.events("cancelled").len(), 19, "{}", run.dump());
    assert_eq!(run.events("done").len(), 1, "{}", run.dump());
}

#[test]
fn an_overlong_log_line_is_cut_and_says_so() {
    let app = TestApp::new(
        r#"
        name = "flood"
        [limits]
        log_line_bytes = 100
        [plugins.kit]
        path = "{testkit}"
        [[tasks]]
        plugin = "kit"
        factory = "log_flood"
        name = "flood"
        args = { bytes = 100000 }
        "#,
    );
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    let line = run
        .lines
        .iter()
        .find(|l| l["task"] == "flood" && l["event"].is_null())
        .expect("the flood logged");
    let message = line["message"].as_str().unwrap();
    assert_eq!(
        message,
        format!("{} [truncated 99900 bytes]", "x".repeat(100))
    );
}

#[test]
fn limits_are_checked_in_app_toml() {
    let app = TestApp::new("name = \"x\"\n[limits]\nmemory_mb = 0\n");
    let run = app.check();
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(
        run.stderr
            .contains("[limits] `memory_mb` must be at least 1"),
        "{}",
        run.dump()
    );
    let app = TestApp::new("name = \"x\"\n[limits]\nmemroy_mb = 8\n");
    let run = app.check();
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(
        run.stderr.contains("unknown field `memroy_mb`"),
        "{}",
        run.dump()
    );
}
