//! Plugins built against an older `taskhost:plugin` WIT keep loading and
//! running: `plugins/compat010` to `plugins/compat040` are bound to the
//! pinned copies of 0.1.0 to 0.4.0 (`wit/compat/`), not through the SDK,
//! so they are real components of those versions.

use serde_json::json;
use taskhost_tests::TestApp;

const APP: &str = r#"
    name = "old-and-new"
    [config]
    who = "world"
    [plugins.old]
    path = "{compat010}"
    [plugins.kit]
    path = "{testkit}"
"#;

#[test]
fn a_plugin_built_against_0_1_0_runs_beside_a_current_one() {
    let app = TestApp::new(&format!(
        r#"{APP}
        [[tasks]]
        plugin = "old"
        factory = "hello"
        name = "hello"
        [[tasks]]
        plugin = "kit"
        factory = "identity"
        name = "identity"
        "#
    ));
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(
        run.results_of("hello"),
        vec![json!({"app": "old-and-new", "who": "world", "worker": 0})]
    );
    assert_eq!(run.results_of("identity").len(), 1, "{}", run.dump());
}

/// A 0.1.0 plugin reads a task's listing in its own shape (0.2.0's types,
/// which the current ones may outgrow): a task waiting in a queue is
/// `pending` to it.
#[test]
fn a_0_1_0_plugin_lists_tasks_in_its_own_shape() {
    let app = TestApp::new(&format!(
        r#"{APP}
        [[queues]]
        name = "held"
        "#
    ));
    let mut host = app.spawn();
    host.wait_until_serving();
    app.cli(&["queue", "pause", "held"]).ok();
    app.cli(&[
        "add", "old", "hello", "--name", "waiting", "--queue", "held",
    ])
    .ok();
    app.cli(&[
        "add",
        "old",
        "observe",
        "--args",
        r#""waiting""#,
        "--name",
        "observer",
    ])
    .ok();
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "observer");
    let run = host.stop();
    let seen = run.results_of("observer");
    assert_eq!(seen[0]["get"], "pending", "{}", run.dump());
    assert_eq!(seen[0]["listed"], "pending", "{}", run.dump());
    assert!(
        seen[0]["plugin_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("sha256:")),
        "{seen:?}"
    );
}

#[test]
fn a_0_1_0_task_is_cancelled_cooperatively_and_listed_with_its_version() {
    let app = TestApp::new(&format!(
        r#"{APP}
        [[tasks]]
        plugin = "old"
        factory = "sleeper"
        name = "sleeper"
        "#
    ));
    let mut host = app.spawn();
    host.wait_for(1, |l| l["message"] == "0.1.0 sleeping");
    let plugins = app.cli(&["plugins", "--json"]);
    assert_eq!(plugins.code, Some(0), "{}", plugins.stderr);
    let listed: serde_json::Value = serde_json::from_str(&plugins.stdout).unwrap();
    let wit = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["wit"].clone())
    };
    assert_eq!(
        (wit("old"), wit("kit")),
        (Some(json!("0.1.0")), Some(json!("0.5.0")))
    );
    let cancelled = app.cli(&["cancel", "sleeper"]);
    assert_eq!(cancelled.code, Some(0), "{}", cancelled.stderr);
    host.wait_for(1, |l| {
        l["event"] == "cancelled" && l["task"] == "sleeper" && l["stage"] == "cooperative"
    });
    host.wait_for(1, |l| l["message"] == "0.1.0 cleanup ran");
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.code, Some(0), "{}", run.dump());
}

/// What a later WIT may change the shape of (the task listing, start-task's
/// options, the connections interface) keeps working for a 0.2.0 plugin; a
/// task waiting in a queue is `pending` to it (0.2.0 has no `queued`).
#[test]
fn a_plugin_built_against_0_2_0_lists_starts_and_cancels_tasks() {
    an_old_plugin_lists_starts_and_cancels_tasks("compat020", "0.2.0", "pending", None);
}

/// The same for a 0.3.0 plugin: it sees a task waiting in a queue as
/// `queued`, and places the task it starts in a queue.
#[test]
fn a_plugin_built_against_0_3_0_lists_places_and_cancels_tasks() {
    an_old_plugin_lists_starts_and_cancels_tasks("compat030", "0.3.0", "queued", Some("default"));
}

/// The same for a 0.4.0 plugin, whose `task-options` lack 0.5.0's
/// `restart`; it also joins a child it started (0.4.0's `join`, with its
/// own `task-ref`).
#[test]
fn a_plugin_built_against_0_4_0_lists_places_joins_and_cancels_tasks() {
    an_old_plugin_lists_starts_and_cancels_tasks("compat040", "0.4.0", "queued", Some("default"));
    let run = TestApp::new(
        r#"
        name = "old-and-new"
        [config]
        who = "world"
        [plugins.old]
        path = "{compat040}"
        [[tasks]]
        plugin = "old"
        factory = "joiner"
        name = "joiner"
        "#,
    )
    .run_until_idle()
    .ok();
    assert_eq!(
        run.results_of("joiner"),
        vec![json!({"app": "old-and-new", "who": "world", "attempt": 1})],
        "{}",
        run.dump()
    );
}

/// Runs `plugin` (a placeholder of [`TestApp::new`]), built against WIT
/// `version`: a task waiting in a paused queue reads as `waiting_as` to
/// it, the task its `spawner` starts is placed in `placed` (none: not in a
/// queue), and cancelling and the connections interface answer as they
/// did.
fn an_old_plugin_lists_starts_and_cancels_tasks(
    plugin: &str,
    version: &str,
    waiting_as: &str,
    placed: Option<&str>,
) {
    let app = TestApp::new(&format!(
        r#"
        name = "old-and-new"
        [config]
        who = "world"
        [plugins.old]
        path = "{{{plugin}}}"
        [plugins.kit]
        path = "{{testkit}}"
        [[queues]]
        name = "held"
        "#
    ));
    let mut host = app.spawn();
    host.wait_until_serving();
    let add = |args: &[&str]| {
        let mut all = vec!["add", "old"];
        all.extend_from_slice(args);
        app.cli(&all).ok()
    };
    app.cli(&["queue", "pause", "held"]).ok();
    add(&["hello", "--name", "waiting", "--queue", "held"]);
    add(&["observe", "--args", r#""waiting""#, "--name", "observer"]);
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "observer");
    add(&["spawner", "--name", "spawner"]);
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "child");
    add(&["sleeper", "--name", "sleeper"]);
    let sleeping = format!("{version} sleeping");
    host.wait_for(1, |l| l["message"] == sleeping.as_str());
    add(&["stopper", "--args", r#""sleeper""#, "--name", "stopper"]);
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "stopper");
    add(&["no_connection", "--name", "nowhere"]);
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "nowhere");
    let child = serde_json::from_str::<serde_json::Value>(
        &app.cli(&["task", "child", "--json"]).ok().stdout,
    )
    .unwrap();
    assert_eq!(child[0]["queue"].as_str(), placed, "{child}");
    let plugins = app.cli(&["plugins", "--json"]).ok();
    let listed: serde_json::Value = serde_json::from_str(&plugins.stdout).unwrap();
    let old = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "old")
        .unwrap();
    assert_eq!(old["wit"], version, "{listed}");
    let run = host.stop();
    assert_eq!(
        run.results_of("observer"),
        vec![json!({"get": waiting_as, "listed": waiting_as, "factory": "hello"})],
        "{}",
        run.dump()
    );
    assert_eq!(
        run.results_of("child"),
        vec![json!({"app": "old-and-new", "who": "world", "attempt": 1})]
    );
    assert_eq!(
        run.results_of("stopper"),
        vec![json!({"state": "cancelled"})]
    );
    let nowhere = run.results_of("nowhere");
    assert!(
        nowhere[0].as_str().is_some_and(|e| e.contains("NotFound")),
        "{nowhere:?}"
    );
}
