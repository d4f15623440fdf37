//! The control state file holds the token. Files planted where
//! the host writes it must not make it leak the token or overwrite
//! anything, and a stale file must not keep a host from starting.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use taskhost::control::ControlState;
use taskhost_tests::{Running, TestApp, taskhost_bin};

const APP: &str = r#"
    name = "guarded"
    [plugins.examples]
    path = "{examples}"
"#;

/// Starts the host from a shell that first plants `what` at the work-file
/// name the host used to write (`.control.<pid>.tmp`: `exec` keeps the
/// shell's pid), then waits until it serves.
fn spawn_after_planting(app: &TestApp, plant: &str) -> Running {
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tmp=\"$2/.control.$$.tmp\"; {plant}; exec \"$0\" run --log-format json \"$1\""
        ))
        .arg(taskhost_bin())
        .arg(app.path())
        .arg(app.dir.path())
        .env("TASKHOST_CONTROL_FILE", app.control_file())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh runs");
    let mut running = Running::new(child);
    running.wait_until_serving();
    running
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_planted_symlink_or_open_file_gets_neither_the_token_nor_a_write() {
    // A symlink to a file the "attacker" wants overwritten.
    let app = TestApp::new(APP);
    let victim = app.file("victim.txt", b"precious");
    let host = spawn_after_planting(&app, &format!("ln -s {} \"$tmp\"", victim.display()));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    ControlState::read(&app.control_file()).expect("the CLI trusts the file");
    assert_eq!(mode(&app.control_file()), 0o600);
    drop(host);

    // A world-readable file the "attacker" keeps open to read the token.
    let app = TestApp::new(APP);
    let host = spawn_after_planting(&app, "touch \"$tmp\"; chmod 666 \"$tmp\"");
    let state_file = app.control_file();
    assert_eq!(mode(&state_file), 0o600, "the token's file is private");
    let token = ControlState::read(&state_file).unwrap().token;
    for entry in std::fs::read_dir(app.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path != state_file && path.is_file() {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(!text.contains(&token), "{} holds the token", path.display());
        }
    }
    drop(host);
}

#[test]
fn a_stale_file_pointing_at_an_unrelated_listener_does_not_block_a_start() {
    let app = TestApp::new(APP);
    // Something else now listens where a crashed host did, and the pid in
    // the file is alive (this test's own).
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stale = ControlState {
        address: squatter.local_addr().unwrap().to_string(),
        token: "from-a-crashed-host".into(),
        read_token: None,
        pid: std::process::id(),
        app: "crashed".into(),
    };
    stale.write(&app.control_file()).unwrap();
    let host = app.spawn();
    let now = ControlState::read(&app.control_file()).unwrap();
    assert_ne!(now.token, stale.token, "the host replaced the stale file");
    let listed = app.cli(&["tasks", "--json"]);
    assert_eq!(listed.code, Some(0), "{}", listed.dump());
    drop(host);
}

#[test]
fn the_cli_does_not_trust_a_control_file_others_can_read() {
    let app = TestApp::new(APP);
    let host = app.spawn();
    let file = app.control_file();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let listed = app.cli(&["tasks"]);
    assert_eq!(listed.code, Some(4), "{}", listed.dump());
    assert!(listed.stderr.contains("not trusting"), "{}", listed.dump());
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    drop(host);
}

#[test]
fn a_directory_others_can_write_is_refused_for_the_control_file() {
    let app = TestApp::new(APP);
    let shared = app.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let file = shared.join("control.json");
    let run = app.run_taskhost(&[
        "run",
        "--until-idle",
        "--control-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert!(
        run.stdout.contains("other users can write there"),
        "{}",
        run.dump()
    );
    assert!(!file.exists());
}
