//! What only the JavaScript SDK has: factories that are plain functions of
//! a default-exported object. What JavaScript and Python both do is tested
//! once per language in `guests.rs`.

use serde_json::json;
use taskhost_tests::TestApp;

fn app(extra: &str, tasks: &str) -> TestApp {
    TestApp::new(&format!(
        r#"
        name = "js"
        workers = 2
        [plugins.js]
        path = "{{js-examples}}"
        {extra}
        [config]
        greeting = "hallo"
        {tasks}
        "#
    ))
}

fn task(factory: &str, name: &str, args: &str) -> String {
    format!(
        "[[tasks]]\nplugin = \"js\"\nfactory = \"{factory}\"\nname = \"{name}\"\nargs = {args}\n"
    )
}

/// Plain functions of a default-exported object are factories too (what
/// both languages do is tested once per language in `guests.rs`).
#[test]
fn plain_functions_of_a_default_export_are_factories() {
    let run = app("", &task("plain_echo", "echo", "{ anything = [1, 2] }")).run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(run.results_of("echo")[0], json!({"anything": [1, 2]}));
}
