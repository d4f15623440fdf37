//! Bad input is refused before anything starts, with an error that names
//! the file, the key or task, and what is wrong.

use taskhost_tests::{Run, TestApp};

/// `check` and `run` must refuse the same way, and start nothing.
fn assert_refused(app: &TestApp, expected: &[&str]) {
    for run in [app.check(), app.run_until_idle()] {
        assert_refused_run(&run, expected);
    }
}

fn assert_refused_run(run: &Run, expected: &[&str]) {
    assert_eq!(run.code, Some(2), "{}", run.dump());
    for text in expected {
        assert!(
            run.stderr.contains(text),
            "expected {text:?} in:\n{}",
            run.dump()
        );
    }
    assert!(
        run.events("started").is_empty(),
        "nothing may start\n{}",
        run.dump()
    );
}

fn app_with_plugin_file(bytes: &[u8]) -> TestApp {
    let app = TestApp::new(
        r#"
        name = "refused"
        [plugins.odd]
        path = "odd.wasm"
        "#,
    );
    app.file("odd.wasm", bytes);
    app
}

#[test]
fn a_core_module_is_refused_as_not_a_component() {
    let core = wat::parse_str("(module (func (export \"run\")))").unwrap();
    let app = app_with_plugin_file(&core);
    assert_refused(
        &app,
        &[
            "app.toml: [plugins.odd]",
            "odd.wasm is a core WebAssembly module, not a component",
            "taskhost build",
        ],
    );
}

#[test]
fn a_file_that_is_not_webassembly_is_refused() {
    let app = app_with_plugin_file(b"#!/bin/sh\necho not wasm\n");
    assert_refused(
        &app,
        &["plugin `odd`", "odd.wasm is not a WebAssembly component"],
    );
}

#[test]
fn a_component_of_another_world_is_refused_naming_what_is_missing() {
    let empty = wat::parse_str("(component)").unwrap();
    let app = app_with_plugin_file(&empty);
    assert_refused(
        &app,
        &[
            "plugin `odd`",
            "odd.wasm does not implement the world `taskhost:plugin/plugin@0.5.0`",
            "taskhost:plugin/factories@0.5.0",
        ],
    );
}

#[test]
fn a_component_with_unknown_imports_is_refused() {
    let importer = wat::parse_str(
        r#"(component (import "acme:rockets/launch" (instance (export "fire" (func)))))"#,
    )
    .unwrap();
    let app = app_with_plugin_file(&importer);
    assert_refused(
        &app,
        &[
            "plugin `odd`",
            "needs an import taskhost does not provide",
            "acme:rockets/launch",
        ],
    );
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let app = TestApp::new(
        r#"name = "typo"
workers = 1
[[tasks]]
plugin = "kit"
factroy = "nap"
"#,
    );
    assert_refused(&app, &["app.toml: ", "line 5", "unknown field `factroy`"]);
}

#[test]
fn an_unknown_on_load_is_named_with_the_values_it_takes() {
    let app = TestApp::new(
        r#"name = "typo"
[plugins.kit]
path = "{testkit}"
on_load = "reload"
"#,
    );
    assert_refused(
        &app,
        &[
            "app.toml: ",
            "line 4",
            "`reload`, expected `drain` or `restart`",
        ],
    );
}

#[test]
fn zero_workers_is_refused() {
    let app = TestApp::new("name = \"none\"\nworkers = 0\n");
    assert_refused(&app, &["app.toml: `workers` must be at least 1 (got 0)"]);
}

#[test]
fn a_missing_plugin_file_is_named() {
    let app = TestApp::new(
        r#"
        name = "missing"
        [plugins.ghost]
        path = "ghost.wasm"
        "#,
    );
    assert_refused(
        &app,
        &[
            "app.toml: [plugins.ghost] path ",
            "ghost.wasm does not exist",
        ],
    );
}

#[test]
fn an_unknown_factory_is_named_with_the_ones_that_exist() {
    let app = TestApp::new(
        r#"
        name = "unknown"
        [plugins.examples]
        path = "{examples}"
        [[tasks]]
        plugin = "examples"
        factory = "fast_work"
        "#,
    );
    assert_refused(
        &app,
        &[
            "app.toml: tasks[0] (examples/fast_work)",
            "plugin `examples` has no factory `fast_work`",
            "slow_work",
        ],
    );
}

#[test]
fn a_task_of_an_undefined_plugin_is_refused() {
    let app = TestApp::new(
        r#"
        name = "undefined"
        [[tasks]]
        plugin = "nowhere"
        factory = "x"
        name = "lost"
        "#,
    );
    assert_refused(
        &app,
        &["app.toml: tasks[0] (\"lost\", nowhere/x): no plugin named `nowhere`"],
    );
}

#[test]
fn args_of_the_wrong_shape_are_refused() {
    // `args` given as a string of JSON is a string argument, not an object:
    // a factory with named arguments refuses it.
    let app = TestApp::new(
        r#"
        name = "shape"
        [plugins.examples]
        path = "{examples}"
        [[tasks]]
        plugin = "examples"
        factory = "even_slower"
        args = '{"num": 3'
        "#,
    );
    assert_refused(
        &app,
        &[
            "tasks[0] (examples/even_slower)",
            "bad args",
            "factory `even_slower`",
        ],
    );
}

/// An app whose main task makes its mark (a log line) the moment it runs,
/// with a route, so a start binds the public listener.
fn app_with_a_main_task_and_a_route() -> TestApp {
    TestApp::new(
        r#"
        name = "early"
        [plugins.kit]
        path = "{testkit}"
        [[tasks]]
        plugin = "kit"
        factory = "nap"
        name = "first"
        scope = "main"
        args = { ms = 1 }
        [[routes]]
        http = "POST /hook"
        plugin = "kit"
        factory = "hook_probe"
        "#,
    )
}

/// Issue 24, item 10: with the listen port in use, `main` and worker
/// tasks ran (HTTP calls, KV writes) before `cannot bind ... Address
/// already in use` and exit 1. Now the port is bound before anything runs.
#[test]
fn a_listen_port_in_use_refuses_the_start_before_any_task_runs() {
    let app = app_with_a_main_task_and_a_route();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let run = app.run_taskhost(&[
        "run",
        "--until-idle",
        "--log-format",
        "json",
        "--listen",
        &port,
    ]);
    assert_refused_run(&run, &["--listen: cannot bind", &port]);
}

/// Item 10 too: a storage directory another taskhost holds refuses the
/// start with exit 2 before anything runs (the lock is an flock on
/// `.taskhost/lock`, taken here as another host would).
#[test]
fn storage_another_host_holds_refuses_the_start_before_any_task_runs() {
    let app = app_with_a_main_task_and_a_route();
    let dir = app.dir.path().join(".taskhost");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join("lock")).unwrap();
    lock.try_lock().unwrap();
    let run = app.run_taskhost(&[
        "run",
        "--until-idle",
        "--log-format",
        "json",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_refused_run(&run, &["[storage]", "in use by another taskhost"]);
    drop(lock);
}
