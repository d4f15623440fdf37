//! What a hot-load request may read. A FIFO as the path stalled
//! the whole control API (and SIGTERM) until someone opened it, and
//! `/dev/zero` was read until the host ran out of memory. Each is now
//! refused at once, with the reason, while other clients are served.

use std::process::Command;
use taskhost_tests::{Run, TestApp, taskhost_bin};

/// `taskhost ARGS` against `app`'s host, killed after 30 s so a stalled
/// host fails the test instead of hanging it.
fn cli_within(app: &TestApp, args: &[&str]) -> Run {
    Run::from(
        Command::new("timeout")
            .arg("30")
            .arg(taskhost_bin())
            .args(args)
            .env("TASKHOST_CONTROL_FILE", app.control_file())
            .output()
            .expect("taskhost runs"),
    )
}

#[test]
fn fifos_devices_directories_and_huge_files_are_refused_at_once() {
    let app = TestApp::new(
        r#"
        name = "loads"
        [plugins.examples]
        path = "{examples}"
        "#,
    );
    let host = app.spawn();
    let dir = app.dir.path();
    let fifo = dir.join("fifo.wasm");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let huge = dir.join("huge.wasm");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len((256 << 20) + 1)
        .unwrap();
    let cases = [
        (fifo.clone(), "a FIFO, not a regular file"),
        ("/dev/zero".into(), "a character device, not a regular file"),
        (dir.to_path_buf(), "a directory, not a regular file"),
        (huge, "more than a component may be"),
    ];
    let loads: Vec<_> = cases
        .iter()
        .map(|(path, _)| {
            let path = path.to_str().unwrap().to_string();
            let control = app.control_file();
            std::thread::spawn(move || {
                Run::from(
                    Command::new("timeout")
                        .arg("30")
                        .arg(taskhost_bin())
                        .args(["load", "examples", &path])
                        .env("TASKHOST_CONTROL_FILE", control)
                        .output()
                        .expect("taskhost runs"),
                )
            })
        })
        .collect();
    // Another client is served meanwhile.
    let listed = cli_within(&app, &["tasks"]);
    assert_eq!(listed.code, Some(0), "{}", listed.dump());
    for (load, (path, reason)) in loads.into_iter().zip(&cases) {
        let load = load.join().unwrap();
        assert_eq!(load.code, Some(1), "{}: {}", path.display(), load.dump());
        assert!(
            load.stderr.contains(reason),
            "{}: {}",
            path.display(),
            load.dump()
        );
    }
    // Names are bounded like every other name.
    let long = "p".repeat(300);
    let named = cli_within(
        &app,
        &[
            "load",
            &long,
            taskhost_tests::plugin("examples").to_str().unwrap(),
        ],
    );
    assert_eq!(named.code, Some(1), "{}", named.dump());
    assert!(
        named.stderr.contains("at most 256 bytes"),
        "{}",
        named.dump()
    );
    // A missing file is "not found" (exit 3, HTTP 404), not "refused".
    let missing = dir.join("missing.wasm");
    let gone = cli_within(&app, &["load", "examples", missing.to_str().unwrap()]);
    assert_eq!(gone.code, Some(3), "{}", gone.dump());
    assert!(gone.stderr.contains("missing.wasm"), "{}", gone.dump());
    // The original plugin still serves.
    let plugins = cli_within(&app, &["plugins", "--json"]);
    assert!(
        plugins.stdout.contains("\"examples\""),
        "{}",
        plugins.dump()
    );
    drop(host);
}
