//! Rust, Python and JavaScript guests side by side, in one run:
//!
//!     cargo bench -p taskhost --bench speed -- guests
//!
//! The same trivial task (`noop`) and idle task (`idle`) from
//! `plugins/bench` (Rust), `plugins/py-examples` (componentize-py) and
//! `plugins/js-examples` (componentize-js), on one host with two workers:
//! spawn latency, trivial tasks per second, and resident memory per idle
//! task (in a fresh process each). Ratios are to Rust.

use super::{
    Percentiles, percentiles, plugin_named, ratio, scaled, spawn, spawn_latency_of, throughput_of,
    until_running, us, worker,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use taskhost::config::AppConfig;
use taskhost::host::Host;
use taskhost::plugin::build::{self, BuildOptions, BuildOutput};

/// The guests: app.toml plugin name, source directory, and how many idle
/// tasks the memory figure holds (a Python task held 11.6 MiB before
/// copy-on-write images, so not 10,000 of them).
const GUESTS: [(&str, &str, usize); 3] = [
    ("rust", "bench", 2000),
    ("python", "py-examples", 200),
    ("js", "js-examples", 200),
];

fn components() -> Vec<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let options = BuildOptions {
        output: BuildOutput::Capture,
        ..BuildOptions::default()
    };
    GUESTS
        .iter()
        .map(|(_, dir, _)| {
            build::build(&repo.join("plugins").join(dir), &options)
                .unwrap_or_else(|e| panic!("build plugins/{dir}: {e:#}"))
        })
        .collect()
}

/// A host with two workers serving the guests of `components` (one per
/// entry of [`GUESTS`], or only `only`'s).
async fn host(components: &[PathBuf], only: Option<&str>) -> (Host, tempfile::TempDir) {
    let storage = tempfile::tempdir().expect("storage dir");
    // `GUESTS_WARM_IMAGE=N` sizes the warm image pool (the default's 32).
    let warm_image = std::env::var("GUESTS_WARM_IMAGE")
        .map(|n| format!("warm_image_instances = {n}\n"))
        .unwrap_or_default();
    let mut text = format!(
        "name = \"guests\"\nworkers = 2\n[limits]\ntasks_per_worker = 10000\n{warm_image}\
         [storage]\npath = {:?}\n",
        storage.path().display().to_string()
    );
    for ((name, _, _), path) in GUESTS.iter().zip(components) {
        if only.is_some_and(|only| only != *name) {
            continue;
        }
        text.push_str(&format!(
            "[plugins.{name}]\npath = {:?}\n",
            path.display().to_string()
        ));
    }
    let config = AppConfig::parse(&text, Path::new("guests.toml"), Path::new(".")).expect("config");
    (super::launch(config).await, storage)
}

/// `GUESTS_MEMORY=<plugin>` re-runs this bench to measure one guest's idle
/// memory in a fresh process: prints bytes per idle task, then exits.
pub async fn memory_run(plugin: &str) {
    let components = components();
    // Only the measured guest: compiling the others frees memory while the
    // window is open (the figure once came out negative).
    let (host, storage) = host(&components, Some(plugin)).await;
    let count = GUESTS
        .iter()
        .find(|(name, _, _)| *name == plugin)
        .expect("a guest")
        .2;
    // One task first, so the plugin's first-use costs are not counted.
    let w = worker(&host, 0);
    let first = spawn(&w, &plugin_named(&w, plugin), "idle", "null");
    until_running(&w, first.id).await;
    let before = settled_proportional_bytes().await;
    let mappings = super::mappings();
    let mut handles = Vec::new();
    for i in 0..count {
        let w = worker(&host, (i % 2) as u32);
        let plugin = plugin_named(&w, plugin);
        handles.push((w.clone(), spawn(&w, &plugin, "idle", "null")));
    }
    for (w, handle) in &handles {
        until_running(w, handle.id).await;
    }
    // Running is recorded as the factory is entered: give every task the
    // moment it needs to reach its sleep, then check that none ended.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (w, handle) in &handles {
        until_running(w, handle.id).await;
    }
    println!(
        "{}",
        (settled_proportional_bytes().await - before) / count as f64
    );
    // Where it went, for whoever runs this alone (`GUESTS_MEMORY=python`):
    // resident growth by kind of mapping (VmRSS, so a copy-on-write
    // image's shared pages count once per task here).
    for line in super::growth_by_mapping(&mappings, count) {
        eprintln!("{line}");
    }
    drop(storage);
    std::process::exit(0);
}

/// The proportional set size once it holds still: sampled every 100 ms
/// until two samples in a row are within 64 KiB (the allocator gives
/// freed memory back to the kernel a while after it is freed, and the
/// compile threads' arenas with it), at most 5 s.
async fn settled_proportional_bytes() -> f64 {
    let mut last = proportional_bytes();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        give_back_heap();
        let now = proportional_bytes();
        if (now - last).abs() < 65536.0 {
            return now;
        }
        last = now;
    }
    last
}

/// Gives the allocators' free pages back now (as the host's purge does),
/// so that what loading the guest freed is not counted against its
/// tasks: mimalloc's (this bench's global allocator, linked by the
/// `mimalloc` crate) and glibc's (SQLite's).
fn give_back_heap() {
    unsafe extern "C" {
        fn mi_collect(force: bool);
    }
    // SAFETY: neither takes pointers; both may be called at any time.
    unsafe {
        mi_collect(true);
        libc::malloc_trim(0);
    }
}

/// Minor page faults of the whole process so far (`getrusage`).
fn minor_faults() -> i64 {
    // SAFETY: getrusage writes only the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_minflt
}

/// The process's proportional set size: resident memory with each shared
/// page counted once however many tasks map it (a copy-on-write image is
/// mapped by every task of its plugin, and VmRSS would count it per
/// mapping).
fn proportional_bytes() -> f64 {
    let rollup =
        std::fs::read_to_string("/proc/self/smaps_rollup").expect("/proc/self/smaps_rollup");
    let kib: f64 = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("Pss");
    kib * 1024.0
}

fn memory_per_idle_task(plugin: &str) -> f64 {
    let exe = std::env::current_exe().expect("bench binary");
    let out = std::process::Command::new(exe)
        .env("GUESTS_MEMORY", plugin)
        .output()
        .expect("memory run");
    assert!(
        out.status.success(),
        "memory run of {plugin} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("bytes per task")
}

fn both(p: &Percentiles) -> String {
    format!("{} / {}", us(p.p50), us(p.p99))
}

pub async fn run() {
    let components = components();
    let (host, _storage) = host(&components, None).await;
    println!("| measure | Rust | Python | JavaScript | Python / Rust, JS / Rust |");
    println!("|---|---|---|---|---|");
    let w0 = worker(&host, 0);
    let mut entered = Vec::new();
    let mut ended = Vec::new();
    for (name, _, _) in GUESTS {
        // Warm up: page faults, lazy statics, the first instance.
        spawn_latency_of(w0.clone(), name, 20).await;
        let n = if name == "rust" {
            scaled(5_000)
        } else {
            scaled(500)
        };
        let (e, d) = spawn_latency_of(w0.clone(), name, n).await;
        entered.push(percentiles(e));
        ended.push(percentiles(d));
    }
    for (what, figures) in [
        ("spawn: start to guest entered, p50 / p99", &entered),
        ("spawn: start to trivial task ended, p50 / p99", &ended),
    ] {
        let p50 = |i: usize| figures[i].p50.as_secs_f64();
        print_row(
            what,
            figures.iter().map(both).collect(),
            [p50(0), p50(1), p50(2)],
        );
    }

    let mut rates = Vec::new();
    let mut faults = Vec::new();
    for (name, _, _) in GUESTS {
        let n = if name == "rust" {
            scaled(50_000)
        } else {
            scaled(2_000)
        };
        // Warm up with a burst: the first task to find the warm image pool
        // full makes the plugin's on-demand copy of its code (about 50 ms,
        // once per build), a first-use cost like compiling.
        throughput_of(&host, 2, 256, (name, "noop", "null")).await;
        let section = format!("guests-{name}");
        super::profile(&section, "enable");
        let before = minor_faults();
        rates.push(throughput_of(&host, 2, n, (name, "noop", "null")).await);
        faults.push((minor_faults() - before) as f64 / n as f64);
        super::profile(&section, "disable");
    }
    // Fewer tasks per second is worse: the ratio is of time per task.
    print_row(
        "throughput, 2 workers, trivial tasks/s",
        rates.iter().map(|r| format!("{r:.0}")).collect(),
        [1.0 / rates[0], 1.0 / rates[1], 1.0 / rates[2]],
    );
    // What the kernel does per task: each fault maps (or copies) a page
    // of the instance's memory, stack or tables.
    print_row(
        "minor page faults per trivial task (the throughput run's)",
        faults.iter().map(|f| format!("{f:.1}")).collect(),
        [faults[0].max(0.1), faults[1], faults[2]],
    );
    host.shutdown(false).await;

    let memory: Vec<f64> = GUESTS
        .iter()
        .map(|(name, _, _)| memory_per_idle_task(name))
        .collect();
    print_row(
        &format!(
            "resident memory per idle task ({} / {} / {} sleeping)",
            GUESTS[0].2, GUESTS[1].2, GUESTS[2].2
        ),
        memory
            .iter()
            .map(|m| format!("{:.1} KiB", m / 1024.0))
            .collect(),
        [memory[0], memory[1], memory[2]],
    );
}

/// One row: what, each guest's figure, and Python's and JS's cost over
/// Rust's (`cost` is per guest, larger is worse).
fn print_row(what: &str, cells: Vec<String>, cost: [f64; 3]) {
    println!(
        "| {what} | {} | {} | {} | {}, {} |",
        cells[0],
        cells[1],
        cells[2],
        ratio(cost[1], cost[0]),
        ratio(cost[2], cost[0])
    );
}
