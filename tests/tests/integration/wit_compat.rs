//! Plugins built against an older `taskhost:plugin` WIT keep loading and
//! running: `plugins/compat010` is bound to the pinned copy of 0.1.0
//! (`wit/compat/0.1.0`), not through the SDK, so it is a real 0.1.0
//! component.

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
        (Some(json!("0.1.0")), Some(json!("0.2.0")))
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
