//! `taskhost run --watch`: editing a plugin's source leads, without a
//! restart, to new tasks running the new code, and running tasks of a
//! plugin with `on_load = "restart"` moving to it.

use std::process::{Command, Stdio};
use taskhost_tests::{Running, TestApp, repo, taskhost_bin};

/// A standalone plugin crate whose `report` factory logs `running <tag>`,
/// whose `resident` logs `resident on <tag>` and runs until cancelled, and
/// whose `pause` logs `pausing` and returns after 5 s.
fn write_crate(dir: &std::path::Path, tag: &str) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"watched\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
             [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\n\
             taskhost-guest-sdk = {{ path = {:?} }}\n\n[workspace]\n\n\
             # The plugins workspace's profile, so the shared target dir's\n\
             # dependency builds are reused.\n\
             [profile.release]\nopt-level = \"s\"\nlto = true\ncodegen-units = 1\n\
             debug = false\nstrip = \"debuginfo\"\n",
            repo().join("guest-sdk").display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("src/lib.rs"),
        format!(
            "use taskhost_guest_sdk::{{App, Result, plugin}};\n\n\
             plugin! {{\n    /// Says which source it was built from.\n    \
             fn report(app: &App) -> Result<()> {{\n        \
             app.info(\"running {tag}\");\n        Ok(())\n    }}\n\n    \
             /// Runs until cancelled.\n    \
             fn resident(app: &App) -> Result<()> {{\n        \
             app.info(\"resident on {tag}\");\n        \
             loop {{\n            app.sleep(60_000)?;\n        }}\n    }}\n\n    \
             /// Returns after 5 s.\n    \
             fn pause(app: &App) -> Result<()> {{\n        \
             app.info(\"pausing\");\n        app.sleep(5_000)?;\n        Ok(())\n    }}\n}}\n"
        ),
    )
    .unwrap();
}

#[test]
fn editing_a_plugins_source_reloads_it_without_a_restart() {
    let app = TestApp::new(
        r#"
        name = "watched"
        [plugins.watched]
        build = "watched"
        on_load = "restart"
        [[tasks]]
        plugin = "watched"
        factory = "resident"
        name = "resident"
        "#,
    );
    let crate_dir = app.dir.path().join("watched");
    write_crate(&crate_dir, "first");
    let mut host = app.spawn_with(&["--watch"]);
    host.wait_for(1, |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("watching 1 plugin"))
    });
    assert_eq!(app.cli(&["add", "watched", "report"]).code, Some(0));
    host.wait_for(1, |l| l["message"] == "running first");
    host.wait_for(1, |l| l["message"] == "resident on first");

    write_crate(&crate_dir, "second");
    host.wait_for(1, |l| {
        l["event"] == "plugin_loaded" && l["plugin"] == "watched"
    });
    assert_eq!(app.cli(&["add", "watched", "report"]).code, Some(0));
    host.wait_for(1, |l| l["message"] == "running second");
    // The running task moved to the new build (the plugin's `on_load`).
    host.wait_for(1, |l| l["event"] == "reloaded" && l["task"] == "resident");
    host.wait_for(1, |l| l["message"] == "resident on second");

    // A source that does not compile is refused, in the log and on the
    // event stream; the last good build serves.
    let mut events = Running::new(
        Command::new(taskhost_bin())
            .args(["events", "--json"])
            .env("TASKHOST_CONTROL_FILE", app.control_file())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("taskhost events runs"),
    );
    events.wait_for(1, |e| e["event"] == "subscribed");
    std::fs::write(crate_dir.join("src/lib.rs"), "this is not rust").unwrap();
    host.wait_for(1, |l| {
        l["event"] == "plugin_refused" && l["plugin"] == "watched"
    });
    events.wait_for(1, |e| {
        e["event"] == "plugin_refused"
            && e["plugin"] == "watched"
            && e["error"]
                .as_str()
                .is_some_and(|m| m.contains("rebuilding failed"))
    });
    assert_eq!(app.cli(&["add", "watched", "report"]).code, Some(0));
    host.wait_for(2, |l| l["message"] == "running second");

    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    // Moved once (the refused source moved nothing), ended once.
    assert_eq!(
        run.event_of("reloaded", "resident").len(),
        1,
        "{}",
        run.dump()
    );
    assert_eq!(
        run.event_of("cancelled", "resident").len(),
        1,
        "{}",
        run.dump()
    );
}

/// A source edited while the app starts (after its build read it, before
/// the watch began: here, while a `main` task holds the workers back) is
/// rebuilt once the watch begins. Before the fix the edit was missed until
/// the next one: `python::dev_restarts_...` failed that way in CI, its v2
/// written 6 ms before the watch began.
#[test]
fn a_source_edited_while_the_app_starts_is_rebuilt_once_the_watch_begins() {
    let app = TestApp::new(
        r#"
        name = "watched"
        [plugins.watched]
        build = "watched"
        [[tasks]]
        plugin = "watched"
        factory = "pause"
        name = "pause"
        scope = "main"
        "#,
    );
    let crate_dir = app.dir.path().join("watched");
    write_crate(&crate_dir, "first");
    let mut host = app.spawn_with(&["--watch"]);
    // Built first: the first build of the crate may take a while.
    let build = std::time::Duration::from_secs(240);
    host.wait_for_within(1, |l| l["message"] == "pausing", build);
    write_crate(&crate_dir, "second");
    let edited: chrono::DateTime<chrono::Utc> = std::fs::metadata(crate_dir.join("src/lib.rs"))
        .and_then(|meta| meta.modified())
        .expect("the edit's mtime")
        .into();
    let watching = |l: &serde_json::Value| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("watching 1 plugin"))
    };
    host.wait_for(1, watching);
    // The case under test: the edit came before the watch began (a later
    // one is seen by the watcher itself, fix or no fix).
    let began = host
        .seen()
        .iter()
        .find(|l| watching(l))
        .and_then(|l| l["timestamp"].as_str())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .expect("the watch's timestamp");
    assert!(
        edited < began,
        "the edit ({edited}) came after the watch began ({began}): the 5 s pause was too short"
    );
    host.wait_for_within(
        1,
        |l| l["event"] == "plugin_loaded" && l["plugin"] == "watched",
        build,
    );
    assert_eq!(app.cli(&["add", "watched", "report"]).code, Some(0));
    host.wait_for(1, |l| l["message"] == "running second");
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.code, Some(0), "{}", run.dump());
}
