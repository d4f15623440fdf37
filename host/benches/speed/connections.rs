//! Websocket connections bound to tasks, on the real binary (release, as
//! the bench is built), in one run:
//!
//!     cargo bench -p taskhost --bench speed -- connections
//!
//! One host process holds N connections (1,000; `SPEED_SCALE` scales it) to
//! a route whose task waits in `recv`; a second, fresh process holds N idle
//! tasks added through the control API. Each reports its resident memory
//! growth over its own baseline, per connection or per task: the
//! difference is what a connection costs beyond its task (the socket, its
//! queues, the listener's tokio task). Also: how fast N connections are
//! accepted and their tasks started, all at once.

use super::scaled;
use futures_util::{SinkExt, StreamExt};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use taskhost::control::client::Client;
use taskhost::control::routes;
use taskhost::operations::types::{Submission, TaskFilter};
use taskhost::plugin::build::{self, BuildOptions, BuildOutput};
use taskhost::task::TaskState;

/// A host process and what it printed that we need.
struct Process {
    child: Child,
    listen: Option<String>,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn resident_kib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Starts `taskhost run` on an app of the bench plugin with a websocket
/// route, and waits until its control API (and listener) serve.
fn start(component: &Path) -> Process {
    let dir = tempfile::tempdir().expect("scratch dir");
    let toml = format!(
        "name = \"connections\"\nworkers = 2\n[plugins.bench]\npath = {:?}\n\
         [[routes]]\nwebsocket = \"/idle\"\nplugin = \"bench\"\nfactory = \"connection_idle\"\n\
         max_connections = 100000\n[listen]\nmax_connections = 100000\n",
        component.display().to_string()
    );
    let app = dir.path().join("app.toml");
    std::fs::write(&app, toml).expect("app.toml");
    let state = dir.path().join("control.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(["run", "--log-format", "json", "--listen", "127.0.0.1:0"])
        .arg("--control-file")
        .arg(&state)
        .arg(&app)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("taskhost starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut listen = None;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("log line");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(address) = value["listen"].as_str() {
            listen = Some(address.to_string());
            break;
        }
    }
    // Keep draining the log, so the host never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let client = Client::from_state_file(&state).expect("control state");
    Process {
        child,
        listen,
        client,
        _dir: dir,
    }
}

/// Tasks of the host that are running.
async fn running(client: &Client) -> usize {
    let filter = TaskFilter {
        state: Some(TaskState::Running),
        ..TaskFilter::default()
    };
    let tasks = client
        .call(&routes::LIST_TASKS, &[], &filter)
        .await
        .expect("tasks");
    tasks.len()
}

async fn until_running(client: &Client, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while running(client).await < count {
        assert!(Instant::now() < deadline, "{count} tasks never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Stream {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connected")
        .0
}

/// One echo through a connection: its task is up and reading.
async fn echo(stream: &mut Stream) {
    stream
        .send(tokio_tungstenite::tungstenite::Message::text("ping"))
        .await
        .expect("send");
    loop {
        match stream.next().await.expect("open").expect("a message") {
            tokio_tungstenite::tungstenite::Message::Text(_) => return,
            _ => continue,
        }
    }
}

fn component() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let options = BuildOptions {
        output: BuildOutput::Capture,
        ..BuildOptions::default()
    };
    build::build(&repo.join("plugins/bench"), &options).expect("build plugins/bench")
}

pub async fn run() {
    let n = scaled(1000);
    let component = component();

    // N connections, each with its task.
    let host = start(&component);
    let pid = host.child.id();
    let url = format!("ws://{}/idle", host.listen.as_deref().expect("listening"));
    // Warm up: one connection's worth of everything, then a baseline.
    let mut warm = connect(&url).await;
    echo(&mut warm).await;
    let before = resident_kib(pid);
    let begun = Instant::now();
    let mut streams: Vec<Stream> =
        futures_util::future::join_all((0..n).map(|_| connect(&url))).await;
    for stream in &mut streams {
        echo(stream).await;
    }
    let accepted = begun.elapsed();
    until_running(&host.client, n + 1).await;
    let per_connection = (resident_kib(pid) - before) / n as f64;
    for stream in &mut streams {
        let _ = stream.close(None).await;
    }
    drop(streams);
    drop(host);

    // N idle tasks alone, in a fresh process.
    let host = start(&component);
    let pid = host.child.id();
    let add = |worker: u32| {
        let client = &host.client;
        async move {
            let body = serde_json::json!({
                "plugin": "bench", "factory": "idle", "worker": worker,
            });
            let submission: Submission = serde_json::from_value(body).expect("a submission");
            let _ = client
                .call(&routes::SUBMIT, &[], &submission)
                .await
                .expect("add");
        }
    };
    add(0).await;
    until_running(&host.client, 1).await;
    let before = resident_kib(pid);
    for i in 0..n {
        add((i % 2) as u32).await;
    }
    until_running(&host.client, n + 1).await;
    let per_task = (resident_kib(pid) - before) / n as f64;
    drop(host);

    println!("| measure ({n} at once, 2 workers) | value | target |");
    println!("|---|---|---|");
    println!(
        "| resident memory per connection, its task included | {per_connection:.1} KiB | under 64 KiB |"
    );
    println!("| resident memory per idle task, no connection | {per_task:.1} KiB | |");
    println!(
        "| a connection beyond its task | {:.1} KiB | |",
        per_connection - per_task
    );
    println!(
        "| {n} connections accepted, tasks started, one echo each | {:.0} ms ({:.0}/s) | |",
        accepted.as_secs_f64() * 1e3,
        n as f64 / accepted.as_secs_f64()
    );
}
