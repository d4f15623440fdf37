//! What resuming costs (`durable = "resume"`, issue 30):
//!
//!     cargo bench -p taskhost --bench speed -- journal
//!
//! One task making N host calls (10,000; `SPEED_SCALE` scales it), timed
//! from its submission to its end, not durable and resuming, on one host
//! (SQLite, `fsync = false`), for two kinds of call: a read
//! (`app.config`, whose step is committed with the next call that waits)
//! and a write (a key-value set, whose step is committed before it
//! returns). The difference per call is the journal's cost. Then replay:
//! a resuming task makes N reads and sleeps an hour; the host stops, a new
//! one starts on the same file and the time until the N + 1 steps are
//! answered from the journal is timed.

use super::{Components, launch, median, scaled, worker};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskhost::config::AppConfig;
use taskhost::operations::Operations;
use taskhost::operations::types::{Submission, WaitRequest};

fn config(components: &Components, storage: &Path) -> AppConfig {
    let text = format!(
        "name = \"speed\"\nworkers = 2\n\
         [config]\ngreeting = \"hi\"\n\
         [storage]\npath = {:?}\n\
         [plugins.bench]\npath = {:?}\n",
        storage.display().to_string(),
        components.bench.display().to_string(),
    );
    AppConfig::parse(&text, Path::new("speed.toml"), Path::new(".")).expect("config")
}

fn submission(
    kind: &str,
    n: usize,
    durable: serde_json::Value,
    then_ms: Option<u64>,
) -> Submission {
    serde_json::from_value(json!({
        "plugin": "bench",
        "factory": "journaled_calls",
        "args": {"kind": kind, "n": n, "then_ms": then_ms},
        "durable": durable,
        "worker": 0,
    }))
    .expect("submission")
}

/// From the submission of `n` calls of `kind` to the task's end.
async fn timed(
    ops: &Arc<Operations>,
    kind: &str,
    n: usize,
    durable: serde_json::Value,
) -> Duration {
    let begun = Instant::now();
    let submitted = ops
        .submit(submission(kind, n, durable, None))
        .await
        .expect("submit");
    let ended = ops
        .wait(WaitRequest {
            id: Some(submitted.tasks[0].id),
            timeout_ms: Some(3_600_000),
            ..WaitRequest::default()
        })
        .await
        .expect("wait");
    assert_eq!(ended.state, taskhost::task::TaskState::Done, "{ended:?}");
    begun.elapsed()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub(crate) async fn run(components: &Components) {
    let n = scaled(10_000);
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(launch(config(components, dir.path())).await);
    let ops = Operations::new(host.clone());
    println!("| {n} calls of one task (median of 3) | not durable | resuming | journal per call |");
    println!("|---|---|---|---|");
    for (kind, what) in [
        (
            "read",
            "`app.config` reads (committed with the next call that waits)",
        ),
        ("write", "key-value sets (each committed before it returns)"),
    ] {
        timed(&ops, kind, n / 10, json!("resume")).await; // warm up
        let (mut plain, mut resume) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            plain.push(us(timed(&ops, kind, n, json!(false)).await));
            resume.push(us(timed(&ops, kind, n, json!("resume")).await));
        }
        let (plain, resume) = (median(plain), median(resume));
        println!(
            "| {what} | {:.2} us | {:.2} us | {:.2} us |",
            plain / n as f64,
            resume / n as f64,
            (resume - plain) / n as f64
        );
    }

    // Replay: n reads and a sleep begun, then a stop and a new host.
    ops.submit(submission("read", n, json!("resume"), Some(3_600_000)))
        .await
        .expect("submit");
    let appended = || worker(&host, 0).env().metrics.journal.appended.get();
    // Its reads are committed with its sleep's step, all at once.
    let before = appended();
    while appended() < before + n as u64 + 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    host.shutdown(false).await;
    drop(ops);
    drop(host);
    let begun = Instant::now();
    let host = Arc::new(launch(config(components, dir.path())).await);
    let replayed = || worker(&host, 0).env().metrics.journal.replayed.get();
    while replayed() < n as u64 + 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = begun.elapsed();
    println!(
        "| replay: a new host started and {} steps answered from the journal | {:.1} ms in all | | {:.2} us per step |",
        n + 1,
        took.as_secs_f64() * 1e3,
        us(took) / (n + 1) as f64
    );
    host.shutdown(false).await;
}
