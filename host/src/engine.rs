//! The wasmtime engines of a host, and the epoch ticker that drives
//! interruption.
//!
//! Three engines. Two share one configuration and differ in their
//! instance pools (for plugins with small memory images, such as Rust
//! ones); the third maps large memory images copy-on-write (for
//! interpreters: Python, JavaScript). Tasks start in the *warm* pool while it has a free slot: a small pool whose freed slots
//! keep their few dirty pages resident, so the next task reuses them with
//! no page faults and no `madvise`. Past it, tasks run in the *cold* pool,
//! `[limits] instances` slots that give every page back when freed. So a
//! burst of thousands of tasks costs memory while they live, and after they
//! end the host holds at most the warm pool's bound
//! ([`warm_resident_bound`]) more than before. wasmtime keeps what every
//! ever-used slot of one pool dirtied (48 has no setting that bounds how
//! many), which is why one pool cannot do both.
//!
//! A plugin whose data segments exceed [`IMAGE_THRESHOLD`] (a Python
//! component holds an 11 MB interpreter snapshot) runs on the *image*
//! engines instead: its memory image is mapped copy-on-write, so a task pays
//! only for the pages it writes, not for copying the whole snapshot into
//! fresh pages. Two again: a small *warm image* pool, sized for components
//! of a dozen core instances, whose freed slots keep the image mapped and
//! copy back only the pages their task wrote (so the next task of that
//! plugin takes no page fault on them: a trivial JavaScript task took 198
//! faults on demand, 83 with the pool's 32 slots), and past it instances allocated
//! on demand, which keep nothing once freed.
//!
//! Choices, and why (figures in shared/notes/wasmtime-48-facts.md):
//! - epoch interruption, not fuel: a relaxed atomic load per loop back-edge,
//!   and the deadline callback is where cancellation and fairness happen;
//! - `concurrency_support(false)`: we do not use the component-model async
//!   ABI, and turning it off makes instantiation ~3x and host calls ~2x
//!   cheaper;
//! - the pooling allocator: instantiation from pre-reserved slots is ~2-6x
//!   faster than mmap per task, which is what makes a task per instance
//!   affordable.

use crate::compile_cache::CompileCache;
use anyhow::{Context, Result};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. A spinning task is interrupted or made to
/// yield within one or two ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Most task instances alive at once, across all workers (the cold
    /// pool's slots).
    pub max_instances: u32,
    /// Slots of the warm pool.
    pub warm_instances: u32,
    /// Slots of the warm image pool (large-image plugins: Python,
    /// JavaScript); 0 runs every such task on demand.
    pub warm_image_instances: u32,
    /// Wasm stack per task, in bytes; deeper recursion traps.
    pub max_wasm_stack: usize,
    /// Where compiled components are cached; `None` compiles every time.
    pub compile_cache: Option<PathBuf>,
    /// The compile cache's limit on the bytes of its entries; past it the
    /// least recently used go.
    pub compile_cache_max_bytes: u64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_instances: 1000,
            warm_instances: 128,
            warm_image_instances: 32,
            max_wasm_stack: 512 * 1024,
            compile_cache: None,
            compile_cache_max_bytes: crate::compile_cache::DEFAULT_MAX_BYTES,
        }
    }
}

/// The engines, and the compile cache when there is one.
#[derive(Clone)]
pub struct HostEngine {
    /// The warm pool's engine: where tasks start while it has a free slot.
    pub engine: Engine,
    /// The cold pool's engine: where the other tasks run.
    pub cold: Engine,
    /// The engine of plugins with large memory images (copy-on-write, on
    /// demand).
    pub images: Engine,
    /// The warm image pool's engine, where large-image tasks start while
    /// it has a free slot; none when `warm_image_instances` is 0 or the
    /// pool could not be reserved.
    pub warm_images: Option<Engine>,
    /// Free slots of the warm pool.
    pub warm_slots: Arc<WarmSlots>,
    /// Free slots of the warm image pool.
    pub warm_image_slots: Arc<WarmSlots>,
    /// The compile cache, opened at [`EngineSettings::compile_cache`]; none
    /// without one: every load compiles.
    pub cache: Option<Arc<CompileCache>>,
    /// Instances of ended tasks not given back to their pool yet.
    pub(crate) releases: Arc<Releases>,
    /// Instances made, by pool, and the warm pools' free slots.
    pub(crate) pools: PoolMetrics,
}

/// The pool a task's instance came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pool {
    /// The warm pool (`[limits] warm_instances`).
    Warm,
    /// The cold pool: the rest of `[limits] instances`.
    Cold,
    /// The warm image pool of large-image plugins (Python, JavaScript;
    /// `[limits] warm_image_instances`).
    WarmImages,
    /// A large image past the warm image pool, instantiated on demand.
    OnDemand,
}

impl Pool {
    const ALL: [Pool; 4] = [Pool::Warm, Pool::Cold, Pool::WarmImages, Pool::OnDemand];

    /// Its `pool` label in the metrics.
    fn label(self) -> &'static str {
        match self {
            Pool::Warm => "warm",
            Pool::Cold => "cold",
            Pool::WarmImages => "warm_images",
            Pool::OnDemand => "on_demand",
        }
    }

    /// The pool of an instance of a plugin with or without a large image,
    /// made with or without a warm slot.
    pub(crate) fn of(large_image: bool, warm_slot: bool) -> Pool {
        match (large_image, warm_slot) {
            (false, true) => Pool::Warm,
            (false, false) => Pool::Cold,
            (true, true) => Pool::WarmImages,
            (true, false) => Pool::OnDemand,
        }
    }
}

type Labels = Vec<(String, String)>;

fn pool_label(pool: &str) -> Labels {
    vec![("pool".to_string(), pool.to_string())]
}

/// Instances made for tasks, by the pool they came from, and the free
/// slots of the two warm pools: whether `[limits] warm_instances` and
/// `warm_image_instances` fit the load, since a task past them starts in
/// the cold pool or on demand, slower (docs/speed.md). Registered by
/// [`crate::metrics::Metrics::with_pools`]; cloning shares the series.
#[derive(Clone, Debug)]
pub(crate) struct PoolMetrics {
    pub(crate) made: Family<Labels, Counter>,
    pub(crate) free: Family<Labels, Gauge>,
    /// `made`'s series, made once: counting a task's instance takes one
    /// atomic add, no label lookup.
    by_pool: Arc<[Counter; 4]>,
}

impl PoolMetrics {
    fn new() -> PoolMetrics {
        let made = Family::<Labels, Counter>::default();
        let by_pool =
            Arc::new(Pool::ALL.map(|pool| made.get_or_create(&pool_label(pool.label())).clone()));
        PoolMetrics {
            made,
            free: Family::default(),
            by_pool,
        }
    }

    /// Counts an instance made in `pool`.
    pub(crate) fn made(&self, pool: Pool) {
        self.by_pool[pool as usize].inc();
    }

    /// Sets the free-slot gauges from the pools (when scraped).
    pub(crate) fn set_free(&self, engines: &HostEngine) {
        for (pool, slots) in [
            ("warm", &engines.warm_slots),
            ("warm_images", &engines.warm_image_slots),
        ] {
            self.free
                .get_or_create(&pool_label(pool))
                .set(i64::from(slots.free()));
        }
    }
}

/// Instances of tasks whose end has been told but whose stores are not
/// dropped yet. A task's end is told first and its instance given back
/// one scheduler turn later (`runner::Spent`), so whoever awaited the end
/// (a `cancel_task`, a parent's join) goes on without waiting out the
/// drop (measured: 13 us for a trivial task, 26-30 us for one that slept,
/// most of it resetting the slot's pages). Meanwhile the slot is still
/// taken: an instantiation that finds its pool full waits for these
/// releases before it fails ([`Releases::next_done`]).
#[derive(Debug, Default)]
pub(crate) struct Releases {
    pending: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

/// One instance being released: counted until dropped.
pub(crate) struct Releasing<'a>(&'a Releases);

impl Releases {
    /// Counts one instance as being released until the guard is dropped.
    pub(crate) fn begin(&self) -> Releasing<'_> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        Releasing(self)
    }

    /// Waits for the next instance being released to be given back; false
    /// at once if none is being released, so an instantiation that found
    /// its pool full knows that waiting cannot free a slot.
    pub(crate) async fn next_done(&self) -> bool {
        let done = self.done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if self.pending.load(Ordering::Acquire) == 0 {
            return false;
        }
        done.await;
        true
    }
}

impl Drop for Releasing<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
        self.0.done.notify_waiters();
    }
}

/// Dirty bytes of a freed warm memory or table slot kept resident and
/// reset in place (found with the kernel's pagemap scan, so only pages the
/// task wrote are touched); the rest is decommitted.
const WARM_KEEP_RESIDENT: usize = 256 << 10;

/// Bytes of a freed warm fiber stack kept resident (zeroed in place).
const WARM_STACK_KEEP_RESIDENT: usize = 64 << 10;

/// Memories per task: a wasip1-adapted plugin has its own and the
/// adapter's.
const MEMORIES_PER_TASK: usize = 2;

/// The most the warm pool keeps resident once its tasks have ended, in
/// bytes: per slot, two memories' and a stack's kept pages.
pub fn warm_resident_bound(warm_instances: u32) -> u64 {
    warm_instances as u64
        * (MEMORIES_PER_TASK * WARM_KEEP_RESIDENT + WARM_STACK_KEEP_RESIDENT) as u64
}

/// Written bytes of a freed warm image slot's memory kept resident and
/// copied back from the image (found by the pagemap scan): a trivial
/// Python task writes about 700 KiB of its interpreter's memory, a
/// JavaScript one about 330 KiB.
const IMAGE_KEEP_RESIDENT: usize = 1 << 20;

/// Kept bytes of each of a freed warm image slot's tables: a Python
/// component's function table holds 5,810 entries (45 KiB), a JavaScript
/// one's 7,738 (60 KiB).
const IMAGE_TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Tables per slot of the warm image pool: componentize-py's components
/// define one function table and their adapter shims a few more.
const IMAGE_TABLES_PER_TASK: usize = 8;

/// The most the warm image pool keeps resident once its tasks have ended,
/// in bytes: per slot, its memories', tables' and stack's kept pages.
pub fn warm_image_resident_bound(warm_image_instances: u32) -> u64 {
    warm_image_instances as u64
        * (MEMORIES_PER_TASK * IMAGE_KEEP_RESIDENT
            + IMAGE_TABLES_PER_TASK * IMAGE_TABLE_KEEP_RESIDENT
            + WARM_STACK_KEEP_RESIDENT) as u64
}

/// The warm pool's free slots: a task takes one if it can, and gives it
/// back when its store is gone.
#[derive(Debug)]
pub struct WarmSlots {
    free: std::sync::atomic::AtomicU32,
}

/// A slot of the warm pool, held for the life of a task's store.
#[derive(Debug)]
pub struct WarmSlot(Arc<WarmSlots>);

impl WarmSlots {
    /// A pool with `slots` free slots (`[limits] warm_instances`).
    pub fn new(slots: u32) -> Arc<WarmSlots> {
        Arc::new(WarmSlots {
            free: std::sync::atomic::AtomicU32::new(slots),
        })
    }

    /// Slots free now.
    pub fn free(&self) -> u32 {
        self.free.load(Ordering::Relaxed)
    }

    /// A slot, if one is free.
    pub fn take(self: &Arc<Self>) -> Option<WarmSlot> {
        self.free
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| n.checked_sub(1))
            .ok()
            .map(|_| WarmSlot(self.clone()))
    }
}

impl Drop for WarmSlot {
    fn drop(&mut self) {
        self.0.free.fetch_add(1, Ordering::Release);
    }
}

/// Memory mappings a live task holds: 5 measured for a wasip1-adapted
/// plugin (its module's memory and the WASI adapter's, each an accessible
/// part and a reserved rest, and its fiber stack), plus one of margin.
const MAPPINGS_PER_TASK: u64 = 6;

/// Mappings of the process itself (binary, libraries, thread stacks, heap,
/// compiled code), before any task.
const BASE_MAPPINGS: u64 = 1000;

/// What to tell an operator when instantiation failed because the kernel
/// refused a mapping (ENOMEM): with memory to spare, that is the map count
/// or the address-space limit, and both are settings. wasmtime reports a
/// refused `mmap`/`mprotect` as rustix's `Errno`, other paths as
/// `std::io::Error`.
pub fn mapping_refused_hint(error: &wasmtime::Error) -> Option<&'static str> {
    let refused = error.chain().any(|cause| {
        cause
            .downcast_ref::<rustix::io::Errno>()
            .is_some_and(|errno| *errno == rustix::io::Errno::NOMEM)
            || cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::OutOfMemory)
    });
    refused.then_some(
        "the kernel refused a memory mapping: the process may have reached \
         vm.max_map_count or its address-space limit (ulimit -v); raise them, \
         or lower [limits] instances",
    )
}

fn base_config(settings: &EngineSettings) -> Config {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        // A fiber stack's pages are given back (or, in the warm pool, a few
        // kept and zeroed) when its task ends; without zeroing wasmtime
        // keeps every page a task ever touched.
        .async_stack_zeroing(true)
        .concurrency_support(false)
        .max_wasm_stack(settings.max_wasm_stack)
        // Copy-on-write memory images save copying data segments, but map
        // the image separately from the rest of the memory: 8 mappings per
        // live task instead of 5, and Linux caps a process at
        // `vm.max_map_count` (65530 by default), so 10,000 idle tasks would
        // not fit. Copying the few KiB of a small plugin's data is cheap;
        // large images get their own engine ([`image_config`]).
        .memory_init_cow(false);
    config
}

/// Warns when the instance pool could hold more live tasks than the
/// kernel lets a process map: past that, starting a task fails with "Cannot
/// allocate memory" though memory is plentiful.
fn check_map_count(settings: &EngineSettings) {
    let Some(limit) = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
    else {
        return;
    };
    let needed = (u64::from(settings.max_instances) + u64::from(settings.warm_instances))
        * MAPPINGS_PER_TASK
        + BASE_MAPPINGS;
    if needed > limit {
        tracing::warn!(
            "[limits] instances = {} may need up to {needed} memory mappings, but \
             vm.max_map_count is {limit}: tasks past about {} live at once will fail to \
             start. Raise it (sysctl -w vm.max_map_count={}) or lower `instances`",
            settings.max_instances,
            limit.saturating_sub(BASE_MAPPINGS) / MAPPINGS_PER_TASK,
            needed.next_power_of_two()
        );
    }
}

/// Builds the host's engines: pooled when the machine lets us reserve the
/// pools, on-demand otherwise (e.g. under a small `ulimit -v`), with a
/// warning, since a slower host beats no host.
pub fn build_engine(settings: &EngineSettings) -> Result<HostEngine> {
    let cache = match &settings.compile_cache {
        Some(dir) => Some(Arc::new(CompileCache::open(
            dir,
            settings.compile_cache_max_bytes,
        )?)),
        None => None,
    };
    check_map_count(settings);
    let engine = pooled_or_on_demand(
        &pooled_config(settings),
        settings,
        "warm",
        settings.warm_instances,
    )?;
    let cold = pooled_or_on_demand(
        &cold_config(settings),
        settings,
        "cold",
        settings.max_instances,
    )?;
    let images = Engine::new(&image_config(settings))
        .map_err(anyhow::Error::from)
        .context("cannot create the wasmtime engine for large memory images")?;
    let warm_images = match settings.warm_image_instances {
        0 => None,
        slots => match Engine::new(&warm_image_config(settings, slots)) {
            Ok(engine) => Some(engine),
            Err(error) => {
                tracing::warn!(
                    "warm image pool of {slots} slots unavailable ({error:#}): Python and \
                     JavaScript tasks run on demand, about 1.8x slower. Lower [limits] \
                     warm_image_instances or lift `ulimit -v`"
                );
                None
            }
        },
    };
    Ok(HostEngine {
        engine,
        cold,
        images,
        warm_slots: WarmSlots::new(settings.warm_instances),
        warm_image_slots: WarmSlots::new(match warm_images {
            Some(_) => settings.warm_image_instances,
            None => 0,
        }),
        warm_images,
        cache,
        releases: Arc::default(),
        pools: PoolMetrics::new(),
    })
}

fn pooled_or_on_demand(
    config: &Config,
    settings: &EngineSettings,
    which: &str,
    slots: u32,
) -> Result<Engine> {
    match Engine::new(config) {
        Ok(engine) => Ok(engine),
        Err(error) => {
            tracing::warn!(
                "{which} instance pool of {slots} slots unavailable ({error:#}); falling back \
                 to on-demand allocation, which starts tasks about 4x slower. Each slot \
                 reserves 8 GiB of address space (two 4 GiB memories), so about 10,500 \
                 fit in a 47-bit address space: lower [limits] instances, or lift \
                 `ulimit -v`"
            );
            Engine::new(&base_config(settings))
                .map_err(anyhow::Error::from)
                .context("cannot create the wasmtime engine")
        }
    }
}

/// The configuration of the warm engine, where tasks start. Public so that
/// a benchmark can build the very same engine with one setting changed
/// (epochs off) and measure what that setting costs.
pub fn pooled_config(settings: &EngineSettings) -> Config {
    let mut config = base_config(settings);
    let mut pool = pool(settings.warm_instances);
    // A freed slot is reset by copying back only the pages its task wrote
    // (found with the kernel's pagemap scan), up to the bound, instead of
    // `madvise`: no page faults when the slot is reused, and no TLB
    // shootdown hitting the other worker. Measured (benches/speed): trivial
    // tasks on 2 workers, ~34k/s with `madvise`, 65-88k/s kept resident.
    pool.linear_memory_keep_resident(WARM_KEEP_RESIDENT)
        .table_keep_resident(WARM_KEEP_RESIDENT)
        .async_stack_keep_resident(WARM_STACK_KEEP_RESIDENT)
        .pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Freed cold slots whose pages are given back together, in one
/// `process_madvise` call (one TLB flush on Linux 6.16 and later, instead of
/// one per slot).
const COLD_DECOMMIT_BATCH: usize = 64;

/// The configuration of the cold engine: freed slots keep nothing.
fn cold_config(settings: &EngineSettings) -> Config {
    let mut config = base_config(settings);
    let mut pool = pool(settings.max_instances);
    pool.decommit_batch_size(COLD_DECOMMIT_BATCH);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Data segment bytes (summed over a component's core modules) past which
/// a plugin runs on the image engine. Rust plugins hold a few KiB; the
/// interpreters of componentize-py and componentize-js, 11-12 MB.
pub const IMAGE_THRESHOLD: u64 = 1 << 20;

/// The configuration of the image engine: copy-on-write memory images,
/// instances allocated on demand (where large-image tasks run past the
/// warm image pool): nothing to size, no address space reserved, and a
/// freed instance keeps nothing.
fn image_config(settings: &EngineSettings) -> Config {
    let mut config = base_config(settings);
    config
        .memory_init_cow(true)
        .allocation_strategy(InstanceAllocationStrategy::OnDemand);
    config
}

/// The configuration of the warm image engine: [`image_config`]'s
/// copy-on-write images in a pool of `slots` slots sized for components of
/// a dozen core instances, whose freed slots keep their image mapped and
/// reset only the pages their task wrote (up to [`IMAGE_KEEP_RESIDENT`]
/// per memory). Measured (`cargo bench --bench speed -- guests`, one
/// session, `GUESTS_WARM_IMAGE` 0 to 128): trivial tasks on 2 workers,
/// JavaScript 1,689/s on demand, 3,530/s with 32 slots, 3,670/s with 64;
/// Python 1,040, 1,282 and 1,321/s. 32 is the default: past it the gain
/// is small and each slot may keep 2.6 MiB.
fn warm_image_config(settings: &EngineSettings, slots: u32) -> Config {
    let mut config = base_config(settings);
    let mut pool = PoolingAllocationConfig::default();
    // Python's component instantiates 14 core modules and as many shims.
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(48))
        .total_memories(slots.saturating_mul(MEMORIES_PER_TASK as u32))
        .total_tables(slots.saturating_mul(IMAGE_TABLES_PER_TASK as u32))
        .total_stacks(slots)
        .max_memories_per_module(MEMORIES_PER_TASK as u32)
        .max_tables_per_module(2)
        // As many entries as a task may grow a table to on demand: a slot
        // reserves them (address space only) and keeps 64 KiB resident.
        .table_elements(MAX_TABLE_ELEMENTS)
        .linear_memory_keep_resident(IMAGE_KEEP_RESIDENT)
        .table_keep_resident(IMAGE_TABLE_KEEP_RESIDENT)
        .async_stack_keep_resident(WARM_STACK_KEEP_RESIDENT)
        // Every freed slot stays affine to its plugin's image: the next
        // task of that plugin maps nothing.
        .max_unused_warm_slots(slots)
        .pagemap_scan(wasmtime::Enabled::Auto);
    config
        .memory_init_cow(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Whether an instantiation failed because its pool had no room for it
/// (a component past what one slot holds): the caller tries the next
/// engine, as a task past the warm pools runs in the cold one.
pub(crate) fn pool_was_full<T>(instantiated: &wasmtime::Result<T>) -> bool {
    instantiated.as_ref().is_err_and(|error| {
        error
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
    })
}

/// Table elements one task may grow a table to (the store's limiter
/// enforces it; the warm image pool reserves it): function tables of real
/// programs hold thousands, not millions.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Bytes of data segments in all the core modules of `component`: what
/// each new instance would copy without a copy-on-write image.
pub fn data_segment_bytes(component: &[u8]) -> u64 {
    let mut total = 0;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        let Ok(wasmparser::Payload::DataSection(reader)) = payload else {
            continue;
        };
        for data in reader.into_iter().flatten() {
            total += data.data.len() as u64;
        }
    }
    total
}

fn pool(n: u32) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    // A component adapted from wasip1 holds several core instances (the
    // module, the WASI adapter, shims), two memories and a few tables.
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memories_per_module(2)
        .max_tables_per_module(2);
    pool
}

/// Advances the engines' epochs every [`EPOCH_TICK`] on its own thread.
///
/// Holds only weak references to the engines, so it never keeps one alive;
/// dropping the ticker stops the thread.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts the thread that advances `engines`' epoch every
    /// [`EPOCH_TICK`], 1 ms: what interrupts a guest that makes no host
    /// calls (a forced cancel, a timeout) and makes a spinning task yield.
    pub fn start(engines: &[&Engine]) -> Result<EpochTicker> {
        let weak: Vec<_> = engines.iter().map(|e| e.weak()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("taskhost-epoch".into())
            .spawn(move || {
                while !stop_flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    let mut alive = false;
                    for engine in weak.iter().filter_map(|w| w.upgrade()) {
                        engine.increment_epoch();
                        alive = true;
                    }
                    if !alive {
                        break;
                    }
                }
            })
            .context("cannot start the epoch ticker thread")?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Host memory each live task may hold besides its linear memory: its
/// fiber stack's used part (the wasm stack, `wasm_stack_kb`, plus the host
/// calls' frames) and its instance's bookkeeping (measured: ~50 KiB for an
/// idle task). The host's frames are shallow: 128 KiB covers both.
const TASK_OVERHEAD: u64 = 128 << 10;

/// The most memory an app's tasks can make the host hold, by part.
#[derive(Debug, Clone, Copy)]
pub struct WorstCase {
    /// Live tasks at once in the pools (`instances` plus the warm pools;
    /// large-image tasks past the warm image pool are instantiated on
    /// demand and bounded only by `tasks_per_worker` and `tasks_per_app`).
    pub tasks: u64,
    /// All linear memory of live tasks together (`memory_total_mb`).
    pub task_memory: u64,
    /// Stacks and bookkeeping of that many live tasks.
    pub stacks: u64,
    /// What the warm pools keep once tasks have ended.
    pub warm_kept: u64,
    /// What the public listener's connections and requests may buffer
    /// (set by whoever knows the routes: zero here).
    pub listener: u64,
}

impl WorstCase {
    /// The worst case `limits` allow; `listener` is left at zero for whoever
    /// knows the routes.
    pub fn of(limits: &crate::config::Limits) -> WorstCase {
        let tasks = u64::from(limits.instances)
            + u64::from(limits.warm_instances)
            + u64::from(limits.warm_image_instances);
        let per_task = limits.wasm_stack_bytes() as u64 + TASK_OVERHEAD;
        WorstCase {
            tasks,
            task_memory: limits.memory_total_bytes(),
            stacks: tasks.saturating_mul(per_task),
            warm_kept: warm_resident_bound(limits.warm_instances)
                + warm_image_resident_bound(limits.warm_image_instances),
            listener: 0,
        }
    }

    /// Every part together, in bytes: what `taskhost check` weighs against the
    /// machine's memory.
    pub fn total(&self) -> u64 {
        self.task_memory
            .saturating_add(self.stacks)
            .saturating_add(self.warm_kept)
            .saturating_add(self.listener)
    }
}

#[cfg(test)]
mod tests {
    use super::Releases;

    #[tokio::test]
    async fn a_full_pool_waits_only_for_instances_being_released() {
        let releases = Releases::default();
        // Nothing being released: waiting could not free a slot.
        assert!(!releases.next_done().await);
        let releasing = releases.begin();
        let waiter = releases.next_done();
        tokio::pin!(waiter);
        assert!(
            poll_once(waiter.as_mut()).is_none(),
            "it waits while an instance is being released"
        );
        drop(releasing);
        assert!(waiter.await, "told once it was given back");
        assert!(!releases.next_done().await);
    }

    /// The warm image pool resets every page a task wrote in place, however
    /// scattered: upstream wasmtime 48 resets only the first 32 disjoint
    /// runs of written pages and decommits the rest, which the next task
    /// faults in again (vendor/README.md). Failed before the vendored fix:
    /// 32 of the 64 pages faulted again.
    #[test]
    fn a_warm_image_slot_keeps_every_page_its_task_wrote() {
        use wasmtime::{Engine, Instance, Module, PoolingAllocationConfig, Store};
        if !PoolingAllocationConfig::is_pagemap_scan_available() {
            eprintln!("skipped: this kernel has no PAGEMAP_SCAN (Linux 6.7+)");
            return;
        }
        // One byte of image data in each of 128 pages, so all 512 KiB are
        // the image's; `touch` writes every other page: 64 disjoint runs.
        let data: String = (0..128)
            .map(|page| format!("(data (i32.const {}) \"\\07\")\n", page * 4096))
            .collect();
        let wat = format!(
            r#"(module
                (memory (export "memory") 16)
                {data}
                (func (export "touch")
                    (local $page i32)
                    (loop $next
                        (i32.store8 (i32.mul (local.get $page) (i32.const 4096)) (i32.const 9))
                        (local.set $page (i32.add (local.get $page) (i32.const 2)))
                        (br_if $next (i32.lt_u (local.get $page) (i32.const 128)))))
                (func (export "pristine") (result i32)
                    (local $page i32)
                    (loop $next
                        (if (i32.ne (i32.load8_u (i32.mul (local.get $page) (i32.const 4096)))
                                    (i32.const 7))
                            (then (return (i32.const 0))))
                        (local.set $page (i32.add (local.get $page) (i32.const 1)))
                        (br_if $next (i32.lt_u (local.get $page) (i32.const 128))))
                    (i32.const 1)))"#
        );
        let engine = Engine::new(&super::warm_image_config(
            &super::EngineSettings::default(),
            1,
        ))
        .unwrap();
        let module = Module::new(&engine, wat::parse_str(&wat).unwrap()).unwrap();
        let run = || {
            let mut store = Store::new(&engine, ());
            store.set_epoch_deadline(u64::MAX / 2);
            let instance = Instance::new(&mut store, &module, &[]).unwrap();
            let pristine = instance
                .get_typed_func::<(), i32>(&mut store, "pristine")
                .unwrap()
                .call(&mut store, ())
                .unwrap();
            let touch = instance
                .get_typed_func::<(), ()>(&mut store, "touch")
                .unwrap();
            let before = minor_faults_of_this_thread();
            touch.call(&mut store, ()).unwrap();
            (pristine, minor_faults_of_this_thread() - before)
        };
        let (pristine, _) = run();
        assert_eq!(pristine, 1, "a fresh slot holds the image");
        // The one slot again, reset after the first task.
        let (pristine, faults) = run();
        assert_eq!(pristine, 1, "the reset slot holds the image again");
        assert!(
            faults < 8,
            "{faults} of the 64 written pages faulted again: the reset decommitted them"
        );
    }

    /// Function references made while an instance starts (an element
    /// segment at an imported offset, as componentize-py's libraries have)
    /// and by `ref.func` call the functions they name, both from wasm
    /// (`call_indirect`, through the body's pointer) and from the host
    /// (through the array-call trampoline's). The vendored wasmtime makes
    /// them from offsets its modules find at load (vendor/README.md).
    #[test]
    fn function_references_call_the_functions_they_name() {
        let wat = r#"(module
            (import "env" "base" (global $base i32))
            (table 16 funcref)
            (func $decoy (result i32) (i32.const 99))
            (func $one (result i32) (i32.const 1))
            (func $two (result i32) (i32.const 2))
            (func $three (result i32) (i32.const 3))
            (func $four (result i32) (i32.add (call $decoy) (i32.const -95)))
            (elem (global.get $base) func $one $two $three)
            (elem declare func $four)
            (func (export "call") (param i32) (result i32)
                (call_indirect (result i32) (local.get 0)))
            (func (export "four") (result funcref) (ref.func $four))
            (func (export "get") (param i32) (result funcref) (table.get (local.get 0))))"#;
        let (mut store, instance) = instance_at_base(wat, 5);
        let call = instance
            .get_typed_func::<i32, i32>(&mut store, "call")
            .unwrap();
        let from_wasm: Vec<i32> = (5..8).map(|i| call.call(&mut store, i).unwrap()).collect();
        assert_eq!(
            from_wasm,
            [1, 2, 3],
            "call_indirect through the segment's entries"
        );
        let get = instance
            .get_typed_func::<i32, Option<wasmtime::Func>>(&mut store, "get")
            .unwrap();
        let four = instance
            .get_typed_func::<(), Option<wasmtime::Func>>(&mut store, "four")
            .unwrap();
        let mut funcs: Vec<wasmtime::Func> = (5..8)
            .map(|i| get.call(&mut store, i).unwrap().expect("an entry"))
            .collect();
        funcs.push(four.call(&mut store, ()).unwrap().expect("ref.func"));
        let from_host: Vec<i32> = funcs
            .iter()
            .map(|f| {
                f.typed::<(), i32>(&store)
                    .unwrap()
                    .call(&mut store, ())
                    .unwrap()
            })
            .collect();
        assert_eq!(
            from_host,
            [1, 2, 3, 4],
            "the host calls through the trampolines"
        );
    }

    /// The vendored wasmtime keeps an instance's function references in
    /// chunks of 16 made as they are first asked for, not in its
    /// `VMContext` (vendor/README.md). References made in any order, across
    /// many chunks, from a lazy segment, a constant-offset one, `ref.func`
    /// and exports, must each call its own function, and one made before
    /// later chunks were must still do so after them.
    #[test]
    fn function_references_across_chunks_each_call_their_own_function() {
        const FUNCS: i32 = 70;
        let mut wat = String::from(
            r#"(module
            (import "env" "base" (global $base i32))
            (table 160 funcref)"#,
        );
        for i in 0..FUNCS {
            wat.push_str(&format!(
                "\n(func $f{i} (export \"f{i}\") (result i32) (i32.const {i}))"
            ));
        }
        let all: Vec<String> = (0..FUNCS).map(|i| format!("$f{i}")).collect();
        wat.push_str(&format!(
            r#"
            (elem (global.get $base) func {})
            (elem (i32.const 150) func $f69 $f33 $f0)
            (elem declare func $f47)
            (func (export "call") (param i32) (result i32)
                (call_indirect (result i32) (local.get 0)))
            (func (export "ref") (result funcref) (ref.func $f47)))"#,
            all.join(" ")
        ));
        let (mut store, instance) = instance_at_base(&wat, 10);
        let call = instance
            .get_typed_func::<i32, i32>(&mut store, "call")
            .unwrap();
        // One reference first, kept while the others' chunks are made.
        let first = instance
            .get_typed_func::<(), i32>(&mut store, "f65")
            .unwrap();
        assert_eq!(call.call(&mut store, 10 + 65).unwrap(), 65);
        // Scattered, then every one, through the table and as exports.
        for i in [3, 64, 17, 48, 31, 0, 69, 16, 15] {
            assert_eq!(call.call(&mut store, 10 + i).unwrap(), i, "element {i}");
        }
        for i in 0..FUNCS {
            assert_eq!(call.call(&mut store, 10 + i).unwrap(), i, "element {i}");
            let export = instance
                .get_typed_func::<(), i32>(&mut store, &format!("f{i}"))
                .unwrap();
            assert_eq!(export.call(&mut store, ()).unwrap(), i, "export f{i}");
        }
        let constant: Vec<i32> = (150..153)
            .map(|slot| call.call(&mut store, slot).unwrap())
            .collect();
        assert_eq!(constant, [69, 33, 0], "the constant-offset segment");
        let reference = instance
            .get_typed_func::<(), Option<wasmtime::Func>>(&mut store, "ref")
            .unwrap()
            .call(&mut store, ())
            .unwrap()
            .expect("ref.func");
        let reference = reference.typed::<(), i32>(&store).unwrap();
        assert_eq!(reference.call(&mut store, ()).unwrap(), 47, "ref.func");
        assert_eq!(
            first.call(&mut store, ()).unwrap(),
            65,
            "the first reference"
        );
    }

    /// A component links a function one core instance defines into another
    /// without making the exporter's `VMFuncRef` (vendored wasmtime:
    /// `defined_function_import`). The import must call the function in
    /// its own instance, with its own state (a wrong `vmctx` would read
    /// another instance's global), whether called directly or through a
    /// table, and two instances of one component must not share anything.
    #[test]
    fn a_function_linked_between_core_instances_runs_in_its_own() {
        use wasmtime::component::{Component, Linker};
        // `get` sits past the first chunk of A's references.
        let pads: String = (0..20)
            .map(|i| format!("(func (export \"p{i}\") (result i32) (i32.const {i}))\n"))
            .collect();
        let wat = format!(
            r#"(component
                (core module $A
                    (global $g (mut i32) (i32.const 0))
                    {pads}
                    (func (export "set") (param i32) (global.set $g (local.get 0)))
                    (func (export "get") (result i32) (global.get $g)))
                (core instance $a (instantiate $A))
                (core module $B
                    (import "a" "p3" (func $p3 (result i32)))
                    (import "a" "get" (func $get (result i32)))
                    (table 2 funcref)
                    (elem (i32.const 0) func $get $p3)
                    (func (export "call") (param i32) (result i32)
                        (call_indirect (result i32) (local.get 0)))
                    (func (export "direct") (result i32) (call $get)))
                (core instance $b (instantiate $B (with "a" (instance $a))))
                (func (export "set") (param "v" s32) (canon lift (core func $a "set")))
                (func (export "call") (param "slot" s32) (result s32)
                    (canon lift (core func $b "call")))
                (func (export "direct") (result s32) (canon lift (core func $b "direct"))))"#
        );
        let engine = pooled_engine();
        let component = Component::new(&engine, wat::parse_str(&wat).unwrap()).unwrap();
        let linker = Linker::<()>::new(&engine);
        let mut store = store_without_deadline(&engine);
        let instances: Vec<_> = (0..2)
            .map(|_| linker.instantiate(&mut store, &component).unwrap())
            .collect();
        for (instance, value) in instances.iter().zip([7, 9]) {
            let set = instance
                .get_typed_func::<(i32,), ()>(&mut store, "set")
                .unwrap();
            set.call(&mut store, (value,)).unwrap();
        }
        for (instance, value) in instances.iter().zip([7, 9]) {
            let call = instance
                .get_typed_func::<(i32,), (i32,)>(&mut store, "call")
                .unwrap();
            let direct = instance
                .get_typed_func::<(), (i32,)>(&mut store, "direct")
                .unwrap();
            assert_eq!(
                call.call(&mut store, (0,)).unwrap(),
                (value,),
                "through the table"
            );
            assert_eq!(
                call.call(&mut store, (1,)).unwrap(),
                (3,),
                "p3 through the table"
            );
            assert_eq!(
                direct.call(&mut store, ()).unwrap(),
                (value,),
                "called directly"
            );
        }
    }

    /// The pooling allocator's limit on an instance's size still counts the
    /// function references the vendored wasmtime keeps outside the
    /// `VMContext`, so a module whose instances could make more of them
    /// than the limit allows is refused at load, naming them, as upstream
    /// refuses it; otherwise each instance could hold 32 bytes per escaped
    /// function that no limit counts.
    #[test]
    fn the_pool_counts_function_references_in_an_instance_size() {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_core_instances(4)
            .total_memories(4)
            .total_tables(4)
            .max_core_instance_size(64 << 10);
        let mut config = wasmtime::Config::new();
        config.allocation_strategy(pool);
        let engine = wasmtime::Engine::new(&config).unwrap();
        let module = |funcs: usize| {
            let mut wat = String::from("(module");
            for i in 0..funcs {
                wat.push_str(&format!("\n(func (export \"f{i}\"))"));
            }
            wat.push(')');
            wasmtime::Module::new(&engine, wat::parse_str(&wat).unwrap())
        };
        module(100).expect("100 references fit in 64 KiB");
        let error = format!("{:#}", module(4_000).unwrap_err());
        assert!(error.contains("function references"), "{error}");
    }

    /// Element segments at an imported offset are applied lazily by the
    /// vendored wasmtime (vendor/README.md): each one's range is recorded
    /// into the table's defining instance when its instance is created, and
    /// an element's function is made when it is first read. The table must
    /// still read as the segments' in-order application would have left it:
    /// later segments, instances and the startup function's segments win,
    /// bounds trap at the segment that is out of them, and a copy or a read
    /// from the host sees the same functions.
    #[test]
    fn segments_applied_lazily_leave_the_table_as_applied_in_order() {
        use wasmtime::{Global, GlobalType, Instance, Module, Mutability, Store, Val};
        // Slots 0-5 precomputed by the defining module.
        let owner = r#"(module
            (table $t (export "t") 16 funcref)
            (func $a0 (result i32) (i32.const 100)) (func $a1 (result i32) (i32.const 101))
            (func $a2 (result i32) (i32.const 102)) (func $a3 (result i32) (i32.const 103))
            (func $a4 (result i32) (i32.const 104)) (func $a5 (result i32) (i32.const 105))
            (elem (i32.const 0) func $a0 $a1 $a2 $a3 $a4 $a5)
            (func (export "call") (param i32) (result i32)
                (call_indirect (result i32) (local.get 0)))
            (func (export "copy") (param i32 i32 i32)
                (table.copy (local.get 0) (local.get 1) (local.get 2))))"#;
        // Two lazy segments (at `base`, 2: slots 2-4; then slot 4), then
        // two the startup function applies (slots 3 and 6).
        let user = r#"(module
            (import "env" "t" (table $t 16 funcref))
            (import "env" "base" (global $base i32))
            (func $b0 (result i32) (i32.const 200)) (func $b1 (result i32) (i32.const 201))
            (func $b2 (result i32) (i32.const 202)) (func $b3 (result i32) (i32.const 203))
            (func $e (result i32) (i32.const 299))
            (elem (table $t) (global.get $base) func $b0 $b1 $b2)
            (elem (table $t) (i32.const 4) func $b3)
            (elem (table $t) (i32.const 3) funcref (ref.func $e))
            (elem (table $t) (i32.const 6) func $b1)
            (func (export "call") (param i32) (result i32)
                (call_indirect (result i32) (local.get 0))))"#;
        // A later instance's lazy segment, at `base` 3.
        let later = r#"(module
            (import "env" "t" (table $t 16 funcref))
            (import "env" "base" (global $base i32))
            (func $c0 (result i32) (i32.const 300))
            (elem (table $t) (global.get $base) func $c0))"#;
        // Slot 0, then a segment past the table's end: the instance traps
        // there, with slot 0 already written.
        let past_the_end = r#"(module
            (import "env" "t" (table $t 16 funcref))
            (func $d0 (result i32) (i32.const 400))
            (elem (table $t) (i32.const 0) func $d0)
            (elem (table $t) (i32.const 15) func $d0 $d0))"#;
        let engine = pooled_engine();
        let module = |wat: &str| Module::new(&engine, wat::parse_str(wat).unwrap()).unwrap();
        let mut store = store_without_deadline(&engine);
        let base = |store: &mut Store<()>, value| {
            Global::new(
                store,
                GlobalType::new(wasmtime::ValType::I32, Mutability::Const),
                Val::I32(value),
            )
            .unwrap()
        };
        let owner = Instance::new(&mut store, &module(owner), &[]).unwrap();
        let table = owner.get_table(&mut store, "t").unwrap();
        let two = base(&mut store, 2);
        let user = Instance::new(&mut store, &module(user), &[table.into(), two.into()]).unwrap();
        let three = base(&mut store, 3);
        Instance::new(&mut store, &module(later), &[table.into(), three.into()]).unwrap();
        let trap = Instance::new(&mut store, &module(past_the_end), &[table.into()])
            .expect_err("a segment past the table's end traps");
        assert_eq!(
            trap.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::TableOutOfBounds),
            "{trap:#}"
        );

        let expected = [400, 101, 200, 300, 203, 105, 201];
        for instance in [owner, user] {
            let call = instance
                .get_typed_func::<i32, i32>(&mut store, "call")
                .unwrap();
            let got: Vec<i32> = (0..7).map(|i| call.call(&mut store, i).unwrap()).collect();
            assert_eq!(got, expected, "call_indirect through the table");
            let uninitialized = call.call(&mut store, 7).expect_err("slot 7 is null");
            assert_eq!(
                uninitialized.downcast_ref::<wasmtime::Trap>(),
                Some(&wasmtime::Trap::IndirectCallToNull)
            );
        }
        let copy = owner
            .get_typed_func::<(i32, i32, i32), ()>(&mut store, "copy")
            .unwrap();
        copy.call(&mut store, (8, 0, 7)).unwrap();
        let from_host: Vec<i32> = (8..15)
            .map(|i| {
                let func = table.get(&mut store, i).unwrap();
                let func = func.as_func().unwrap().expect("a function");
                func.typed::<(), i32>(&store)
                    .unwrap()
                    .call(&mut store, ())
                    .unwrap()
            })
            .collect();
        assert_eq!(from_host, expected, "a copy, read from the host");
    }

    /// A table whose initial value is an expression is filled by the
    /// startup function before its segments are applied, so its segments
    /// stay there too (the first lazy version applied them before, and the
    /// fill overwrote them: `[2, 2]`).
    #[test]
    fn a_segment_over_a_table_filled_with_an_initial_value_is_kept() {
        use wasmtime::{Func, Global, GlobalType, Instance, Module, Mutability, Val};
        let wat = r#"(module
            (import "env" "g" (global $g funcref))
            (table $t 4 funcref (global.get $g))
            (func $f (result i32) (i32.const 1))
            (elem (table $t) (i32.const 0) func $f)
            (func (export "call") (param i32) (result i32)
                (call_indirect $t (result i32) (local.get 0))))"#;
        let engine = pooled_engine();
        let module = Module::new(&engine, wat::parse_str(wat).unwrap()).unwrap();
        let mut store = store_without_deadline(&engine);
        let two = Func::wrap(&mut store, || 2i32);
        let g = Global::new(
            &mut store,
            GlobalType::new(wasmtime::ValType::FUNCREF, Mutability::Const),
            Val::FuncRef(Some(two)),
        )
        .unwrap();
        let instance = Instance::new(&mut store, &module, &[g.into()]).unwrap();
        let call = instance
            .get_typed_func::<i32, i32>(&mut store, "call")
            .unwrap();
        let got: Vec<i32> = (0..2).map(|i| call.call(&mut store, i).unwrap()).collect();
        assert_eq!(got, [1, 2], "the segment over the fill, the fill past it");
    }

    /// The warm engine's configuration with the defaults: what the table
    /// and function-reference tests instantiate in.
    fn pooled_engine() -> wasmtime::Engine {
        wasmtime::Engine::new(&super::pooled_config(&super::EngineSettings::default())).unwrap()
    }

    /// An instance of `wat` (which imports its table offset as the constant
    /// global `env.base`) with `base` given, on the pooled engine.
    fn instance_at_base(wat: &str, base: i32) -> (wasmtime::Store<()>, wasmtime::Instance) {
        use wasmtime::{Global, GlobalType, Instance, Module, Mutability, Val, ValType};
        let engine = pooled_engine();
        let module = Module::new(&engine, wat::parse_str(wat).unwrap()).unwrap();
        let mut store = store_without_deadline(&engine);
        let base = Global::new(
            &mut store,
            GlobalType::new(ValType::I32, Mutability::Const),
            Val::I32(base),
        )
        .unwrap();
        let instance = Instance::new(&mut store, &module, &[base.into()]).unwrap();
        (store, instance)
    }

    /// A store whose epoch deadline is far enough never to interrupt a test.
    fn store_without_deadline(engine: &wasmtime::Engine) -> wasmtime::Store<()> {
        let mut store = wasmtime::Store::new(engine, ());
        store.set_epoch_deadline(u64::MAX / 2);
        store
    }

    fn minor_faults_of_this_thread() -> i64 {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage fills the struct it is given.
        let usage = unsafe {
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
            usage.assume_init()
        };
        usage.ru_minflt
    }

    /// Polls `future` once with a waker that does nothing.
    fn poll_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.poll(&mut cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        }
    }
}
