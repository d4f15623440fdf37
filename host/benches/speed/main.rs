//! taskhost against the raw wasmtime floor, in one run, on one engine.
//!
//!     cargo bench -p taskhost --bench speed
//!
//! Every figure is measured twice: through taskhost (a host with workers,
//! registry, limits, logging off) and through plain wasmtime driving the
//! same component on the same engine (`raw.rs`). It prints a Markdown table
//! the README carries. `SPEED_SCALE=0.1` runs a tenth of the iterations.

/// The allocator the taskhost binary uses (`host/src/main.rs` says why).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod connections;
mod guests;
mod journal;
mod listing;
mod mass;
mod queues;
mod raw;
mod sanic;
mod scaling;
mod traces;

use raw::RawPlugin;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};
use taskhost::application::Application;
use taskhost::bench::WorkerCtx;
use taskhost::config::{AppConfig, TaskSpec};
use taskhost::engine::EngineSettings;
use taskhost::host::Host;
use taskhost::plugin::Plugin;
use taskhost::plugin::build::{self, BuildOptions, BuildOutput};
use taskhost::registry::TaskHandle;
use taskhost::task::{CancelStage, Outcome, TaskState, WorkerId};
use wasmtime::Engine;

/// Idle tasks held at once for the memory figure: the default instance
/// pool's size, so the host runs with the pool a default host has.
const IDLE_TASKS: usize = 10_000;

/// Under `perf record --control fifo:CTL -D -1`, with `SPEED_PERF_CTL=CTL`
/// and `SPEED_PROFILE=SECTION`: records only that section of the bench
/// (`spawn`, `raw-spawn`, `throughput-1`, `throughput-2`, `raw-throughput-1`,
/// `raw-throughput-2`, `cancel`, `raw-cancel`, `guest-cancel` (a guest's
/// `cancel-task` of a sleeper, the Sanic row), `mass`, the queues
/// bench's `durable-1024`, and the guests bench's 2-worker throughput of
/// each guest, `guests-rust`, `guests-python`, `guests-js`), not the
/// set-up around it, and the bench stops after it.
fn profile(section: &str, command: &str) {
    let (Ok(fifo), Ok(wanted)) = (
        std::env::var("SPEED_PERF_CTL"),
        std::env::var("SPEED_PROFILE"),
    ) else {
        return;
    };
    if wanted == section {
        use std::io::Write;
        let mut ctl = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .expect("perf control fifo");
        writeln!(ctl, "{command}").expect("perf control");
        if command == "disable" {
            std::process::exit(0);
        }
    }
}

fn scale() -> f64 {
    std::env::var("SPEED_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn scaled(n: usize) -> usize {
    ((n as f64 * scale()) as usize).max(10)
}

struct Percentiles {
    p50: Duration,
    p99: Duration,
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

fn ratio(ours: f64, floor: f64) -> String {
    format!("{:.2}x", ours / floor)
}

/// One table row: what, taskhost, raw wasmtime, ratio, target.
struct Row([String; 5]);

/// A latency row: p50/p99 of both sides, the ratio taken at `at` (the
/// percentile the target speaks of).
fn latency_row(
    what: &str,
    ours: Vec<Duration>,
    floor: Vec<Duration>,
    at: fn(&Percentiles) -> Duration,
    target: &str,
) -> Row {
    let (ours, floor) = (percentiles(ours), percentiles(floor));
    row(
        what,
        format!("{} / {}", us(ours.p50), us(ours.p99)),
        format!("{} / {}", us(floor.p50), us(floor.p99)),
        ratio(at(&ours).as_secs_f64(), at(&floor).as_secs_f64()),
        target,
    )
}

/// Rows are printed as they are measured, so a long run shows progress.
fn print_row(Row(cells): Row) {
    println!("| {} |", cells.join(" | "));
}

fn row(what: &str, ours: String, floor: String, ratio: String, target: &str) -> Row {
    Row([what.into(), ours, floor, ratio, target.into()])
}

/// The bench app: `bench` (no I/O imports) and `benchio` (imports
/// wasi:http, allowed to loopback, and wasi:keyvalue), state in `storage`.
fn app_toml(components: &Components, storage: &Path, fsync: bool) -> AppConfig {
    let text = format!(
        "name = \"speed\"\nworkers = 2\n\
         [limits]\ntasks_per_worker = {IDLE_TASKS}\n\
         [storage]\npath = {:?}\nfsync = {fsync}\n\
         [plugins.bench]\npath = {:?}\n\
         [plugins.benchio]\npath = {:?}\n\
         [plugins.benchio.grants]\nhttp = [\"http://127.0.0.1:*\"]\n",
        storage.display().to_string(),
        components.bench.display().to_string(),
        components.benchio.display().to_string(),
    );
    AppConfig::parse(&text, Path::new("speed.toml"), Path::new(".")).expect("config")
}

/// The bench's components, built from `plugins/`.
struct Components {
    bench: PathBuf,
    benchio: PathBuf,
}

/// A running bench host and the storage directory it keeps its state in
/// (removed when dropped).
struct BenchHost {
    host: Host,
    storage: tempfile::TempDir,
}

impl std::ops::Deref for BenchHost {
    type Target = Host;
    fn deref(&self) -> &Host {
        &self.host
    }
}

async fn host(components: &Components) -> BenchHost {
    host_with(components, false).await
}

/// A bench host whose storage commits wait for the disk with `fsync`.
async fn host_with(components: &Components, fsync: bool) -> BenchHost {
    let storage = tempfile::tempdir().expect("storage dir");
    let host = launch(app_toml(components, storage.path(), fsync)).await;
    BenchHost { host, storage }
}

/// A running host of `config`, no compile cache, its workers started: the
/// bench hosts of every section.
async fn launch(config: AppConfig) -> Host {
    let settings = EngineSettings {
        compile_cache: None,
        ..EngineSettings::default()
    };
    let app = Application::load(config, &settings, &BuildOptions::default())
        .await
        .expect("application");
    let mut host = app.launch().await.expect("host");
    host.main_tasks_ended().await.expect("no main tasks");
    host.start_workers().await.expect("workers");
    host
}

fn worker(host: &Host, index: u32) -> Arc<WorkerCtx> {
    host.worker(WorkerId::Index(index)).expect("worker").clone()
}

fn plugin(worker: &WorkerCtx) -> Arc<Plugin> {
    plugin_named(worker, "bench")
}

fn plugin_named(worker: &WorkerCtx, name: &str) -> Arc<Plugin> {
    worker.env().plugin(name).expect("bench plugin")
}

/// Runs `f` on the worker's own thread, as its tasks do; starts at once.
fn on<T: Send + 'static>(
    worker: &Arc<WorkerCtx>,
    f: impl Future<Output = T> + Send + 'static,
) -> impl Future<Output = T> + 'static {
    let job = worker.runtime().spawn(f);
    async move { job.await.expect("worker job") }
}

fn spawn(worker: &Arc<WorkerCtx>, plugin: &Arc<Plugin>, factory: &str, args: &str) -> TaskHandle {
    worker
        .spawn(
            plugin.clone(),
            TaskSpec {
                factory: factory.into(),
                args: args.into(),
                ..TaskSpec::default()
            },
        )
        .expect("spawn")
}

fn spawn_named(
    worker: &Arc<WorkerCtx>,
    plugin: &Arc<Plugin>,
    factory: &str,
    name: String,
) -> TaskHandle {
    worker
        .spawn(
            plugin.clone(),
            TaskSpec {
                factory: factory.into(),
                args: "null".into(),
                name: Some(name),
                ..TaskSpec::default()
            },
        )
        .expect("spawn")
}

async fn until_running(worker: &WorkerCtx, id: u64) {
    loop {
        let info = worker.registry().get(id).expect("task registered");
        match info.state {
            TaskState::Running => return,
            state if state.is_ended() => panic!("task {id} ended {state:?}: {:?}", info.outcome),
            _ => tokio::task::yield_now().await,
        }
    }
}

/// `n` tasks of `factory` spread over the host's 2 workers, each started
/// (its factory entered), then given 200 ms to reach the host call it
/// blocks in (`sleep`, `wait-event`): the registry records a task running
/// when its factory is entered, not when it blocks.
async fn blocked_tasks(
    host: &Host,
    n: usize,
    factory: &str,
    args: &str,
) -> Vec<(Arc<WorkerCtx>, TaskHandle)> {
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let w = worker(host, (i % 2) as u32);
        handles.push((w.clone(), spawn(&w, &plugin(&w), factory, args)));
    }
    for (w, handle) in &handles {
        until_running(w, handle.id).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    handles
}

/// taskhost: add a trivial task, wait for its end; also when its factory
/// was entered (the registry's start time).
async fn spawn_latency(worker: Arc<WorkerCtx>, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    spawn_latency_of(worker, "bench", n).await
}

/// [`spawn_latency`] of `plugin`'s `noop`.
async fn spawn_latency_of(
    worker: Arc<WorkerCtx>,
    plugin: &str,
    n: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let plugin = plugin_named(&worker, plugin);
    let w = worker.clone();
    on(&worker, async move {
        let (mut entered, mut ended) = (Vec::new(), Vec::new());
        for i in 0..n {
            let wall = SystemTime::now();
            let begun = Instant::now();
            let mut handle = spawn(&w, &plugin, "noop", "null");
            handle.ended().await;
            ended.push(begun.elapsed());
            let info = w.registry().get(handle.id).expect("task");
            let started = info.started_at.expect("started");
            entered.push(started.duration_since(wall).unwrap_or_default());
            if i % 1000 == 999 {
                w.registry().purge();
            }
        }
        w.registry().purge();
        (entered, ended)
    })
    .await
}

/// taskhost's checked `add_task` (what guests and the control API call):
/// the factory first checks the arguments in the new instance, then runs.
/// From the call to the factory entered.
async fn add_task_latency(worker: Arc<WorkerCtx>, n: usize) -> Vec<Duration> {
    let w = worker.clone();
    on(&worker, async move {
        let mut entered = Vec::new();
        for i in 0..n {
            let wall = SystemTime::now();
            let id = w
                .add_task(
                    "bench",
                    TaskSpec {
                        factory: "noop".into(),
                        args: "null".into(),
                        ..TaskSpec::default()
                    },
                )
                .await
                .expect("add_task")
                .id;
            let info = loop {
                match w.registry().get(id) {
                    Some(info) if info.state.is_ended() => break info,
                    _ => tokio::task::yield_now().await,
                }
            };
            let started = info.started_at.expect("started");
            entered.push(started.duration_since(wall).unwrap_or_default());
            if i % 1000 == 999 {
                w.registry().purge();
            }
        }
        w.registry().purge();
        entered
    })
    .await
}

/// `n` trivial tasks added back to back on `worker` (durable or in memory):
/// how long each `add_task` took to return (for a durable task: recorded
/// and committed), and tasks per second until the last one ended (a
/// durable task also commits its outcome).
async fn add_task_ack(worker: Arc<WorkerCtx>, n: usize, durable: bool) -> (Vec<Duration>, f64) {
    let w = worker.clone();
    on(&worker, async move {
        let mut acks = Vec::with_capacity(n);
        let begun = Instant::now();
        for i in 0..n {
            let asked = Instant::now();
            w.add_task(
                "bench",
                TaskSpec {
                    factory: "noop".into(),
                    args: "null".into(),
                    durable,
                    ..TaskSpec::default()
                },
            )
            .await
            .expect("add_task");
            acks.push(asked.elapsed());
            if i % 1000 == 999 {
                w.registry().purge();
            }
        }
        while w.registry().live_count() > 0 {
            tokio::task::yield_now().await;
        }
        let per_second = n as f64 / begun.elapsed().as_secs_f64();
        w.registry().purge();
        (acks, per_second)
    })
    .await
}

/// raw: new store, instantiate (entered), call, drop (ended).
async fn raw_spawn_latency(raw: &RawPlugin, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let (mut entered, mut ended) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let begun = Instant::now();
        let mut store = raw.store();
        let plugin = raw.instantiate(&mut store).await;
        entered.push(begun.elapsed());
        plugin
            .taskhost_plugin_factories()
            .call_run(&mut store, "noop", "null")
            .await
            .expect("noop")
            .expect("noop ok");
        drop(store);
        ended.push(begun.elapsed());
    }
    (entered, ended)
}

/// Trivial tasks per second on `workers` workers, 64 in flight per worker.
async fn throughput(host: &Host, workers: u32, n: usize) -> f64 {
    throughput_of(host, workers, n, ("bench", "noop", "null")).await
}

/// [`throughput`] of named tasks (Sanic's `add_task(..., name=...)`).
async fn throughput_named(host: &Host, workers: u32, n: usize) -> f64 {
    tasks_per_second(host, workers, n, ("bench", "noop", "null"), true).await
}

/// Tasks of `(plugin, factory, args)` per second on `workers` workers, 64
/// in flight per worker; each must end `done`.
async fn throughput_of(
    host: &Host,
    workers: u32,
    n: usize,
    task: (&'static str, &'static str, &'static str),
) -> f64 {
    tasks_per_second(host, workers, n, task, false).await
}

async fn tasks_per_second(
    host: &Host,
    workers: u32,
    n: usize,
    (plugin, factory, args): (&'static str, &'static str, &'static str),
    named: bool,
) -> f64 {
    tasks_per_second_by(
        host,
        workers,
        n,
        plugin,
        move |job, plugin, i| match named {
            true => spawn_named(job, plugin, factory, format!("burst-{i}")),
            false => spawn(job, plugin, factory, args),
        },
    )
    .await
}

/// Tasks of `plugin` per second on `workers` workers, 64 in flight per
/// worker, each started by `start` (given its worker, the plugin and its
/// number on the worker); each must end `done`.
async fn tasks_per_second_by(
    host: &Host,
    workers: u32,
    n: usize,
    plugin: &'static str,
    start: impl Fn(&Arc<WorkerCtx>, &Arc<Plugin>, usize) -> TaskHandle + Clone + Send + 'static,
) -> f64 {
    let per_worker = n / workers as usize;
    let begun = Instant::now();
    let mut jobs = Vec::new();
    for index in 0..workers {
        let w = worker(host, index);
        let plugin = plugin_named(&w, plugin);
        let job = w.clone();
        let start = start.clone();
        jobs.push(on(&w, async move {
            let mut done = 0;
            while done < per_worker {
                let batch: Vec<TaskHandle> = (0..64.min(per_worker - done))
                    .map(|i| start(&job, &plugin, done + i))
                    .collect();
                done += batch.len();
                for mut handle in batch {
                    handle.ended().await;
                    let info = job.registry().get(handle.id).expect("task");
                    assert_eq!(info.state, TaskState::Done, "{:?}", info.outcome);
                }
                job.registry().purge();
            }
        }));
    }
    for job in jobs {
        job.await;
    }
    (per_worker * workers as usize) as f64 / begun.elapsed().as_secs_f64()
}

fn raw_throughput(raw: &Arc<RawPlugin>, threads: usize, n: usize) -> f64 {
    let per_thread = n / threads;
    let begun = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let raw = raw.clone();
            scope.spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async {
                    for _ in 0..per_thread {
                        raw.run("noop", "null").await.expect("noop");
                    }
                });
            });
        }
    });
    (per_thread * threads) as f64 / begun.elapsed().as_secs_f64()
}

/// From a cancel to the task's end, for tasks of `factory` once they run
/// (and, for a blocked one, sit in their host call). A blocked task is
/// cancelled as `cancel_task` does (cooperatively; its sleep returns
/// `cancelled` and it returns); a spinning one is timed from the moment its
/// cancel is forced (what happens when the grace period runs out), and must
/// end by `stage`.
async fn cancel_latency(
    worker: Arc<WorkerCtx>,
    factory: &'static str,
    stage: CancelStage,
    n: usize,
) -> Vec<Duration> {
    let plugin = plugin(&worker);
    let w = worker.clone();
    on(&worker, async move {
        let mut samples = Vec::new();
        for _ in 0..n {
            let mut handle = spawn(&w, &plugin, factory, "null");
            until_running(&w, handle.id).await;
            // Let it reach its sleep or its loop.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let begun = Instant::now();
            match stage {
                CancelStage::Cooperative => handle.cancel(),
                CancelStage::Forced => handle.cancel_within(Duration::ZERO),
            }
            handle.ended().await;
            samples.push(begun.elapsed());
            let info = w.registry().get(handle.id).expect("task");
            assert_eq!(
                info.outcome,
                Some(Outcome::Cancelled { stage }),
                "{factory} must end {stage:?}"
            );
        }
        w.registry().purge();
        samples
    })
    .await
}

/// raw: the same cancels on plain wasmtime. `Cooperative`: a call of `idle`
/// blocked in the raw host's sleep is woken with `cancelled`, and the guest
/// returns it. `Forced`: a call of `spin` is interrupted by its epoch
/// callback.
async fn raw_cancel(raw: &Arc<RawPlugin>, stage: CancelStage, n: usize) -> Vec<Duration> {
    let factory = match stage {
        CancelStage::Cooperative => "idle",
        CancelStage::Forced => "spin",
    };
    let local = tokio::task::LocalSet::new();
    let raw = raw.clone();
    local
        .run_until(async move {
            let mut samples = Vec::new();
            for _ in 0..n {
                let mut store = raw.store();
                let stop = store.data().stopper();
                let plugin = raw.instantiate(&mut store).await;
                let call = tokio::task::spawn_local(async move {
                    let result = plugin
                        .taskhost_plugin_factories()
                        .call_run(&mut store, factory, "null")
                        .await;
                    let expected = match stage {
                        CancelStage::Cooperative => matches!(result, Ok(Err(_))),
                        CancelStage::Forced => result.is_err(),
                    };
                    assert!(
                        expected,
                        "{factory} cancelled {stage:?} ended with {result:?}"
                    );
                });
                tokio::time::sleep(Duration::from_millis(2)).await;
                let begun = Instant::now();
                match stage {
                    CancelStage::Cooperative => stop.cancel(),
                    CancelStage::Forced => stop.force(),
                }
                call.await.expect("raw task");
                samples.push(begun.elapsed());
            }
            samples
        })
        .await
}

/// What a bench plugin factory that times `n` of something itself
/// measured (`cancel_sleepers`: a guest's `cancel-task` of a sleeper on
/// its own worker, until it ended; `join_children`: a guest's start and
/// join of a `noop` child): its samples, in nanoseconds.
async fn guest_samples(worker: Arc<WorkerCtx>, factory: &'static str, n: usize) -> Vec<Duration> {
    let plugin = plugin(&worker);
    let w = worker.clone();
    on(&worker, async move {
        let mut handle = spawn(&w, &plugin, factory, &format!("{{\"n\": {n}}}"));
        handle.ended().await;
        let info = w.registry().get(handle.id).expect("task");
        let Some(Outcome::Done { result }) = info.outcome else {
            panic!("{factory}: {:?}", info.outcome);
        };
        w.registry().purge();
        let samples: Vec<u64> = serde_json::from_str(&result).expect("nanoseconds");
        samples.into_iter().map(Duration::from_nanos).collect()
    })
    .await
}

/// Run time of one task of `factory` with `args` on a worker.
async fn task_time(worker: Arc<WorkerCtx>, factory: &'static str, args: String) -> Duration {
    let plugin = plugin(&worker);
    let w = worker.clone();
    on(&worker, async move {
        let begun = Instant::now();
        let mut handle = spawn(&w, &plugin, factory, &args);
        handle.ended().await;
        let elapsed = begun.elapsed();
        let info = w.registry().get(handle.id).expect("task");
        assert_eq!(info.state, TaskState::Done, "{factory}: {:?}", info.outcome);
        elapsed
    })
    .await
}

async fn raw_time(raw: &RawPlugin, factory: &str, args: &str) -> Duration {
    let begun = Instant::now();
    raw.run(factory, args).await.expect(factory);
    begun.elapsed()
}

/// The middle of three or more figures.
fn median(mut figures: Vec<f64>) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
}

/// The least of repeated timings: the run least disturbed by the machine.
fn best(times: Vec<Duration>) -> Duration {
    times.into_iter().min().expect("samples")
}

/// The host's engine configuration with epoch interruption off: the
/// difference is what the epoch checks cost.
fn engine_without_epochs() -> Engine {
    let mut config = taskhost::engine::pooled_config(&EngineSettings::default());
    config.epoch_interruption(false);
    Engine::new(&config).expect("engine")
}

/// Resident bytes of each mapping of this process, by start address, with
/// its size and name (`/proc/self/smaps`).
fn mappings() -> std::collections::BTreeMap<u64, (u64, String, u64)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
    let mut out = std::collections::BTreeMap::new();
    let mut current = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            let name = fields.nth(4).unwrap_or("[anon]").to_string();
            current = Some(start);
            out.insert(start, (end - start, name, 0));
        } else if first == "Rss:"
            && let Some(start) = current
            && let Some(kib) = fields.next().and_then(|v| v.parse::<u64>().ok())
        {
            out.get_mut(&start).expect("mapping").2 = kib * 1024;
        }
    }
    out
}

/// Lines saying which mappings grew, per task. The instance pool's
/// memories and stacks are huge reservations that wasmtime splits into a
/// mapping per slot as slots are made accessible, so growth is summed by
/// name and by the size of each mapping (exact under 16 MiB, a power of
/// two above): one line per kind of mapping, biggest growth first. The host's own
/// structures are in the heap and malloc's arenas (`[anon]` of 64 MiB).
fn growth_by_mapping(
    before: &std::collections::BTreeMap<u64, (u64, String, u64)>,
    tasks: usize,
) -> Vec<String> {
    let mut kinds: std::collections::BTreeMap<(String, u64), (f64, usize)> = Default::default();
    for (start, (size, name, rss)) in mappings() {
        let was = before.get(&start).map_or(0, |b| b.2);
        // Slot-sized mappings (a memory's accessible part, a fiber stack)
        // by their exact size; reservations by their power of two.
        let class = if size < 16 << 20 {
            size
        } else {
            size.next_power_of_two()
        };
        let kind = kinds.entry((name, class)).or_default();
        kind.0 += rss as f64 - was as f64;
        kind.1 += 1;
    }
    let mut grown: Vec<_> = kinds
        .into_iter()
        .map(|((name, size), (bytes, count))| (bytes / tasks as f64, size, name, count))
        .filter(|(per_task, ..)| per_task.abs() >= 64.0)
        .collect();
    grown.sort_by(|a, b| b.0.total_cmp(&a.0));
    grown
        .into_iter()
        .take(10)
        .map(|(per_task, size, name, count)| {
            format!(
                "{:.1} KiB per task in {count} mapping(s) {name} of {}",
                per_task / 1024.0,
                human_size(size)
            )
        })
        .collect()
}

fn human_size(bytes: u64) -> String {
    let mut size = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if size < 1024.0 {
            return format!("{size:.2} {unit}");
        }
        size /= 1024.0;
    }
    format!("{size:.0} PiB")
}

fn resident_bytes() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib * 1024.0
}

/// Resident memory per idle task, measured in a fresh process (this bench
/// re-run with SPEED_MEMORY set), so earlier allocations do not blur it.
fn memory_per_idle_task(kind: &str) -> f64 {
    let exe = std::env::current_exe().expect("bench binary");
    let out = std::process::Command::new(exe)
        .env("SPEED_MEMORY", kind)
        .output()
        .expect("memory run");
    assert!(
        out.status.success(),
        "memory run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<&str> = stdout.lines().collect();
    let per_task = lines
        .pop()
        .unwrap_or_default()
        .trim()
        .parse()
        .expect("bytes per task");
    for line in lines {
        eprintln!("  {kind}: {line}");
    }
    per_task
}

async fn memory_run(kind: &str, components: &Components) {
    let host = host(components).await;
    let component = &components.bench;
    let before = resident_bytes();
    let before_maps = mappings();
    match kind {
        "taskhost" => {
            let handles = blocked_tasks(&host, IDLE_TASKS, "idle", "null").await;
            // None ended meanwhile.
            for (w, handle) in &handles {
                until_running(w, handle.id).await;
            }
        }
        _ => {
            // 10,000 live instances: the cold pool's engine, where
            // taskhost's own idle tasks past the warm pool run too.
            let raw = Arc::new(RawPlugin::new(
                &worker(&host, 0).env().engines.cold,
                component,
            ));
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async {
                    let asleep = Arc::new(AtomicUsize::new(0));
                    let mut calls = Vec::new();
                    for _ in 0..IDLE_TASKS {
                        let (raw, asleep) = (raw.clone(), asleep.clone());
                        calls.push(tokio::task::spawn_local(async move {
                            raw.run_counting("idle", "null", &asleep).await
                        }));
                    }
                    while asleep.load(Ordering::Relaxed) < IDLE_TASKS {
                        if let Some(ended) = calls.iter().position(|c| c.is_finished()) {
                            let result = calls.swap_remove(ended).await.expect("raw task");
                            panic!("a raw idle task ended: {result:?}");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    for line in growth_by_mapping(&before_maps, IDLE_TASKS) {
                        println!("{line}");
                    }
                    println!("{}", (resident_bytes() - before) / IDLE_TASKS as f64);
                    let _ = std::fs::remove_dir_all(host.storage.path());
                    std::process::exit(0);
                })
                .await
        }
    }
    let per_task = (resident_bytes() - before) / IDLE_TASKS as f64;
    for line in growth_by_mapping(&before_maps, IDLE_TASKS) {
        println!("{line}");
    }
    println!("{per_task}");
    let _ = std::fs::remove_dir_all(host.storage.path());
    std::process::exit(0);
}

fn build_components() -> Components {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let options = BuildOptions {
        output: BuildOutput::Capture,
        ..BuildOptions::default()
    };
    let build = |name: &str| {
        build::build(&repo.join("plugins").join(name), &options)
            .unwrap_or_else(|e| panic!("build plugins/{name}: {e:#}"))
    };
    Components {
        bench: build("bench"),
        benchio: build("benchio"),
    }
}

/// A loopback HTTP server answering every GET with a short text, on its
/// own thread; its address.
fn loopback_server() -> std::net::SocketAddr {
    let (bound, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            bound.send(listener.local_addr().expect("address")).unwrap();
            let app = axum::Router::new().fallback(|| async { "ok" });
            axum::serve(listener, app).await.expect("serve");
        });
    });
    address.recv().expect("server address")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Ok(plugin) = std::env::var("GUESTS_MEMORY") {
        guests::memory_run(&plugin).await;
    }
    if std::env::args().any(|arg| arg == "guests") {
        guests::run().await;
        return;
    }
    if std::env::args().any(|arg| arg == "connections") {
        connections::run().await;
        return;
    }
    let components = build_components();
    let component = components.bench.clone();
    if let Ok(kind) = std::env::var("SPEED_MEMORY") {
        memory_run(&kind, &components).await;
    }
    if std::env::args().any(|arg| arg == "scaling") {
        scaling::run(&components).await;
        return;
    }
    if std::env::args().any(|arg| arg == "mass") {
        mass::run(&components).await;
        return;
    }
    if std::env::args().any(|arg| arg == "queues") {
        queues::run(&components).await;
        return;
    }
    if std::env::args().any(|arg| arg == "journal") {
        journal::run(&components).await;
        return;
    }
    if std::env::args().any(|arg| arg == "listing") {
        listing::run(&components).await;
        return;
    }
    if std::env::args().any(|arg| arg == "traces") {
        traces::run(&components).await;
        return;
    }
    println!("| measure | taskhost | raw wasmtime | ratio | target |");
    println!("|---|---|---|---|---|");

    let host = host(&components).await;
    let engine = worker(&host, 0).env().engines.engine.clone();
    let raw = Arc::new(RawPlugin::new(&engine, &component));
    let w0 = worker(&host, 0);

    // Warm up both paths (page faults in the pool, lazy statics).
    spawn_latency(w0.clone(), 500).await;
    raw_spawn_latency(&raw, 500).await;

    // Alternating rounds, so that a machine slowing down or speeding up
    // during the run shifts both sides alike.
    let n = scaled(20_000);
    let (mut entered, mut ended, mut checked) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw_entered, mut raw_ended) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        profile("spawn", "enable");
        let (ours, ours_ended) = spawn_latency(w0.clone(), n / 4).await;
        profile("spawn", "disable");
        profile("raw-spawn", "enable");
        let (floor, floor_ended) = raw_spawn_latency(&raw, n / 4).await;
        profile("raw-spawn", "disable");
        checked.extend(add_task_latency(w0.clone(), n / 4).await);
        entered.extend(ours);
        ended.extend(ours_ended);
        raw_entered.extend(floor);
        raw_ended.extend(floor_ended);
    }
    let (spawn_ours, spawn_raw) = (
        percentiles(entered.clone()),
        percentiles(raw_entered.clone()),
    );
    for (what, ours, floor, target) in [
        (
            "spawn: start to guest entered, p50/p99",
            entered,
            raw_entered.clone(),
            "p50 <= 1.2x",
        ),
        (
            "spawn: checked add_task to guest entered, p50/p99",
            checked,
            raw_entered,
            "",
        ),
        (
            "spawn: start to trivial task ended, p50/p99",
            ended,
            raw_ended,
            "",
        ),
    ] {
        print_row(latency_row(what, ours, floor, |p| p.p50, target));
    }

    // What importing wasi:http and wasi:keyvalue adds to a task's start:
    // the two components' noop, alternately, in one run; the raw floor is
    // the same component with those imports stubbed.
    let raw_io = RawPlugin::new(&engine, &components.benchio);
    raw_spawn_latency(&raw_io, 500).await;
    let n = scaled(20_000);
    let (mut plain, mut io, mut raw_plain) = (Vec::new(), Vec::new(), Vec::new());
    let mut floor = Vec::new();
    for _ in 0..4 {
        plain.extend(spawn_latency_of(w0.clone(), "bench", n / 4).await.0);
        io.extend(spawn_latency_of(w0.clone(), "benchio", n / 4).await.0);
        raw_plain.extend(raw_spawn_latency(&raw, n / 4).await.0);
        floor.extend(raw_spawn_latency(&raw_io, n / 4).await.0);
    }
    let (plain, raw_plain) = (percentiles(plain).p50, percentiles(raw_plain).p50);
    let io_p50 = percentiles(io.clone()).p50;
    let floor_p50 = percentiles(floor.clone()).p50;
    print_row(latency_row(
        &format!(
            "spawn, plugin importing wasi:http + wasi:keyvalue, p50/p99 (without \
             them: {} taskhost, {} raw)",
            us(plain),
            us(raw_plain)
        ),
        io,
        floor,
        |p| p.p50,
        &format!(
            "p50 <= 1.1x trivial: {} (raw: {})",
            ratio(io_p50.as_secs_f64(), plain.as_secs_f64()),
            ratio(floor_p50.as_secs_f64(), raw_plain.as_secs_f64())
        ),
    ));

    // Three alternating rounds of each; the median of each side.
    let n = scaled(100_000) / 3;
    let mut rates = Vec::new();
    for workers in [1u32, 2] {
        let (mut ours, mut floor, mut named) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            let section = format!("throughput-{workers}");
            profile(&section, "enable");
            ours.push(throughput(&host, workers, n).await);
            profile(&section, "disable");
            let section = format!("raw-throughput-{workers}");
            profile(&section, "enable");
            floor.push(raw_throughput(&raw, workers as usize, n));
            profile(&section, "disable");
            named.push(throughput_named(&host, workers, n).await);
        }
        let (ours, floor, named) = (median(ours), median(floor), median(named));
        rates.push((workers, ours, named, floor));
        print_row(row(
            &format!("throughput, {workers} worker(s), trivial tasks/s (median of 3)"),
            format!("{ours:.0}"),
            format!("{floor:.0}"),
            ratio(ours, floor),
            if workers == 2 { ">= 0.9x raw" } else { "" },
        ));
    }

    // Tasks doing real I/O on 2 workers: no raw floor (it would be the
    // same SQLite and the same HTTP client); the ratio is to trivial tasks.
    let trivial = throughput(&host, 2, scaled(100_000)).await;
    let kv = throughput_of(
        &host,
        2,
        scaled(20_000),
        ("benchio", "kv_get_set", r#"{"key": "k"}"#),
    )
    .await;
    print_row(row(
        "throughput, 2 workers, tasks doing one KV get + set (SQLite, WAL)/s",
        format!("{kv:.0}"),
        "-".into(),
        format!("{} of trivial", ratio(kv, trivial)),
        "",
    ));
    let url = format!("{{\"url\": \"http://{}/\"}}", loopback_server());
    let url: &'static str = Box::leak(url.into_boxed_str());
    let http = throughput_of(&host, 2, scaled(5_000), ("benchio", "http_get", url)).await;
    print_row(row(
        "throughput, 2 workers, tasks doing one loopback HTTP GET/s",
        format!("{http:.0}"),
        "-".into(),
        format!("{} of trivial", ratio(http, trivial)),
        "",
    ));

    // Durable add_task against the in-memory one, on one worker: the
    // third column is the in-memory add_task, not raw wasmtime.
    add_task_ack(w0.clone(), 200, true).await;
    let n = scaled(5_000);
    let (memory, memory_rate) = add_task_ack(w0.clone(), n, false).await;
    let (durable, durable_rate) = add_task_ack(w0.clone(), n, true).await;
    let synced_host = host_with(&components, true).await;
    let (synced, synced_rate) = add_task_ack(worker(&synced_host, 0), scaled(500), true).await;
    synced_host.shutdown(false).await;
    print_row(latency_row(
        "durable add_task acknowledged (recorded), p50/p99; third column: in memory",
        durable,
        memory.clone(),
        |p| p.p50,
        "",
    ));
    print_row(latency_row(
        "durable add_task with [storage] fsync = true, p50/p99; third column: in memory",
        synced,
        memory,
        |p| p.p50,
        "",
    ));
    print_row(row(
        "durable trivial tasks/s, 1 worker, added to ended (fsync off / on); third: in memory",
        format!("{durable_rate:.0} / {synced_rate:.0}"),
        format!("{memory_rate:.0}"),
        format!(
            "{} / {}",
            ratio(memory_rate, durable_rate),
            ratio(memory_rate, synced_rate)
        ),
        "",
    ));

    let p99 = |p: &Percentiles| p.p99;
    let n = scaled(2_000);
    profile("raw-cancel", "enable");
    let raw_cancels = raw_cancel(&raw, CancelStage::Cooperative, n).await;
    profile("raw-cancel", "disable");
    profile("cancel", "enable");
    let cancels = cancel_latency(w0.clone(), "idle", CancelStage::Cooperative, n).await;
    profile("cancel", "disable");
    print_row(latency_row(
        "cancel a task blocked in sleep (cooperative), p50/p99",
        cancels,
        raw_cancels.clone(),
        p99,
        "p99 < 100 us",
    ));
    profile("guest-cancel", "enable");
    let guest_cancels = percentiles(guest_samples(w0.clone(), "cancel_sleepers", n).await);
    profile("guest-cancel", "disable");
    let guest_joins = percentiles(guest_samples(w0.clone(), "join_children", n).await);
    let raw_cancels = percentiles(raw_cancels);
    let n = scaled(1_000);
    print_row(latency_row(
        "cancel a spinning task, from the force (1 ms ticks), p50/p99",
        cancel_latency(w0.clone(), "spin", CancelStage::Forced, n).await,
        raw_cancel(&raw, CancelStage::Forced, n).await,
        p99,
        "p99 < 1500 us",
    ));

    let calls = scaled(2_000_000) as u64;
    let mut ours = Vec::new();
    let mut floor = Vec::new();
    for _ in 0..5 {
        let many = task_time(w0.clone(), "calls", format!("{{\"n\": {calls}}}")).await;
        let none = task_time(w0.clone(), "calls", "{\"n\": 0}".into()).await;
        ours.push(many.saturating_sub(none));
        let many = raw_time(&raw, "calls", &format!("{{\"n\": {calls}}}")).await;
        let none = raw_time(&raw, "calls", "{\"n\": 0}").await;
        floor.push(many.saturating_sub(none));
    }
    let per_call = |d: Duration| d.as_secs_f64() * 1e9 / calls as f64;
    let (ours, floor) = (per_call(best(ours)), per_call(best(floor)));
    print_row(row(
        "host call round trip (app.task-id)",
        format!("{ours:.0} ns"),
        format!("{floor:.0} ns"),
        ratio(ours, floor),
        "<= 1.5x",
    ));

    let ours = memory_per_idle_task("taskhost");
    let floor = memory_per_idle_task("raw");
    let idle = (ours, floor);
    print_row(row(
        &format!("resident memory per idle task ({} sleeping)", IDLE_TASKS),
        format!("{:.1} KiB", ours / 1024.0),
        format!("{:.1} KiB", floor / 1024.0),
        ratio(ours, floor),
        "< 32 KiB",
    ));

    let rounds = scaled(300_000_000) as u64;
    let args = format!("{{\"rounds\": {rounds}}}");
    let no_epochs = RawPlugin::new(&engine_without_epochs(), &component);
    let mut on_raw = Vec::new();
    let mut off = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..3 {
        ours.push(task_time(w0.clone(), "kernel", args.clone()).await);
        on_raw.push(raw_time(&raw, "kernel", &args).await);
        off.push(raw_time(&no_epochs, "kernel", &args).await);
    }
    let (ours, on_raw, off) = (
        best(ours).as_secs_f64(),
        best(on_raw).as_secs_f64(),
        best(off).as_secs_f64(),
    );
    print_row(row(
        "compute kernel, epochs on (taskhost / raw) vs off",
        format!(
            "{:.0} ms ({:+.1}% vs off)",
            ours * 1e3,
            (ours / off - 1.0) * 100.0
        ),
        format!("{:.0} ms on, {:.0} ms off", on_raw * 1e3, off * 1e3),
        ratio(ours, off),
        "< 10% over off",
    ));

    host.shutdown(false).await;

    // Sanic last, with the host stopped: its one loop gets a core to itself,
    // as each of taskhost's workers had.
    println!();
    let n = scaled(20_000);
    match sanic::measure(n, scaled(100_000), scaled(2_000), IDLE_TASKS) {
        Err(why) => println!("Sanic column skipped: {why}"),
        Ok(sanic) => {
            println!(
                "| measure (Sanic {}, {}) | taskhost | raw wasmtime | Sanic | taskhost / Sanic |",
                sanic.sanic,
                sanic.loop_.as_deref().unwrap_or("asyncio")
            );
            println!("|---|---|---|---|---|");
            let micros = |x: f64| format!("{x:.1} us");
            print_row(row(
                "spawn to first line, p50 / p99",
                format!("{} / {}", us(spawn_ours.p50), us(spawn_ours.p99)),
                format!("{} / {}", us(spawn_raw.p50), us(spawn_raw.p99)),
                format!(
                    "{} / {}",
                    micros(sanic.spawn.p50_us),
                    micros(sanic.spawn.p99_us)
                ),
                &ratio(spawn_ours.p50.as_secs_f64() * 1e6, sanic.spawn.p50_us),
            ));
            for (workers, ours, named, floor) in &rates {
                print_row(row(
                    &format!("named trivial tasks/s, {workers} worker(s) (unnamed)"),
                    format!("{named:.0} ({ours:.0})"),
                    format!("{floor:.0}"),
                    format!("{:.0} (one loop)", sanic.burst.per_second),
                    &ratio(*named, sanic.burst.per_second),
                ));
            }
            print_row(row(
                "cancel_task of a sleeper on its own worker/loop, p50 / p99",
                format!("{} / {}", us(guest_cancels.p50), us(guest_cancels.p99)),
                format!(
                    "{} / {} (host-side)",
                    us(raw_cancels.p50),
                    us(raw_cancels.p99)
                ),
                format!(
                    "{} / {}",
                    micros(sanic.cancel.p50_us),
                    micros(sanic.cancel.p99_us)
                ),
                &ratio(guest_cancels.p50.as_secs_f64() * 1e6, sanic.cancel.p50_us),
            ));
            print_row(row(
                "start + join of a trivial child on its own worker/loop, p50 / p99",
                format!("{} / {}", us(guest_joins.p50), us(guest_joins.p99)),
                "-".into(),
                format!(
                    "{} / {}",
                    micros(sanic.join.p50_us),
                    micros(sanic.join.p99_us)
                ),
                &ratio(guest_joins.p50.as_secs_f64() * 1e6, sanic.join.p50_us),
            ));
            print_row(row(
                &format!("resident memory per idle task ({IDLE_TASKS} sleeping)"),
                format!("{:.1} KiB", idle.0 / 1024.0),
                format!("{:.1} KiB", idle.1 / 1024.0),
                format!("{:.1} KiB", sanic.idle.bytes_per_task / 1024.0),
                &ratio(idle.0, sanic.idle.bytes_per_task),
            ));
        }
    }
}
