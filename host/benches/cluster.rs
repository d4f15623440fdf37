//! taskhost as a cluster, measured against itself alone, in one run.
//!
//!     cargo bench -p taskhost --bench cluster
//!
//! Starts a real nats-server (JetStream on, a free loopback port; installed
//! by `scripts/setup-nats`) and real `taskhost run` processes (the release
//! binary), and prints:
//! - an event's latency, dispatch on one host to a waiter's end seen on
//!   the event stream, when the waiter is on the same host and on another;
//! - tasks for `any` host per second, submitted to one host by 8 clients,
//!   with 1, 2 and 3 hosts;
//! - a durable submission's latency, JetStream (a cluster of one) against
//!   the embedded SQLite database (no cluster).
//!
//! Ratios, not absolute figures, are what compare (these machines drift).
//! `CLUSTER_SCALE=0.2` runs a fifth of the iterations.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use taskhost::control::client::Client;
use taskhost::control::routes;
use taskhost::operations::types::{DispatchRequest, Submission};

/// A submission written as the API's JSON.
fn submission(body: Value) -> Submission {
    serde_json::from_value(body).expect("a submission")
}
use taskhost::lifecycle::LifecycleEvent;
use taskhost::plugin::build::{self, BuildOptions, BuildOutput};

fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("CLUSTER_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale) as usize).max(10)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nats-server with JetStream on a free loopback port: it and its URL.
fn start_nats(bin: &Path, store: &Path) -> (Process, String) {
    let mut child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nats-server starts");
    let stderr = child.stderr.take().unwrap();
    let mut port = None;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(at) = line.find("Listening for client connections on ") {
            port = line[at..].rsplit(':').next().map(str::to_string);
            break;
        }
    }
    let port = port.expect("nats-server says where it listens");
    (Process(child), format!("nats://127.0.0.1:{port}"))
}

/// A `taskhost run` of `toml`, once its control API serves: it and a
/// client of that API.
fn start_host(dir: &Path, name: &str, toml: &str) -> (Process, Client) {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("app.toml"), toml).unwrap();
    let control = home.join("control.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(["run", "--log-format", "json"])
        .arg(home.join("app.toml"))
        .env("TASKHOST_CONTROL_FILE", &control)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("taskhost starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut serving = false;
    let mut said = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        if line.contains("control API on") {
            serving = true;
            break;
        }
        said.push(line);
    }
    if !serving {
        let mut stderr = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
        panic!("host {name} did not start:\n{}\n{stderr}", said.join("\n"));
    }
    // The rest of its log is read and dropped, so it never blocks on a
    // full pipe.
    std::thread::spawn(move || for _ in lines {});
    let client = Client::from_state_file(&control).expect("control state file");
    (Process(child), client)
}

fn app(name: &str, cluster: Option<(&str, &str)>, plugin: &Path, storage: &Path) -> String {
    let cluster = match cluster {
        Some((url, host)) => {
            format!("[cluster]\nnats = \"{url}\"\nname = \"bench\"\nhost = \"{host}\"\n")
        }
        None => String::new(),
    };
    format!(
        "name = \"{name}\"\nworkers = 1\n[storage]\npath = \"{}\"\n{cluster}[plugins.bench]\npath = \"{}\"\n",
        storage.display(),
        plugin.display()
    )
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn waiters(client: &Client) -> f64 {
    let text = client.get_text("/metrics").await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("taskhost_event_waiters "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Dispatch on `from` to a waiter on `to`, `n` times: the time from the
/// dispatch to the waiter's `done` on `to`'s event stream.
async fn event_latency(from: &Client, to: &Client, to_file: &Path, n: usize) -> Vec<Duration> {
    let (done, mut ended) = tokio::sync::mpsc::unbounded_channel::<String>();
    let follower = Client::from_state_file(to_file).unwrap();
    tokio::spawn(async move {
        let _ = follower
            .follow(|event| {
                if let LifecycleEvent::Done { task, .. } = event {
                    return done.send(task.task).is_ok();
                }
                true
            })
            .await;
    });
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("lat-{i}");
        let event = format!("lat.e{i}");
        let _ = to
            .call(&routes::SUBMIT, &[], &submission(json!({"plugin": "bench", "factory": "wait", "args": {"event": event}, "name": name})))
            .await
            .unwrap();
        while waiters(to).await < 1.0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let start = Instant::now();
        let dispatch = DispatchRequest {
            payload: "x".into(),
            ..DispatchRequest::default()
        };
        let _ = from
            .call(&routes::DISPATCH, &[&event], &dispatch)
            .await
            .unwrap();
        while let Some(ended) = ended.recv().await {
            if ended == name {
                break;
            }
        }
        samples.push(start.elapsed());
    }
    samples
}

/// `n` tasks for `any` host through `client`, from 8 concurrent clients:
/// tasks per second.
async fn any_throughput(file: &Path, n: usize, round: &str) -> f64 {
    let start = Instant::now();
    let mut clients = Vec::new();
    for c in 0..8 {
        let client = Client::from_state_file(file).unwrap();
        let round = round.to_string();
        clients.push(tokio::spawn(async move {
            for i in (c..n).step_by(8) {
                let _ = client
                    .call(&routes::SUBMIT, &[], &submission(json!({"plugin": "bench", "factory": "noop", "name": format!("any-{round}-{i}"), "host": "any"})))
                    .await
                    .unwrap();
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// `n` durable submissions, one after another: each one's latency.
async fn durable_latency(client: &Client, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let _ = client
            .call(&routes::SUBMIT, &[], &submission(json!({"plugin": "bench", "factory": "noop", "name": format!("durable-{i}"), "durable": true})))
            .await
            .unwrap();
        samples.push(start.elapsed());
    }
    samples
}

#[tokio::main]
async fn main() {
    let setup = Command::new(repo().join("scripts/setup-nats"))
        .stderr(Stdio::inherit())
        .output();
    let nats_bin = match setup {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
        _ => {
            println!("cluster bench skipped: scripts/setup-nats could not install nats-server");
            return;
        }
    };
    let plugin = build::build(
        &repo().join("plugins/bench"),
        &BuildOptions {
            output: BuildOutput::Capture,
            ..BuildOptions::default()
        },
    )
    .expect("build plugins/bench");
    let dir = tempfile::tempdir().unwrap();
    let (_nats, url) = start_nats(&nats_bin, &dir.path().join("nats"));
    let toml = |host: &str| {
        app(
            "bench",
            Some((&url, host)),
            &plugin,
            &dir.path().join(host).join("storage"),
        )
    };
    let (_a, a) = start_host(dir.path(), "a", &toml("a"));
    let (_b, b) = start_host(dir.path(), "b", &toml("b"));
    // The hosts hear each other within two heartbeats.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let n = scaled(200);
    let a_file = dir.path().join("a/control.json");
    let b_file = dir.path().join("b/control.json");
    let local = event_latency(&a, &a, &a_file, n).await;
    let remote = event_latency(&a, &b, &b_file, n).await;
    let (local_p50, local_p99) = percentiles(local);
    let (remote_p50, remote_p99) = percentiles(remote);

    println!("| figure | p50 | p99 | ratio p50 |");
    println!("|---|---|---|---|");
    println!(
        "| event, dispatch to a waiter's end, same host | {} | {} | 1 |",
        ms(local_p50),
        ms(local_p99)
    );
    println!(
        "| event, dispatch to a waiter's end, other host | {} | {} | {:.2}x |",
        ms(remote_p50),
        ms(remote_p99),
        remote_p50.as_secs_f64() / local_p50.as_secs_f64()
    );

    // `any` with 2 hosts, then 3, then 1 (the others stopped).
    let tasks = scaled(2000);
    let two = any_throughput(&a_file, tasks, "two").await;
    let (_c, _) = start_host(dir.path(), "c", &toml("c"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let three = any_throughput(&a_file, tasks, "three").await;
    drop(_c);
    drop(_b);
    // Gone from `any`'s queue group at once; from the heartbeats within 3 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let one = any_throughput(&a_file, tasks, "one").await;

    let durable_n = scaled(300);
    let jetstream = durable_latency(&a, durable_n).await;
    let (_alone_process, alone) = start_host(
        dir.path(),
        "alone",
        &app("alone", None, &plugin, &dir.path().join("alone/storage")),
    );
    let sqlite = durable_latency(&alone, durable_n).await;
    let (js_p50, js_p99) = percentiles(jetstream);
    let (sq_p50, sq_p99) = percentiles(sqlite);
    println!(
        "| durable submission, embedded SQLite (no cluster) | {} | {} | 1 |",
        ms(sq_p50),
        ms(sq_p99)
    );
    println!(
        "| durable submission, JetStream (a cluster) | {} | {} | {:.2}x |",
        ms(js_p50),
        ms(js_p99),
        js_p50.as_secs_f64() / sq_p50.as_secs_f64()
    );
    println!();
    println!("| `any` tasks, 8 clients on host a | tasks/s | ratio to 1 host |");
    println!("|---|---|---|");
    println!("| 1 host | {one:.0} | 1 |");
    println!("| 2 hosts | {two:.0} | {:.2}x |", two / one);
    println!("| 3 hosts | {three:.0} | {:.2}x |", three / one);
    println!(
        "({} events each way, {tasks} `any` tasks per row, {durable_n} durable submissions each; \
         {} cores here)",
        n,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}
