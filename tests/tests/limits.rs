//! Issue 5: `[limits]` are checked in app.toml and hold exactly where they
//! say (the full hostile set is in `hostile.rs`).

use taskhost_tests::TestApp;

#[test]
fn a_spawn_bomb_gets_a_limit_error_at_the_per_worker_cap() {
    let app = TestApp::new(
        r#"
        name = "spawns"
        workers = 1
        [limits]
        tasks_per_worker = 20
        [plugins.hostile]
        path = "{hostile}"
        [[tasks]]
        plugin = "hostile"
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
