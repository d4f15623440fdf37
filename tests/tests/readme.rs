//! The README's plugin-writing example is real: it is `plugins/greeter`, and
//! it builds and runs as the README says.

use serde_json::json;
use taskhost_tests::{TestApp, repo};

#[test]
fn the_readme_plugin_example_is_plugins_greeter() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("`src/lib.rs`:\n\n```rust\n")
        .expect("README has the example");
    let code = &readme[start..];
    let code = &code[code.find("```rust\n").unwrap() + 8..];
    let code = &code[..code.find("```").unwrap()];
    let plugin = std::fs::read_to_string(repo().join("plugins/greeter/src/lib.rs")).unwrap();
    assert_eq!(
        code, plugin,
        "README example and plugins/greeter/src/lib.rs differ"
    );
}

#[test]
fn the_readme_plugin_example_runs() {
    let app = TestApp::new(
        r#"
        name = "readme"
        [plugins.greeter]
        path = "{greeter}"
        [config]
        greeting = "ahoy"
        [[tasks]]
        plugin = "greeter"
        factory = "add"
        name = "sum"
        args = { a = 2, b = 3 }
        [[tasks]]
        plugin = "greeter"
        factory = "notify_started"
        args = { delay_ms = 1 }
        "#,
    );
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(run.event_of("done", "sum")[0]["result"], json!("5"));
    assert_eq!(
        run.messages("ahoy from readme on worker Some(0)").len(),
        1,
        "{}",
        run.dump()
    );
}

/// The control API's page, "A task is `{...}`", lists exactly the fields
/// of the one type the API, the CLI and the guests' `task-info` share.
#[test]
fn the_documented_task_record_is_task_view() {
    let readme = std::fs::read_to_string(repo().join("docs/control.md")).unwrap();
    let start = readme
        .find("A task is `{")
        .expect("README describes a task")
        + 12;
    let listed: Vec<String> = readme[start..start + readme[start..].find('}').unwrap()]
        .split(',')
        .map(|field| field.trim().to_string())
        .collect();
    let view = taskhost::task::TaskView {
        id: 1,
        name: None,
        worker: taskhost::task::WorkerId::Main,
        plugin: String::new(),
        plugin_version: String::new(),
        factory: String::new(),
        state: taskhost::task::TaskState::Pending,
        created_at_ms: 0,
        started_at_ms: None,
        ended_at_ms: None,
        result: None,
        error: None,
        cancel_stage: None,
        attempt: 1,
        durable: false,
    };
    let fields: Vec<String> = serde_json::to_value(&view)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, fields, "docs/control.md lists {listed:?}");
}
