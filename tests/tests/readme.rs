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
