//! What only the JavaScript SDK has: factories that are plain functions of
//! a default-exported object. What JavaScript and Python both do is tested
//! once per language in `guests.rs`.

use super::guests::JS;
use serde_json::json;

/// Plain functions of a default-exported object are factories too (what
/// both languages do is tested once per language in `guests.rs`).
#[test]
fn plain_functions_of_a_default_export_are_factories() {
    let results = results_of("plain_echo", "{ anything = [1, 2] }");
    assert_eq!(results[0], json!({"anything": [1, 2]}));
}

/// The SDK warms componentize-js's export glue while the plugin is
/// snapshotted, in the glue's own global (a third of a trivial task's time
/// went to making that global's standard classes in every instance). A
/// componentize-js release that moves the glue makes this fail, where the
/// only other sign would be the speed bench.
#[test]
fn the_export_glue_is_warmed_in_the_snapshot() {
    assert_eq!(results_of("glue_warmed", "{}"), vec![json!(true); 2]);
}

/// The results of a task of `factory` with `args`, one per worker, once
/// the app has run until idle (and exited 0).
fn results_of(factory: &str, args: &str) -> Vec<serde_json::Value> {
    let run = JS.app("", &JS.task(factory, "t", args)).run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    run.results_of("t")
}
