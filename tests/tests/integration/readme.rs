//! The README's plugin-writing example is real: it is `plugins/greeter`, and
//! it builds and runs as the README says.

use serde_json::json;
use taskhost_tests::{TestApp, repo};

#[test]
fn the_readme_plugin_example_is_plugins_greeter() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("`src/lib.rs`:\n\n```rust\n")
        .expect("README has the example");
    let code = &readme[start..];
    let code = &code[code.find("```rust\n").unwrap() + 8..];
    let code = &code[..code.find("```").unwrap()];
    let plugin = std::fs::read_to_string(repo().join("plugins/greeter/src/lib.rs")).unwrap();
    assert_eq!(
        code, plugin,
        "README example and plugins/greeter/src/lib.rs differ"
    );
}

#[test]
fn the_readme_plugin_example_runs() {
    let app = TestApp::new(
        r#"
        name = "readme"
        [plugins.greeter]
        path = "{greeter}"
        [config]
        greeting = "ahoy"
        [[tasks]]
        plugin = "greeter"
        factory = "add"
        name = "sum"
        args = { a = 2, b = 3 }
        [[tasks]]
        plugin = "greeter"
        factory = "notify_started"
        args = { delay_ms = 1 }
        "#,
    );
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(run.event_of("done", "sum")[0]["result"], json!("5"));
    assert_eq!(
        run.messages("ahoy from readme on worker Some(0)").len(),
        1,
        "{}",
        run.dump()
    );
}

/// The fenced block of `lang` that follows `heading`'s `name` line.
fn readme_block(heading: &str, name: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = &readme[readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has {heading}"))..];
    let fence = format!("`{name}`:\n\n```{lang}\n");
    let code = &section[section
        .find(&fence)
        .unwrap_or_else(|| panic!("{heading} shows {name}"))
        + fence.len()..];
    code[..code.find("```").unwrap()].to_string()
}

#[test]
fn the_readme_python_and_javascript_examples_are_the_greeter_plugins() {
    for (heading, name, lang, file) in [
        (
            "### In Python",
            "pyproject.toml",
            "toml",
            "plugins/py-greeter/pyproject.toml",
        ),
        (
            "### In Python",
            "app.py",
            "python",
            "plugins/py-greeter/app.py",
        ),
        (
            "### In JavaScript",
            "package.json",
            "json",
            "plugins/js-greeter/package.json",
        ),
        (
            "### In JavaScript",
            "app.js",
            "js",
            "plugins/js-greeter/app.js",
        ),
    ] {
        let plugin = std::fs::read_to_string(repo().join(file)).unwrap();
        assert_eq!(
            readme_block(heading, name, lang),
            plugin,
            "README's {name} under {heading} and {file} differ"
        );
    }
}

#[test]
fn the_readme_python_and_javascript_examples_run() {
    for (plugin, worker) in [("py-greeter", "worker 0"), ("js-greeter", "worker 0")] {
        let app = TestApp::new(&format!(
            r#"
            name = "readme"
            [plugins.greeter]
            path = "{{{plugin}}}"
            [config]
            greeting = "ahoy"
            [[tasks]]
            plugin = "greeter"
            factory = "add"
            name = "sum"
            args = {{ a = 2, b = 3 }}
            [[tasks]]
            plugin = "greeter"
            factory = "notify_started"
            args = {{ delay_ms = 1 }}
            "#
        ));
        let run = app.run_until_idle();
        assert_eq!(run.code, Some(0), "{plugin}: {}", run.dump());
        assert_eq!(
            run.event_of("done", "sum")[0]["result"],
            json!("5"),
            "{plugin}"
        );
        assert_eq!(
            run.messages(&format!("ahoy from readme on {worker}")).len(),
            1,
            "{plugin}: {}",
            run.dump()
        );
        // Mistyped arguments are refused before anything runs.
        app.rewrite(
            &std::fs::read_to_string(app.path())
                .unwrap()
                .replace("a = 2", "a = \"two\""),
        );
        let check = app.check();
        assert_eq!(check.code, Some(2), "{plugin}: {}", check.dump());
        assert!(
            check
                .stderr
                .contains("factory add: argument `a` must be an integer"),
            "{plugin}: {}",
            check.stderr
        );
    }
}

/// `examples/polyglot.toml` runs Rust, Python and JavaScript tasks side
/// by side, building each plugin from source as it says.
#[test]
fn the_polyglot_example_runs_three_languages_side_by_side() {
    let _storage = taskhost_tests::examples_storage();
    let scratch = tempfile::tempdir().unwrap();
    let run = taskhost_tests::Run::from(
        std::process::Command::new("timeout")
            .arg("600")
            .arg(taskhost_tests::taskhost_bin())
            .args(["run", "--until-idle", "--log-format", "json"])
            .arg(repo().join("examples/polyglot.toml"))
            .env("TASKHOST_CONTROL_FILE", scratch.path().join("control.json"))
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(
        run.messages("Server successfully started!").len(),
        6,
        "{}",
        run.dump()
    );
    for name in ["notify_rs", "notify_py", "notify_js"] {
        assert_eq!(
            run.event_of("done", name).len(),
            2,
            "{name}: {}",
            run.dump()
        );
    }
    assert_eq!(
        run.results_of("main_setup"),
        vec![json!({"app": "polyglot", "worker": null, "greeting": "hello"})]
    );
    assert_eq!(run.results_of("slower_py"), vec![json!(5), json!(5)]);
    assert_eq!(run.event_of("done", "inject_js").len(), 2, "{}", run.dump());
}

/// The control API's page, "A task is `{...}`", lists exactly the fields
/// of the one type the API, the CLI and the guests' `task-info` share.
#[test]
fn the_documented_task_record_is_task_view() {
    let readme = std::fs::read_to_string(repo().join("docs/control.md")).unwrap();
    let start = readme
        .find("A task is `{")
        .expect("README describes a task")
        + 12;
    let listed: Vec<String> = readme[start..start + readme[start..].find('}').unwrap()]
        .split(',')
        .map(|field| field.trim().to_string())
        .collect();
    let view = taskhost::task::TaskView {
        id: 1,
        name: None,
        worker: taskhost::task::WorkerId::Main,
        plugin: String::new(),
        plugin_version: String::new(),
        factory: String::new(),
        state: taskhost::task::TaskState::Pending,
        created_at_ms: 0,
        started_at_ms: None,
        ended_at_ms: None,
        result: None,
        error: None,
        cancel_stage: None,
        attempt: 1,
        restarts: 0,
        durable: false,
        // Only for a task submitted to a queue (docs/queues.md).
        queue: None,
        // Only for a task a guest started (docs/tasks.md).
        parent: None,
        // Only in a listing gathered from a cluster (docs/cluster.md).
        host: None,
        args: "{}".into(),
        // Only when the arguments are longer than 4 KiB.
        args_truncated: false,
    };
    let fields: Vec<String> = serde_json::to_value(&view)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, fields, "docs/control.md lists {listed:?}");
}

/// `examples/websocket.toml` runs as the README's session shows, building
/// the plugin as it says (on a free port instead of 8080): the client gets
/// "A message" on each `taskhost dispatch my.custom.event`, the receiver
/// logs what the client sent, closing cleans up, and the webhook answers
/// with what it received.
#[test]
fn the_websocket_example_runs_as_the_readme_session_shows() {
    let _storage = taskhost_tests::examples_storage();
    let example = std::fs::read_to_string(repo().join("examples/websocket.toml")).unwrap();
    let shown = readme_block(
        "## Connections and webhooks",
        "examples/websocket.toml",
        "toml",
    );
    for line in shown.lines().map(|l| l.split('#').next().unwrap().trim()) {
        assert!(
            example
                .lines()
                .any(|l| l.split('#').next().unwrap().trim() == line),
            "the README shows {line:?}, which examples/websocket.toml does not have"
        );
    }

    let scratch = tempfile::tempdir().unwrap();
    let control = scratch.path().join("control.json");
    let child = std::process::Command::new(taskhost_tests::taskhost_bin())
        .args(["run", "--log-format", "json", "--listen", "127.0.0.1:0"])
        .arg(repo().join("examples/websocket.toml"))
        .env("TASKHOST_CONTROL_FILE", &control)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut host = taskhost_tests::Running::new(child);
    host.wait_for(1, |l| l["listen"].is_string());
    host.wait_until_serving();
    let address = host
        .seen()
        .iter()
        .find_map(|l| l["listen"].as_str())
        .unwrap()
        .to_string();
    let cli = |args: &[&str]| {
        taskhost_tests::Run::from(
            std::process::Command::new(taskhost_tests::taskhost_bin())
                .args(args)
                .env("TASKHOST_CONTROL_FILE", &control)
                .output()
                .unwrap(),
        )
    };
    let address: std::net::SocketAddr = address.parse().unwrap();
    let mut client = taskhost_tests::routes::Client::connect(address, "/feed").unwrap();
    client.send("hello");
    host.wait_for(1, |l| {
        l["task"] == "receiver:1" && l["message"] == "received hello"
    });
    // As the README's command, with --wait-for 1 so the test cannot race
    // the feed on its way to waiting.
    let dispatched = cli(&["dispatch", "my.custom.event", "--wait-for", "1"]);
    assert_eq!(
        dispatched.stdout.trim(),
        "woke 1 task(s)",
        "{}",
        dispatched.dump()
    );
    assert_eq!(client.text(), "A message");
    client.close();
    host.wait_for(1, taskhost_tests::routes::over(1));
    let answer: serde_json::Value = ureq::post(&format!("http://{address}/hooks/build"))
        .set("content-type", "application/json")
        .send_string(r#"{"ref": "main"}"#)
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(answer, json!({"received": {"ref": "main"}}));
    let tasks = cli(&["tasks"]);
    assert!(
        tasks.stdout.contains("1 task(s)"),
        "only the webhook's: {}",
        tasks.dump()
    );
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    for task in ["ws:1", "receiver:1"] {
        assert_eq!(
            run.event_of("cancelled", task).len(),
            1,
            "{task}: {}",
            run.dump()
        );
    }
}

#[test]
fn the_readme_database_example_runs_against_real_servers() {
    let postgres = taskhost_tests::Postgres::start();
    postgres.shop_tables();
    postgres.psql(
        "shop",
        "INSERT INTO orders (customer, amount_cents) VALUES ('initech', 700);",
    );
    let redis = taskhost_tests::Redis::start();
    let toml = readme_block("## Reaching a database", "app.toml", "toml")
        .replace(":5432", &format!(":{}", postgres.port))
        .replace(":6379", &format!(":{}", redis.port));
    let js = readme_block(
        "## Reaching a database",
        "plugins/js-databases/app.js",
        "js",
    );
    let app_js = std::fs::read_to_string(repo().join("plugins/js-databases/app.js")).unwrap();
    assert!(
        app_js.contains(&js),
        "README's JavaScript is not in app.js:\n{js}"
    );
    // The same app.toml with the Rust plugin, then the JavaScript one.
    for (run_number, plugin) in [(1, "{databases}"), (2, "{js-databases}")] {
        let toml = toml.replace("\"plugins/databases\"", &format!("\"{plugin}\""));
        let app = TestApp::new(&format!("name = \"readme\"\n{toml}"));
        let run = app.run_until_idle();
        assert_eq!(run.code, Some(0), "{}", run.dump());
        assert_eq!(
            run.results_of("nightly"),
            vec![json!({
                "report": run_number,
                "orders": 1,
                "total_cents": 700,
                "top_customer": "initech",
            })],
            "{plugin}: {}",
            run.dump()
        );
        assert_eq!(redis.cli(&["GET", "visits"]), run_number.to_string());
    }
}
