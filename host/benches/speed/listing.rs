//! What the dashboard's pages cost with 100,000 tasks kept (issue 29:
//! "100,000 tasks stay responsive"):
//!
//!     cargo bench -p taskhost --bench speed -- listing
//!
//! A host keeps 100,000 ended trivial tasks (`ended_tasks_per_worker =
//! 50000` on 2 workers); then, each the median of 21 calls: the first page
//! of 100 (`GET /v1/tasks?limit=100`), a page far back (`before` the
//! middle id), a filtered page that matches few, the overview's counts
//! (`GET /v1/summary`), and, for scale, a copy of every task (what a page
//! cost before pages selected before copying).

use super::{Components, launch, on, plugin_named, scaled, spawn, worker};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskhost::config::AppConfig;
use taskhost::operations::Operations;
use taskhost::operations::types::TaskFilter;

fn config(components: &Components, storage: &Path, kept: usize) -> AppConfig {
    let text = format!(
        "name = \"speed\"\nworkers = 2\n\
         [limits]\nended_tasks_per_worker = {kept}\n\
         [storage]\npath = {:?}\n\
         [plugins.bench]\npath = {:?}\n",
        storage.display().to_string(),
        components.bench.display().to_string(),
    );
    AppConfig::parse(&text, Path::new("speed.toml"), Path::new(".")).expect("config")
}

/// The median time of 21 runs of `call`.
fn median_of(mut call: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..21)
        .map(|_| {
            let begun = Instant::now();
            call();
            begun.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub(crate) async fn run(components: &Components) {
    let n = scaled(100_000);
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(launch(config(components, dir.path(), n.div_ceil(2))).await);
    // Each worker runs its half, 64 at a time, and keeps them (the
    // throughput benches purge as they go).
    let mut jobs = Vec::new();
    for index in 0..2 {
        let w = worker(&host, index);
        let plugin = plugin_named(&w, "bench");
        let job = w.clone();
        jobs.push(on(&w, async move {
            let mut started = 0;
            while started < n / 2 {
                let batch: Vec<_> = (0..64.min(n / 2 - started))
                    .map(|_| spawn(&job, &plugin, "noop", "null"))
                    .collect();
                started += batch.len();
                for mut handle in batch {
                    handle.ended().await;
                }
            }
        }));
    }
    for job in jobs {
        job.await;
    }
    let ops = Operations::new(host.clone());
    let kept = ops.list_tasks(&TaskFilter::default()).unwrap().len();
    let page = |filter: TaskFilter| {
        let ops = ops.clone();
        move || {
            let listed = ops.list_tasks(&filter).unwrap();
            assert!(listed.len() <= 100);
        }
    };
    let first = median_of(page(TaskFilter {
        limit: Some(100),
        ..TaskFilter::default()
    }));
    let middle = {
        let mut ids: Vec<u64> = host.tasks().iter().map(|t| t.ident.id).collect();
        ids.sort_unstable();
        ids[ids.len() / 2]
    };
    let back = median_of(page(TaskFilter {
        limit: Some(100),
        before: Some(middle),
        ..TaskFilter::default()
    }));
    let filtered = median_of(page(TaskFilter {
        limit: Some(100),
        name: Some("no-such-task".into()),
        ..TaskFilter::default()
    }));
    let summary = median_of(|| {
        let summary = ops.summary();
        assert_eq!(summary.states["done"], kept);
    });
    let copy_all = median_of(|| {
        let mut all = host.tasks();
        all.sort_unstable_by_key(|t| std::cmp::Reverse(t.ident.id));
        all.truncate(100);
    });
    println!("| with {kept} ended tasks kept | median of 21 |");
    println!("|---|---|");
    println!("| first page of 100 (`limit=100`) | {} |", ms(first));
    println!("| a page back (`before` the middle id) | {} |", ms(back));
    println!(
        "| a page matching none (`name=no-such-task`) | {} |",
        ms(filtered)
    );
    println!(
        "| the overview's counts (`/v1/summary`) | {} |",
        ms(summary)
    );
    println!(
        "| for scale: every task copied, sorted, 100 kept | {} |",
        ms(copy_all)
    );
}
