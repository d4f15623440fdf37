//! Tasks that await tasks: a guest's `join`, `join-all` and `join-any`
//! (WIT 0.4.0), children cancelled with their parent, and the refusals of
//! joins that could never end.

use serde_json::Value;
use taskhost_tests::{Run, Running, TestApp};

const APP: &str = r#"
    name = "joins"
    workers = 1
    cancel_grace_ms = 2000
    [plugins.examples]
    path = "{examples}"
    [plugins.kit]
    path = "{testkit}"
"#;

fn json_of(run: &Run) -> Value {
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.dump()))
}

fn started() -> (TestApp, Running) {
    let app = TestApp::new(APP);
    let mut host = app.spawn();
    host.wait_until_serving();
    (app, host)
}

/// Adds a task of `plugin`/`factory` with `args`, named `name`.
fn add(app: &TestApp, plugin: &str, factory: &str, args: &str, name: &str) {
    app.cli(&["add", plugin, factory, "--args", args, "--name", name])
        .ok();
}

/// What task `name` returned, once it has ended done.
fn result_of(app: &TestApp, name: &str) -> Value {
    let ended = json_of(
        &app.cli(&["wait", name, "--timeout-ms", "120000", "--json"])
            .ok(),
    );
    serde_json::from_str(ended["result"].as_str().unwrap()).unwrap()
}

/// The acceptance case: `fan_out` with n = 100 starts 100 children of
/// `square`, joins them all and returns the sum of the squares; every
/// child ended done, and each lists the fan-out as its parent.
#[test]
fn fan_out_joins_a_hundred_children_and_sums_their_squares() {
    let (app, _host) = started();
    add(&app, "examples", "fan_out", r#"{"n": 100}"#, "fan");
    assert_eq!(result_of(&app, "fan"), 338_350);
    let fan = json_of(&app.cli(&["task", "fan", "--json"]).ok());
    let tasks = json_of(&app.cli(&["tasks", "--json"]).ok());
    let children: Vec<&Value> = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|task| task["factory"] == "square")
        .collect();
    assert_eq!(children.len(), 100, "{tasks}");
    for child in children {
        assert_eq!(child["state"], "done", "{child}");
        assert_eq!(child["parent"], fan[0]["id"], "{child}");
    }
}

/// A parent cancelled while its children run cancels them, cooperatively
/// (each logs its cleanup), and they all end `cancelled`.
#[test]
fn a_parent_cancelled_mid_way_cancels_its_children_cooperatively() {
    let (app, mut host) = started();
    add(
        &app,
        "examples",
        "fan_out",
        r#"{"n": 5, "ms": 600000}"#,
        "fan",
    );
    host.wait_for(5, |l| l["event"] == "started" && l["factory"] == "square");
    let cancelled = json_of(&app.cli(&["cancel", "fan", "--json"]).ok());
    assert_eq!(cancelled[0]["state"], "cancelled", "{cancelled}");
    host.wait_for(5, |l| {
        l["event"] == "cancelled" && l["factory"] == "square" && l["stage"] == "cooperative"
    });
    let tasks = json_of(&app.cli(&["tasks", "--json"]).ok());
    for child in tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|task| task["factory"] == "square")
    {
        assert_eq!(child["state"], "cancelled", "{child}");
        assert_eq!(child["cancel_stage"], "cooperative", "{child}");
    }
    let run = host.stop();
    assert_eq!(
        run.lines
            .iter()
            .filter(|l| l["message"]
                .as_str()
                .is_some_and(|m| m.ends_with(": cancelled")))
            .count(),
        5,
        "every child ran its cleanup\n{}",
        run.dump()
    );
}

/// A join with a timeout returns none once it passes, and the task it
/// waited for goes on; a join of an ended task returns at once with its
/// result; join-any answers the first to end.
#[test]
fn a_join_times_out_with_none_and_the_task_goes_on() {
    let (app, _host) = started();
    add(&app, "kit", "nap", r#"{"ms": 600000}"#, "long");
    add(&app, "kit", "nap", r#"{"ms": 1}"#, "short");
    add(
        &app,
        "kit",
        "join_probe",
        r#"{"mode": "name", "target": "long", "timeout_ms": 100}"#,
        "waits",
    );
    assert_eq!(
        result_of(&app, "waits"),
        serde_json::json!({"timed_out": true})
    );
    let long = json_of(&app.cli(&["task", "long", "--json"]).ok());
    assert_eq!(long[0]["state"], "running", "{long}");

    add(
        &app,
        "kit",
        "join_probe",
        r#"{"mode": "name", "target": "short"}"#,
        "takes",
    );
    let took = result_of(&app, "takes");
    assert_eq!(took["ended"]["state"], "done", "{took}");
    assert_eq!(took["ended"]["result"], "1", "{took}");

    add(
        &app,
        "kit",
        "join_probe",
        r#"{"mode": "any", "target": "long,short"}"#,
        "first",
    );
    let first = result_of(&app, "first");
    assert_eq!(first["index"], 1, "{first}");
    assert_eq!(first["ended"]["name"], "short", "{first}");
}

/// Joins that could never end are refused, naming the task: the caller
/// itself, its own parent; and an unknown task is not found.
#[test]
fn joins_of_oneself_ones_parent_or_no_task_are_refused_naming_it() {
    let (app, _host) = started();
    add(
        &app,
        "kit",
        "join_probe",
        r#"{"mode": "self"}"#,
        "narcissus",
    );
    let own = result_of(&app, "narcissus");
    assert_eq!(own["error"], "InvalidArgs", "{own}");
    assert!(
        own["message"]
            .as_str()
            .unwrap()
            .contains("is the caller itself"),
        "{own}"
    );

    add(&app, "kit", "join_probe", r#"{"mode": "parent"}"#, "elder");
    let up = result_of(&app, "elder");
    assert_eq!(up["error"], "InvalidArgs", "{up}");
    assert!(
        up["message"]
            .as_str()
            .unwrap()
            .contains("started the caller (its parent)"),
        "{up}"
    );

    add(
        &app,
        "kit",
        "join_probe",
        r#"{"mode": "name", "target": "nobody"}"#,
        "seeker",
    );
    let none = result_of(&app, "seeker");
    assert_eq!(none["error"], "NotFound", "{none}");
    assert!(
        none["message"].as_str().unwrap().contains("nobody"),
        "{none}"
    );

    // A task placed on another host, in an app with no cluster.
    add(
        &app,
        "kit",
        "join_probe",
        r#"{"mode": "placed", "target": "b:1"}"#,
        "abroad",
    );
    let abroad = result_of(&app, "abroad");
    assert_eq!(abroad["error"], "Failed", "{abroad}");
    let message = abroad["message"].as_str().unwrap();
    assert!(
        message.contains("task 1 on host b") && message.contains("no [cluster]"),
        "{abroad}"
    );
}
