//! Many tasks ending at once, the way shutdown and a mass cancel end them:
//!
//!     cargo bench -p taskhost --bench speed -- mass
//!
//! N sleeping tasks (10,000; `SPEED_SCALE` scales it) spread over the
//! host's two workers are cancelled in one go with the default grace
//! period, as `taskhost` does at shutdown. Printed: how many ended
//! cooperatively (their cleanup ran) and how many had to be forced, the
//! time from the cancel to the last end, and the worker time one end took
//! (that span times the workers, over N). The raw floor is the same N
//! sleepers of the same component on plain wasmtime on one thread, woken
//! with `cancelled` at once.
//!
//! To profile only the cancels (`SPEED_MASS=taskhost` or `raw` runs one
//! side; see `profile` in main.rs):
//!
//!     mkfifo /tmp/ctl; SPEED_PERF_CTL=/tmp/ctl SPEED_PROFILE=mass SPEED_MASS=raw \
//!         perf record -g --control fifo:/tmp/ctl -D -1 BENCH_BINARY mass

use super::raw::RawPlugin;
use super::{Components, blocked_tasks, host, scaled, worker};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use taskhost::task::{CancelStage, Outcome};

/// What one mass cancel came to.
pub struct Ending {
    pub cooperative: usize,
    pub forced: usize,
    /// From the cancel to the last task's end.
    pub span: Duration,
}

/// `n` sleepers on the bench host's 2 workers, cancelled at once.
pub async fn taskhost(components: &Components, n: usize) -> Ending {
    let host = host(components).await;
    let mut handles = blocked_tasks(&host, n, "idle", "null").await;
    super::profile("mass", "enable");
    let begun = Instant::now();
    for (_, handle) in &handles {
        handle.cancel();
    }
    for (_, handle) in &mut handles {
        handle.ended().await;
    }
    let span = begun.elapsed();
    super::profile("mass", "disable");
    let (mut cooperative, mut forced) = (0, 0);
    for (w, handle) in &handles {
        match w.registry().get(handle.id).and_then(|info| info.outcome) {
            Some(Outcome::Cancelled {
                stage: CancelStage::Cooperative,
            }) => cooperative += 1,
            Some(Outcome::Cancelled {
                stage: CancelStage::Forced,
            }) => forced += 1,
            other => panic!("a cancelled sleeper ended {other:?}"),
        }
    }
    host.shutdown(false).await;
    Ending {
        cooperative,
        forced,
        span,
    }
}

/// The floor: `n` sleepers of the same component on one thread of plain
/// wasmtime (the cold pool's engine, which holds that many), all woken
/// with `cancelled` at once.
pub async fn raw(components: &Components, n: usize) -> Duration {
    let host = host(components).await;
    let raw = Arc::new(RawPlugin::new(
        &worker(&host, 0).env().engines.cold,
        &components.bench,
    ));
    let local = tokio::task::LocalSet::new();
    let span = local
        .run_until(async {
            let asleep = Arc::new(AtomicUsize::new(0));
            let mut calls = Vec::with_capacity(n);
            let mut stops = Vec::with_capacity(n);
            for _ in 0..n {
                let (raw, asleep) = (raw.clone(), asleep.clone());
                let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
                stops.push(stop_rx);
                calls.push(tokio::task::spawn_local(async move {
                    let mut store = raw.store();
                    store.data_mut().count_sleeps(&asleep);
                    let _ = stop_tx.send(store.data().stopper());
                    raw.run_store(store, "idle", "null").await
                }));
            }
            let mut stoppers = Vec::with_capacity(n);
            for stop in stops {
                stoppers.push(stop.await.expect("raw task started"));
            }
            while asleep.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            super::profile("mass", "enable");
            let begun = Instant::now();
            for stop in &stoppers {
                stop.cancel();
            }
            for call in calls {
                let ended = call.await.expect("raw task");
                assert!(ended.is_err(), "a cancelled raw sleeper returned Ok");
            }
            let span = begun.elapsed();
            super::profile("mass", "disable");
            span
        })
        .await;
    host.shutdown(false).await;
    span
}

pub async fn run(components: &Components) {
    let n = scaled(10_000);
    println!("| measure | taskhost | raw wasmtime (1 thread) | ratio |");
    println!("|---|---|---|---|");
    match std::env::var("SPEED_MASS").as_deref() {
        Ok("taskhost") => {
            let ours = taskhost(components, n).await;
            println!(
                "taskhost: {} cooperative, {} forced, {:?}",
                ours.cooperative, ours.forced, ours.span
            );
            return;
        }
        Ok("raw") => {
            println!("raw: {:?}", raw(components, n).await);
            return;
        }
        _ => {}
    }
    let ours = taskhost(components, n).await;
    let floor = raw(components, n).await;
    // Worker time per end: the span on 2 workers, over the tasks; raw's
    // span is one thread's.
    let per_end = ours.span.as_secs_f64() * 2.0 / n as f64;
    let raw_per_end = floor.as_secs_f64() / n as f64;
    println!(
        "| {n} sleepers cancelled at once: cooperative / forced | {} / {} | - | - |",
        ours.cooperative, ours.forced
    );
    println!(
        "| {n} sleepers cancelled at once: to the last end | {:.1} ms | {:.1} ms | {:.2}x |",
        ours.span.as_secs_f64() * 1e3,
        floor.as_secs_f64() * 1e3,
        ours.span.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "| worker time per ended task (cancelled sleeper, cleanup included) | {:.1} us | {:.1} us | {:.2}x |",
        per_end * 1e6,
        raw_per_end * 1e6,
        per_end / raw_per_end
    );
}
