//! How the registry and events scale with the number of tasks:
//!
//!     cargo bench -p taskhost --bench speed -- scaling
//!
//! For N listed tasks (1,000, 10,000, 100,000 ended tasks on one worker):
//! the time of one `tasks()` snapshot and of one `purge`. For N waiters
//! (1,000 and 10,000 tasks blocked in `wait-event` on two workers): the
//! time of the `dispatch` call and until every waiter has ended. 100,000
//! waiters are not measured: each waiter is a live instance, and the
//! default pool holds 10,000.

use super::{Components, blocked_tasks, on, plugin, spawn, worker};
use std::path::Path;
use std::time::{Duration, Instant};
use taskhost::config::AppConfig;
use taskhost::host::Host;

/// A host of the bench plugin on 2 workers that keeps up to 200,000 ended
/// tasks listed per worker.
async fn host(components: &Components) -> (Host, tempfile::TempDir) {
    let storage = tempfile::tempdir().expect("storage dir");
    let text = format!(
        "name = \"scaling\"\nworkers = 2\n\
         [limits]\ntasks_per_worker = 10000\nended_tasks_per_worker = 200000\n\
         [storage]\npath = {:?}\n\
         [plugins.bench]\npath = {:?}\n",
        storage.path().display().to_string(),
        components.bench.display().to_string(),
    );
    let config =
        AppConfig::parse(&text, Path::new("scaling.toml"), Path::new(".")).expect("config");
    (super::launch(config).await, storage)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub async fn run(components: &Components) {
    let (host, _storage) = host(components).await;
    println!("| N | tasks() snapshot | purge | per listed task (snapshot / purge) |");
    println!("|---|---|---|---|");
    let w0 = worker(&host, 0);
    for n in [1_000usize, 10_000, 100_000] {
        let w = w0.clone();
        let (snapshot, purge) = on(&w0, async move {
            let plugin = plugin(&w);
            let mut handles = Vec::with_capacity(64);
            for _ in 0..n {
                handles.push(spawn(&w, &plugin, "noop", "null"));
                if handles.len() == 64 {
                    for mut handle in handles.drain(..) {
                        handle.ended().await;
                    }
                }
            }
            for mut handle in handles {
                handle.ended().await;
            }
            let begun = Instant::now();
            let listed = w.registry().snapshot();
            let snapshot = begun.elapsed();
            assert_eq!(listed.len(), n, "every ended task listed");
            let begun = Instant::now();
            assert_eq!(w.registry().purge(), n);
            (snapshot, begun.elapsed())
        })
        .await;
        println!(
            "| {n} | {} | {} | {:.0} ns / {:.0} ns |",
            ms(snapshot),
            ms(purge),
            snapshot.as_secs_f64() * 1e9 / n as f64,
            purge.as_secs_f64() * 1e9 / n as f64
        );
    }

    println!();
    println!("| N waiters (2 workers) | dispatch call | dispatch to the last waiter ended |");
    println!("|---|---|---|");
    for n in [1_000usize, 10_000] {
        let mut handles = blocked_tasks(&host, n, "wait", r#"{"event": "jobs.ready"}"#).await;
        let begun = Instant::now();
        let woken = host.dispatch("jobs.ready", "\"go\"");
        let call = begun.elapsed();
        for (_, handle) in &mut handles {
            handle.ended().await;
        }
        let all = begun.elapsed();
        assert_eq!(woken as usize, n, "every waiter was waiting");
        println!("| {n} | {} | {} |", ms(call), ms(all));
        for index in 0..2 {
            worker(&host, index).registry().purge();
        }
    }
    host.shutdown(false).await;
}
