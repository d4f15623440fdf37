//! Queues (issue 26): what waiting in a queue costs, and whether its flow
//! control holds at scale:
//!
//!     cargo bench -p taskhost --bench speed -- queues
//!
//! Printed, each measured in this run: trivial tasks per second through a
//! queue with no bounds against the same tasks started directly (2
//! workers, 64 in flight per worker, rounds alternating); a task's
//! submission to its start through a queue that holds 100,000 waiting
//! tasks of another key, against an empty queue and a direct start; the
//! resident memory one waiting task holds; where a small key's ten tasks
//! start among a big key's 10,000 (one slot, `per_key = 1`); and how many
//! tasks a `rate = "100/s"` queue starts in 10 s; and durable tasks per
//! second, added to ended (fsync off), through a queue against started
//! directly, submitted in batches of 64 per worker, with a window of 64
//! or 1,024 in flight per worker, and one after another (each the median
//! of three alternating rounds). `SPEED_SCALE` scales the counts (not the
//! rate window).

use super::{Components, on, percentiles, plugin, scaled, us, worker};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use taskhost::bench::WorkerCtx;
use taskhost::config::{AppConfig, Placement, TaskSpec};
use taskhost::host::Host;
use taskhost::plugin::Plugin;
use taskhost::registry::TaskHandle;

/// The bench plugin on 2 workers with the queues the sections use.
async fn host(components: &Components) -> (Host, tempfile::TempDir) {
    let storage = tempfile::tempdir().expect("storage dir");
    let text = format!(
        "name = \"queues\"\nworkers = 2\n\
         [limits]\ntasks_per_worker = 10000\nended_tasks_per_worker = 200000\n\
         tasks_per_app = 1000000\n\
         [storage]\npath = {:?}\n\
         [plugins.bench]\npath = {:?}\n\
         [[queues]]\nname = \"free\"\nmax_waiting = 1000000\n\
         [[queues]]\nname = \"deep\"\nper_key = 1\nmax_waiting = 1000000\n\
         [[queues]]\nname = \"fair\"\nconcurrency = 1\nper_key = 1\nmax_waiting = 1000000\n\
         [[queues]]\nname = \"paced\"\nrate = \"100/s\"\nmax_waiting = 1000000\n",
        storage.path().display().to_string(),
        components.bench.display().to_string(),
    );
    let config = AppConfig::parse(
        &text,
        std::path::Path::new("queues.toml"),
        std::path::Path::new("."),
    )
    .expect("config");
    (super::launch(config).await, storage)
}

fn queued(
    worker: &Arc<WorkerCtx>,
    plugin: &Arc<Plugin>,
    factory: &str,
    queue: &str,
    key: Option<String>,
) -> TaskHandle {
    worker
        .spawn(
            plugin.clone(),
            TaskSpec {
                factory: factory.into(),
                args: "null".into(),
                queue: Some(Placement {
                    queue: queue.into(),
                    key,
                    priority: 0,
                    start: None,
                }),
                ..TaskSpec::default()
            },
        )
        .expect("queued spawn")
}

/// Trivial tasks per second on 2 workers, 64 in flight per worker, each
/// through `queue` or (none) started directly.
async fn per_second(host: &Host, n: usize, queue: Option<&'static str>) -> f64 {
    super::tasks_per_second_by(host, 2, n, "bench", move |job, plugin, _| match queue {
        Some(queue) => queued(job, plugin, "noop", queue, None),
        None => super::spawn(job, plugin, "noop", "null"),
    })
    .await
}

/// How a durable bench submits its tasks on each worker.
#[derive(Clone, Copy)]
enum Submitting {
    /// 64 at once, then the next 64 once all 64 ended, as many clients
    /// polling for their batch would (their records share commits).
    Batches,
    /// One after another, each answered before the next is sent (one
    /// client: every record waits for a commit of its own).
    OneByOne,
    /// This many in flight: a new one is submitted as soon as one ends,
    /// as steady traffic from many clients would.
    Window(usize),
}

/// Durable trivial tasks per second, added to ended, on 2 workers: through
/// `queue` (none: started directly), submitted as `how` says. Each is
/// recorded (fsync off) before it is answered.
async fn durable_per_second(
    host: &Host,
    n: usize,
    queue: Option<&'static str>,
    how: Submitting,
) -> f64 {
    let per_worker = n / 2;
    let begun = std::time::Instant::now();
    let mut jobs = Vec::new();
    for index in 0..2 {
        let w = worker(host, index);
        let plugin = plugin(&w);
        let job = w.clone();
        jobs.push(on(&w, async move {
            let spec = move || TaskSpec {
                factory: "noop".into(),
                args: "null".into(),
                durable: true,
                queue: queue.map(|queue| Placement {
                    queue: queue.into(),
                    key: None,
                    priority: 0,
                    start: None,
                }),
                ..TaskSpec::default()
            };
            match how {
                Submitting::Window(window) => {
                    use futures_util::stream::{FuturesUnordered, StreamExt};
                    let one = || {
                        let submit = job.start_task(plugin.clone(), spec());
                        async move {
                            submit.await.expect("durable").ended().await;
                        }
                    };
                    let mut flying = FuturesUnordered::new();
                    let mut sent = 0;
                    while sent < per_worker.min(window) {
                        flying.push(one());
                        sent += 1;
                    }
                    while flying.next().await.is_some() {
                        if sent < per_worker {
                            flying.push(one());
                            sent += 1;
                        }
                    }
                    job.registry().purge();
                }
                Submitting::Batches | Submitting::OneByOne => {
                    let together = matches!(how, Submitting::Batches);
                    let mut done = 0;
                    while done < per_worker {
                        let mut batch = Vec::new();
                        let mut submits = Vec::new();
                        for _ in 0..64.min(per_worker - done) {
                            let submit = job.start_task(plugin.clone(), spec());
                            if together {
                                submits.push(submit);
                            } else {
                                batch.push(submit.await.expect("durable"));
                            }
                        }
                        for handle in futures_util::future::join_all(submits).await {
                            batch.push(handle.expect("durable"));
                        }
                        done += batch.len();
                        for mut handle in batch {
                            handle.ended().await;
                        }
                        job.registry().purge();
                    }
                }
            }
        }));
    }
    for job in jobs {
        job.await;
    }
    (per_worker * 2) as f64 / begun.elapsed().as_secs_f64()
}

/// From submission to factory entered, `n` tasks one after another on
/// worker 0, each with a key of its own in `queue` (or started directly).
async fn submit_to_start(host: &Host, n: usize, queue: Option<&'static str>) -> Vec<Duration> {
    let w = worker(host, 0);
    let plugin = plugin(&w);
    let job = w.clone();
    on(&w, async move {
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let wall = SystemTime::now();
            let mut handle = match queue {
                Some(queue) => queued(&job, &plugin, "noop", queue, Some(format!("probe-{i}"))),
                None => super::spawn(&job, &plugin, "noop", "null"),
            };
            handle.ended().await;
            let info = job.registry().get(handle.id).expect("task");
            let started = info.started_at.expect("started");
            samples.push(started.duration_since(wall).unwrap_or_default());
        }
        job.registry().purge();
        samples
    })
    .await
}

/// The process's resident set, from /proc.
fn resident_bytes() -> u64 {
    // mimalloc keeps a thread's freed pages for that thread's later
    // allocations and gives them back to the system lazily, so what the
    // waiting tasks' allocations found already resident depended on what
    // ran before (808 to 1,183 B a task over three runs). Given back
    // first, the reading counts only memory in use.
    unsafe extern "C" {
        /// mimalloc's: frees what it holds unused (`force`: all of it).
        fn mi_collect(force: bool);
    }
    // SAFETY: takes no pointers; callable from any thread at any time.
    unsafe { mi_collect(true) };
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// When each of `handles`' tasks entered its factory, in start order,
/// with its index.
fn start_order(w: &WorkerCtx, handles: &[TaskHandle]) -> Vec<(SystemTime, usize)> {
    let mut order: Vec<(SystemTime, usize)> = handles
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let info = w.registry().get(h.id).expect("task listed");
            (info.started_at.expect("started"), i)
        })
        .collect();
    order.sort();
    order
}

pub async fn run(components: &Components) {
    let (host, _storage) = host(components).await;
    println!("| measure | through a queue | direct | ratio | target |");
    println!("|---|---|---|---|---|");

    // Throughput, rounds alternating, median of each side: five, as three
    // moved the ratio by more than its target's margin between runs.
    let n = scaled(100_000);
    let (mut through, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        direct.push(per_second(&host, n, None).await);
        through.push(per_second(&host, n, Some("free")).await);
    }
    let (through, direct) = (super::median(through), super::median(direct));
    println!(
        "| trivial tasks/s, 2 workers, queue without bounds | {through:.0} | {direct:.0} | {:.2}x | at least 0.9x |",
        through / direct
    );

    // A deep queue: a blocker holds key `backlog` (per_key 1), and
    // 100,000 of its tasks wait behind it.
    let deep = scaled(100_000);
    let w0 = worker(&host, 0);
    let bench = plugin(&w0);
    let before = resident_bytes();
    let blocker = queued(&w0, &bench, "idle", "deep", Some("backlog".into()));
    let waiting: Vec<TaskHandle> = (0..deep)
        .map(|_| queued(&w0, &bench, "noop", "deep", Some("backlog".into())))
        .collect();
    let per_waiting = (resident_bytes().saturating_sub(before)) as f64 / deep as f64;
    let probes = scaled(2_000);
    let through_deep = percentiles(submit_to_start(&host, probes, Some("deep")).await);
    let through_empty = percentiles(submit_to_start(&host, probes, Some("free")).await);
    let direct = percentiles(submit_to_start(&host, probes, None).await);
    println!(
        "| submission to start, p50 / p99, with {deep} waiting in the queue | {} / {} | {} / {} | {:.2}x (p50) | |",
        us(through_deep.p50),
        us(through_deep.p99),
        us(direct.p50),
        us(direct.p99),
        through_deep.p50.as_secs_f64() / direct.p50.as_secs_f64()
    );
    println!(
        "| submission to start, p50 / p99, empty queue | {} / {} | {} / {} | {:.2}x (p50) | |",
        us(through_empty.p50),
        us(through_empty.p99),
        us(direct.p50),
        us(direct.p99),
        through_empty.p50.as_secs_f64() / direct.p50.as_secs_f64()
    );
    println!(
        "| resident memory per waiting task ({deep} waiting) | {:.0} B | - | - | under 1 KiB |",
        per_waiting
    );
    blocker.cancel();
    for mut handle in waiting {
        handle.ended().await;
    }
    w0.registry().purge();

    // Fairness: one slot, key a's 10,000 submitted before key b's 10.
    let big = scaled(10_000);
    let holder = queued(&w0, &bench, "idle", "fair", Some("holder".into()));
    let mut handles: Vec<TaskHandle> = (0..big)
        .map(|_| queued(&w0, &bench, "noop", "fair", Some("a".into())))
        .collect();
    handles.extend((0..10).map(|_| queued(&w0, &bench, "noop", "fair", Some("b".into()))));
    holder.cancel();
    for handle in &mut handles {
        handle.ended().await;
    }
    let order = start_order(&w0, &handles);
    let b_by = order
        .iter()
        .enumerate()
        .filter(|(_, (_, i))| *i >= big)
        .map(|(position, _)| position + 1)
        .max()
        .expect("b started");
    println!(
        "| key b's 10 tasks behind key a's {big} (1 slot): all started by start | {b_by} | {} (first in, first out) | - | within the first 20 |",
        big + 10
    );
    w0.registry().purge();

    // Durable: recorded before answered, fsync off.
    let n = scaled(20_000);
    for (submitting, how) in [
        (Submitting::Batches, "64 submitted at once per worker"),
        (Submitting::Window(64), "64 in flight per worker"),
        (Submitting::Window(1024), "1,024 in flight per worker"),
        (Submitting::OneByOne, "submitted one after another"),
    ] {
        // Three alternating rounds, the median of each side: one round
        // moved by 10% between runs of one build.
        let (mut queued, mut direct) = (Vec::new(), Vec::new());
        let profiled = matches!(submitting, Submitting::Window(1024));
        if profiled {
            super::profile("durable-1024", "enable");
        }
        for _ in 0..3 {
            direct.push(durable_per_second(&host, n, None, submitting).await);
            queued.push(durable_per_second(&host, n, Some("free"), submitting).await);
        }
        if profiled {
            super::profile("durable-1024", "disable");
        }
        let (queued, direct) = (super::median(queued), super::median(direct));
        println!(
            "| durable trivial tasks/s, 2 workers, added to ended, fsync off, {how} | {queued:.0} | {direct:.0} | {:.2}x | at least 50,000/s |",
            queued / direct
        );
    }

    // Rate accuracy: 100/s for 10 s.
    let handles: Vec<TaskHandle> = (0..1_500)
        .map(|_| queued(&w0, &bench, "noop", "paced", None))
        .collect();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let order = start_order_so_far(&w0, &handles);
    let first = order[0];
    let in_window = order
        .iter()
        .filter(|at| at.duration_since(first).unwrap_or_default() < Duration::from_secs(10))
        .count();
    println!(
        "| `rate = \"100/s\"`: tasks started in the 10 s from the first start | {in_window} | 1000 | {:.3}x | 1000 +- 5% |",
        in_window as f64 / 1000.0
    );
    for handle in &handles {
        handle.cancel();
    }
    host.shutdown(false).await;
}

/// The start times of those of `handles`' tasks that have started, sorted.
fn start_order_so_far(w: &WorkerCtx, handles: &[TaskHandle]) -> Vec<SystemTime> {
    let mut order: Vec<SystemTime> = handles
        .iter()
        .filter_map(|h| w.registry().get(h.id)?.started_at)
        .collect();
    order.sort();
    order
}
