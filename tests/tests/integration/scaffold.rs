//! `taskhost new`: a project in each language that checks and runs at
//! once, and what it refuses.

use taskhost_tests::{Run, taskhost_bin};

fn taskhost(dir: &std::path::Path, args: &[&str]) -> Run {
    let out = std::process::Command::new(taskhost_bin())
        .args(args)
        .current_dir(dir)
        .env("TASKHOST_CONTROL_FILE", dir.join("control.json"))
        .output()
        .expect("taskhost runs");
    Run::from(out)
}

#[test]
fn a_new_project_in_each_language_checks_and_runs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for language in ["rust", "python", "js"] {
        let name = format!("hello-{language}");
        let made = taskhost(dir.path(), &["new", language, &name]);
        assert_eq!(made.code, Some(0), "{}", made.dump());
        let project = dir.path().join(&name);
        assert_eq!(made.stdout.trim(), name);
        assert!(
            made.stderr.contains("taskhost dev app.toml"),
            "{}",
            made.dump()
        );
        let check = taskhost(&project, &["check", "app.toml"]);
        assert_eq!(check.code, Some(0), "{language}: {}", check.dump());
        let run = taskhost(
            &project,
            &["run", "--until-idle", "--log-format", "json", "app.toml"],
        );
        assert_eq!(run.code, Some(0), "{language}: {}", run.dump());
        assert_eq!(
            run.results_of("hello"),
            vec![serde_json::json!(format!("hello, {name}!"))],
            "{language}: {}",
            run.dump()
        );
    }
}

#[test]
fn new_refuses_a_bad_name_and_a_directory_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let bad = taskhost(dir.path(), &["new", "python", "Hello World"]);
    assert_eq!(bad.code, Some(2), "{}", bad.dump());
    assert!(
        bad.stderr.contains("\"Hello World\" cannot name a project"),
        "{}",
        bad.dump()
    );
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    std::fs::write(dir.path().join("taken/notes.txt"), "mine").unwrap();
    let taken = taskhost(dir.path(), &["new", "js", "taken"]);
    assert_eq!(taken.code, Some(2), "{}", taken.dump());
    assert!(
        taken.stderr.contains("exists and is not empty"),
        "{}",
        taken.dump()
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("taken/notes.txt")).unwrap(),
        "mine"
    );
    let unknown = taskhost(dir.path(), &["new", "cobol", "x"]);
    assert_eq!(unknown.code, Some(2), "{}", unknown.dump());
    assert!(
        unknown.stderr.contains("possible values: rust, python, js"),
        "{}",
        unknown.dump()
    );
}
