//! WASI is deny-by-default; app.toml grants a plugin directories
//! (read-only or read-write), named environment variables and stdin, and
//! nothing else.

use serde_json::{Value, json};
use taskhost_tests::TestApp;

#[test]
fn a_plugin_reaches_exactly_what_it_was_granted() {
    let app = TestApp::new(
        r#"
        name = "grants"
        [plugins.reader]
        path = "{testkit}"
        [plugins.reader.grants]
        dirs = [{ host = "data", guest = "/data" }]
        env = ["HOME"]
        [plugins.writer]
        path = "{testkit}"
        [plugins.writer.grants]
        dirs = [{ host = "data", guest = "/data", write = true }]
        [plugins.bare]
        path = "{testkit}"
        [[tasks]]
        plugin = "reader"
        factory = "wasi_probe"
        name = "reader"
        args = { read = "/data/in.txt", write = "/data/from-reader.txt", env = ["HOME", "PATH"] }
        [[tasks]]
        plugin = "writer"
        factory = "wasi_probe"
        name = "writer"
        args = { read = "/data/in.txt", write = "/data/from-writer.txt", env = ["HOME"] }
        [[tasks]]
        plugin = "bare"
        factory = "wasi_probe"
        name = "bare"
        args = { read = "/data/in.txt", env = ["HOME"] }
        "#,
    );
    let data = app.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("in.txt"), "granted").unwrap();
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    let report = |task: &str| -> Value { run.results_of(task).remove(0) };

    let reader = report("reader");
    assert_eq!(reader["read"], json!({"ok": "granted"}), "{reader}");
    assert!(reader["write"]["error"].is_string(), "read-only: {reader}");
    assert_eq!(
        reader["env"],
        json!({"HOME": std::env::var("HOME").unwrap(), "PATH": null}),
        "only the named variable: {reader}"
    );
    assert!(!data.join("from-reader.txt").exists());

    let writer = report("writer");
    assert_eq!(writer["write"], json!({"ok": null}), "{writer}");
    assert_eq!(
        std::fs::read_to_string(data.join("from-writer.txt")).unwrap(),
        "written by a task"
    );
    assert_eq!(writer["env"], json!({"HOME": null}), "{writer}");

    let bare = report("bare");
    assert!(bare["read"]["error"].is_string(), "no grants: {bare}");
    assert_eq!(bare["env"], json!({"HOME": null}), "{bare}");
}

#[test]
fn grants_are_checked_in_app_toml() {
    let app = TestApp::new(
        r#"
        name = "grants"
        [plugins.kit]
        path = "{testkit}"
        [plugins.kit.grants]
        dirs = [{ host = "missing", guest = "/data" }]
        "#,
    );
    let run = app.check();
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(
        run.stderr
            .contains("[plugins.kit.grants] dirs[0]: host directory")
            && run.stderr.contains("missing does not exist"),
        "{}",
        run.dump()
    );
}
