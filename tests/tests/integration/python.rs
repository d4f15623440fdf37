//! What only the Python SDK has: `plugins/py-examples` posting with
//! `app.fetch`, a plugin edited while it runs, and the build cache. What
//! Python and JavaScript both do is tested once per language in
//! `guests.rs`.

use super::guests::PYTHON;
use serde_json::{Value, json};
use taskhost_tests::{Run, TestApp, hello_server};

/// `app.fetch` with a body POSTs it as JSON (what `guests.rs` runs in both
/// languages is there; JavaScript's `fetch_text` only GETs).
#[test]
fn python_fetch_posts_a_body_as_json() {
    let address = hello_server();
    let run = PYTHON
        .app(
            &format!("[plugins.py.grants]\nhttp = [\"http://{address}\"]"),
            &PYTHON.task(
                "fetch_text",
                "post",
                &format!(r#"{{ url = "http://{address}/echo", body = {{ n = 1 }} }}"#),
            ),
        )
        .run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(
        run.results_of("post")[0],
        json!({"status": 200, "body": "{\"n\": 1}"}),
        "{}",
        run.dump()
    );
}

/// A Python plugin whose `linger` waits for `finish` and says which build
/// it ran on, and whose `report` says which build runs it.
fn write_python_plugin(dir: &std::path::Path, tag: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("pyproject.toml"),
        "[project]\nname = \"live\"\nversion = \"0.1.0\"\n\n[tool.taskhost]\nmodule = \"app\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("app.py"),
        format!(
            "from taskhost import App, task\n\n\n\
             @task\ndef linger(app: App) -> None:\n    \
             app.info(\"lingering on {tag}\")\n    \
             app.wait_event(\"finish\")\n    \
             app.info(\"finished on {tag}\")\n\n\n\
             @task\ndef report(app: App) -> None:\n    \
             app.info(\"running {tag}\")\n"
        ),
    )
    .unwrap();
}

fn json_of(run: &Run) -> Value {
    assert_eq!(run.code, Some(0), "{}", run.dump());
    serde_json::from_str(run.stdout.trim()).unwrap()
}

#[test]
fn editing_a_python_plugin_hot_loads_it_while_old_tasks_drain_on_the_old_build() {
    let app = TestApp::new(
        r#"
        name = "pywatch"
        [plugins.live]
        build = "live"
        [[tasks]]
        plugin = "live"
        factory = "linger"
        name = "linger"
        "#,
    );
    let dir = app.dir.path().join("live");
    write_python_plugin(&dir, "v1");
    let mut host = app.spawn_with(&["--watch"]);
    // The host first builds the plugin and compiles its 20 MB component:
    // on a busy 2-core machine that passed the usual 60 s (a CI run).
    host.wait_for_within(
        1,
        |l| l["message"] == "lingering on v1",
        std::time::Duration::from_secs(240),
    );
    let before = json_of(&app.cli(&["plugins", "--json"]));
    let v1 = before[0]["version"].as_str().unwrap().to_string();
    // The interpreter's snapshot is mapped copy-on-write, not copied.
    assert_eq!(before[0]["memory_image"], "copy_on_write", "{before}");
    assert!(
        before[0]["data_bytes"].as_u64().unwrap() > 1 << 20,
        "{before}"
    );

    write_python_plugin(&dir, "v2");
    host.wait_for_within(
        1,
        |l| l["event"] == "plugin_loaded" && l["plugin"] == "live",
        std::time::Duration::from_secs(240),
    );
    let after = json_of(&app.cli(&["plugins", "--json"]));
    let builds: Vec<(String, u64)> = after
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["state"].as_str().unwrap().to_string(),
                b["live_tasks"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        builds,
        [("serving".to_string(), 0), ("draining".to_string(), 1)],
        "{after}"
    );
    assert_eq!(after[1]["version"], v1.as_str(), "{after}");

    // New tasks run the new build; the old task ends on the old one, and
    // the old build goes.
    assert_eq!(app.cli(&["add", "live", "report"]).code, Some(0));
    host.wait_for(1, |l| l["message"] == "running v2");
    let finished = app.cli(&["dispatch", "finish", "", "--wait-for", "1"]);
    assert_eq!(finished.code, Some(0), "{}", finished.dump());
    host.wait_for(1, |l| l["message"] == "finished on v1");
    host.wait_for(1, |l| {
        l["event"] == "plugin_dropped" && l["version"] == v1.as_str()
    });
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}

/// Issue 24, item 9: componentize-py makes new bytes on every build, so
/// with `build = "..."` every `check` and `run` rebuilt and compiled the
/// plugin again (1 min 37 s to the first task). A build whose inputs did
/// not change now keeps the component it made: the same bytes, found in
/// the compile cache.
#[test]
fn an_unchanged_python_plugin_is_not_built_or_compiled_again() {
    let app = TestApp::new(
        r#"
        name = "pysame"
        [plugins.live]
        build = "live"
        "#,
    );
    let dir = app.dir.path().join("live");
    write_python_plugin(&dir, "v1");
    let first = app.check();
    assert_eq!(first.code, Some(0), "{}", first.dump());
    let component = dir.join("live.wasm");
    let bytes = std::fs::read(&component).unwrap();
    let second = app.check();
    assert_eq!(second.code, Some(0), "{}", second.dump());
    assert!(second.stderr.contains("is up to date"), "{}", second.dump());
    assert_eq!(
        std::fs::read(&component).unwrap(),
        bytes,
        "the bytes changed"
    );
    assert!(
        second.stdout.contains(": 1 hit(s), 0 miss(es)"),
        "{}",
        second.dump()
    );
    // A changed source is built again.
    write_python_plugin(&dir, "v2");
    let third = app.check();
    assert_eq!(third.code, Some(0), "{}", third.dump());
    assert!(!third.stderr.contains("is up to date"), "{}", third.dump());
    assert_ne!(std::fs::read(&component).unwrap(), bytes);
}

/// A dependency with no pure-Python wheel fails the build naming the
/// pyproject.toml and why, before componentize-py runs.
#[test]
fn a_native_only_dependency_fails_the_build_saying_why() {
    let app = TestApp::new(
        r#"
        name = "pynative"
        [plugins.live]
        build = "live"
        "#,
    );
    let dir = app.dir.path().join("live");
    write_python_plugin(&dir, "v1");
    std::fs::write(
        dir.join("pyproject.toml"),
        "[project]\nname = \"live\"\nversion = \"0.1.0\"\n\
         dependencies = [\"numpy==2.1.0\"]\n\n[tool.taskhost]\nmodule = \"app\"\n",
    )
    .unwrap();
    let run = app.check();
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(
        run.stderr
            .contains("live/pyproject.toml: [project] dependencies could not be installed")
            && run.stderr.contains("pure-Python packages only"),
        "{}",
        run.dump()
    );
}

/// `taskhost dev`: `run --watch` in which a rebuilt plugin's running tasks
/// restart on the new build (under `run --watch` they drain on the old
/// one, above).
#[test]
fn dev_restarts_a_changed_plugins_running_tasks_on_the_new_build() {
    let app = TestApp::new(
        r#"
        name = "pydev"
        [plugins.live]
        build = "live"
        [[tasks]]
        plugin = "live"
        factory = "linger"
        name = "linger"
        "#,
    );
    let dir = app.dir.path().join("live");
    write_python_plugin(&dir, "v1");
    let mut host = app.spawn_verb("dev", &[], &[]);
    host.wait_for_within(
        1,
        |l| l["message"] == "lingering on v1",
        std::time::Duration::from_secs(240),
    );
    write_python_plugin(&dir, "v2");
    host.wait_for_within(
        1,
        |l| l["event"] == "reloaded" && l["task"] == "linger",
        std::time::Duration::from_secs(240),
    );
    host.wait_for(1, |l| l["message"] == "lingering on v2");
    let finished = app.cli(&["dispatch", "finish", "", "--wait-for", "1"]);
    assert_eq!(finished.code, Some(0), "{}", finished.dump());
    host.wait_for(1, |l| l["message"] == "finished on v2");
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert!(
        run.messages("finished on v1").is_empty(),
        "the old build's task went on: {}",
        run.dump()
    );
}
