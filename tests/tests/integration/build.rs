//! `taskhost build` on both toolchains. The Debian path is what a machine
//! without rustup's wasm targets uses, so it is tested explicitly even where
//! rustup has them.

use std::process::Command;
use taskhost::plugin::build::{self, BuildOptions, BuildOutput, Toolchain};
use taskhost_tests::{TestApp, repo, taskhost_bin};

fn build_with(toolchain: Toolchain) -> std::path::PathBuf {
    let out = tempfile::Builder::new()
        .suffix(".wasm")
        .tempfile()
        .unwrap()
        .into_temp_path()
        .keep()
        .unwrap();
    let options = BuildOptions {
        toolchain: Some(toolchain),
        out: Some(out.clone()),
        output: BuildOutput::Capture,
        ..BuildOptions::default()
    };
    build::build(&repo().join("plugins/examples"), &options)
        .unwrap_or_else(|e| panic!("build with {toolchain} failed: {e:#}"))
}

fn assert_component_runs(component: &std::path::Path) {
    let app = TestApp::new(&format!(
        r#"
        name = "built"
        [plugins.examples]
        path = "{}"
        [[tasks]]
        plugin = "examples"
        factory = "auto_inject"
        "#,
        component.display()
    ));
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(run.messages("built").len(), 1, "{}", run.dump());
}

#[test]
fn the_debian_toolchain_builds_a_component_that_runs() {
    let component = build_with(Toolchain::Debian);
    assert_component_runs(&component);
    std::fs::remove_file(component).ok();
}

#[test]
fn the_detected_toolchain_builds_from_the_cli_and_prints_the_path() {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("examples.wasm");
    let output = Command::new(taskhost_bin())
        .args(["build", "--out"])
        .arg(&target)
        .arg(repo().join("plugins/examples"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        target.display().to_string()
    );
    assert_component_runs(&target);
}

#[test]
fn building_a_directory_without_a_crate_says_so() {
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(taskhost_bin())
        .arg("build")
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "is not a plugin: it has no Cargo.toml (a Rust plugin), pyproject.toml (a Python \
             plugin) or package.json (a JavaScript plugin)"
        ),
        "{stderr}"
    );
}

#[test]
fn a_package_json_without_a_taskhost_entry_says_what_to_add() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("package.json"), r#"{"name": "p"}"#).unwrap();
    let output = Command::new(taskhost_bin())
        .arg("build")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("package.json has no \"taskhost\" entry")
            && stderr.contains(r#""taskhost": { "main": "app.js" }"#),
        "{stderr}"
    );
}

#[test]
fn a_js_plugin_without_node_names_the_command_and_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("package.json"),
        r#"{"name": "p", "taskhost": {"main": "app.js"}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("app.js"), "export {};\n").unwrap();
    let output = Command::new(taskhost_bin())
        .arg("build")
        .arg(dir.path())
        .env("XDG_CACHE_HOME", cache.path())
        .env("TASKHOST_NODE", "/nonexistent/node")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "cannot run `/nonexistent/node` (set TASKHOST_NODE to use another, or install Node.js"
        ),
        "{stderr}"
    );
    // Nothing half-installed is taken for an install next time.
    let tools = cache.path().join("taskhost/js");
    assert!(
        !std::fs::read_dir(&tools)
            .unwrap()
            .flatten()
            .any(|e| e.path().join(".installed").exists()),
        "{}",
        tools.display()
    );
}

#[test]
fn a_pyproject_without_a_taskhost_table_says_what_to_add() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pyproject.toml"),
        "[project]\nname = \"p\"\n",
    )
    .unwrap();
    let output = Command::new(taskhost_bin())
        .arg("build")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("has no [tool.taskhost] table") && stderr.contains("module = \"app\""),
        "{stderr}"
    );
}

#[test]
fn detection_falls_back_to_debian_when_rustup_has_no_wasm_target() {
    // A toolchain name rustup does not know makes `rustc` unusable for the
    // rustup path, as on a machine where the wasm target cannot be fetched.
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("examples.wasm");
    let output = Command::new(taskhost_bin())
        .env("RUSTUP_TOOLCHAIN", "taskhost-test-no-such-toolchain")
        .env_remove(build::TOOLCHAIN_ENV)
        .args(["build", "--out"])
        .arg(&target)
        .arg(repo().join("plugins/examples"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("with Debian rustc-web"), "{stderr}");
    assert_component_runs(&target);
}
