//! Issue 28, item 4: the three SDKs package as their ecosystems expect,
//! each versioned with the WIT it binds, and each with its types.

use std::process::Command;
use taskhost_tests::repo;

/// The version of the `taskhost:plugin` package in wit/plugin.wit.
fn wit_version() -> String {
    let wit = std::fs::read_to_string(repo().join("wit/plugin.wit")).unwrap();
    let line = wit
        .lines()
        .find_map(|l| l.trim().strip_prefix("package taskhost:plugin@"))
        .expect("plugin.wit names its package");
    line.trim_end_matches(';').to_string()
}

fn output(command: &mut Command) -> String {
    let out = command.output().expect("the tool runs");
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_rust_sdk_packages_with_its_wit_at_the_wits_version() {
    let version = wit_version();
    let manifest = std::fs::read_to_string(repo().join("guest-sdk/Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&format!("version = \"{version}\"")),
        "guest-sdk/Cargo.toml is not at the WIT's version {version}"
    );
    let files = output(
        Command::new("cargo")
            .args([
                "package",
                "-p",
                "taskhost-guest-sdk",
                "--list",
                "--allow-dirty",
            ])
            .current_dir(repo()),
    );
    for wanted in [
        "src/lib.rs",
        "wit/plugin.wit",
        "wit/deps/keyvalue/store.wit",
        "README.md",
    ] {
        assert!(
            files.lines().any(|l| l == wanted),
            "{wanted} missing:\n{files}"
        );
    }
    assert!(!files.contains("wit/compat/"), "{files}");
}

#[test]
fn the_python_sdk_installs_with_pip_and_carries_its_types() {
    let version = wit_version();
    let venv = tempfile::tempdir().unwrap();
    // A copy: setuptools leaves build/ and egg-info/ where it builds.
    let source = venv.path().join("source");
    output(
        Command::new("cp")
            .arg("-r")
            .arg(repo().join("guest-sdk/python"))
            .arg(&source),
    );
    output(
        Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv.path().join("env")),
    );
    let pip = venv.path().join("env/bin/pip");
    output(
        Command::new(&pip)
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(&source),
    );
    let shown = output(Command::new(&pip).args(["show", "--files", "taskhost"]));
    assert!(shown.contains(&format!("Version: {version}")), "{shown}");
    assert!(shown.contains("taskhost/py.typed"), "{shown}");
    assert!(shown.contains("taskhost/__init__.py"), "{shown}");
}

#[test]
fn the_javascript_sdk_packs_with_its_types_at_the_wits_version() {
    let version = wit_version();
    let packed = output(
        Command::new("npm")
            .args(["pack", "--dry-run", "--json"])
            .current_dir(repo().join("guest-sdk/js")),
    );
    let packed: serde_json::Value = serde_json::from_str(&packed).unwrap();
    assert_eq!(packed[0]["version"], version.as_str(), "{packed}");
    let files: Vec<&str> = packed[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for wanted in ["index.js", "index.d.ts", "package.json", "README.md"] {
        assert!(files.contains(&wanted), "{wanted} missing: {files:?}");
    }
}
