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

/// Issue 28, item 5: a Python or JavaScript plugin that does not build is
/// reported at the user's file and line, with the message and the code,
/// and none of the tools' frames unless `--verbose` asks for them.
#[test]
fn build_errors_point_at_the_users_code() {
    let dir = tempfile::tempdir().unwrap();
    for (language, file, source, expected) in [
        (
            "python",
            "app.py",
            "from taskhost import App, task\n\n\n@task\ndef hello(app: App) -> int:\n    return 1 +\n",
            "plugin/app.py:6: SyntaxError: invalid syntax\n    return 1 +",
        ),
        (
            "python",
            "app.py",
            "from taskhost import App, task\n\nSETTINGS = {}[\"missing\"]\n",
            "plugin/app.py:3: KeyError: 'missing'\n    SETTINGS = {}[\"missing\"]",
        ),
        (
            "js",
            "app.js",
            "import { task } from 'taskhost';\nexport const hello = task((app) => { return 1 +; });\n",
            "plugin/app.js:2:47: Unexpected \";\"\n      2 │ export const hello",
        ),
        (
            "js",
            "app.js",
            "import { task } from 'taskhost';\n\nundefinedThing();\nexport const hello = task((app) => 1);\n",
            "plugin/app.js:3: ReferenceError: undefinedThing is not defined",
        ),
    ] {
        let name = format!("broken-{language}");
        let project = dir.path().join(&name);
        if !project.exists() {
            let made = taskhost(dir.path(), &["new", language, &name]);
            assert_eq!(made.code, Some(0), "{}", made.dump());
        }
        std::fs::write(project.join("plugin").join(file), source).unwrap();
        let check = taskhost(&project, &["check", "app.toml"]);
        assert_eq!(check.code, Some(2), "{}", check.dump());
        assert!(
            check.stderr.contains(expected),
            "{expected}\n{}",
            check.dump()
        );
        for noise in ["Traceback", "node_modules", "componentize.js", "/0/", "/2/"] {
            assert!(
                !check.stderr.contains(noise),
                "{noise} shown:\n{}",
                check.dump()
            );
        }
        let verbose = taskhost(&project, &["check", "--verbose", "app.toml"]);
        assert_eq!(verbose.code, Some(2), "{}", verbose.dump());
        let tool_output = if language == "python" {
            "Traceback"
        } else {
            "Node.js"
        };
        assert!(verbose.stderr.contains(tool_output), "{}", verbose.dump());
    }
}
