//! Issue 8: the CLI's output may go to a reader that stops early
//! (`taskhost check app.toml | head -3`): that ends the verb quietly, with
//! status 0, never with a panic.

use std::process::{Command, Stdio};
use taskhost_tests::{TestApp, taskhost_bin};

/// Runs `taskhost ARGS` with its stdout a pipe whose reader is gone before
/// anything is written (every write fails with EPIPE, whatever the
/// timing); returns its exit code and stderr.
fn into_closed_pipe(app: &TestApp, args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(taskhost_bin())
        .args(args)
        .env("TASKHOST_CONTROL_FILE", app.control_file())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn verbs_printing_into_a_closed_pipe_end_quietly() {
    let app = TestApp::new(
        r#"
        name = "piped"
        [plugins.examples]
        path = "{examples}"
        "#,
    );
    let path = app.path();
    let (code, stderr) = into_closed_pipe(
        &app,
        &["check", "--no-compile-cache", path.to_str().unwrap()],
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(0), "{stderr}");

    let host = app.spawn();
    let (code, stderr) = into_closed_pipe(&app, &["tasks"]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
    drop(host);
}
