//! The one wasmtime `Engine` of a host, and the epoch ticker that drives
//! interruption.
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
    /// Most task instances alive at once, across all workers.
    pub max_instances: u32,
    /// Wasm stack per task, in bytes; deeper recursion traps.
    pub max_wasm_stack: usize,
    /// Where compiled components are cached; `None` compiles every time.
    pub compile_cache: Option<PathBuf>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_instances: 1000,
            max_wasm_stack: 512 * 1024,
            compile_cache: None,
        }
    }
}

/// The engine, and its compile cache when it has one.
#[derive(Clone)]
pub struct HostEngine {
    pub engine: Engine,
    pub cache: Option<Arc<CompileCache>>,
}

/// Dirty bytes of a freed memory or table slot kept resident and reset in
/// place. Bounded in total by wasmtime's warm-slot cap (100 slots).
const KEEP_RESIDENT: usize = 2 << 20;

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
        .concurrency_support(false)
        .max_wasm_stack(settings.max_wasm_stack)
        // Copy-on-write memory images save copying data segments, but map
        // the image separately from the rest of the memory: 8 mappings per
        // live task instead of 5, and Linux caps a process at
        // `vm.max_map_count` (65530 by default), so 10,000 idle tasks would
        // not fit. Copying the few KiB of a plugin's data is cheap.
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
    let needed = u64::from(settings.max_instances) * MAPPINGS_PER_TASK + BASE_MAPPINGS;
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

/// Builds the host's engine: pooled when the machine lets us reserve the
/// pool, on-demand otherwise (e.g. under a small `ulimit -v`), with a
/// warning, since a slower host beats no host.
pub fn build_engine(settings: &EngineSettings) -> Result<HostEngine> {
    let cache = match &settings.compile_cache {
        Some(dir) => Some(Arc::new(CompileCache::open(dir)?)),
        None => None,
    };
    check_map_count(settings);
    let engine = match Engine::new(&pooled_config(settings)) {
        Ok(engine) => engine,
        Err(error) => {
            tracing::warn!(
                "instance pool of {} slots unavailable ({error:#}); falling back to \
                 on-demand allocation, which starts tasks about 4x slower. Each slot \
                 reserves 8 GiB of address space (two 4 GiB memories), so about 10,500 \
                 fit in a 47-bit address space: lower [limits] instances, or lift \
                 `ulimit -v`",
                settings.max_instances
            );
            Engine::new(&base_config(settings))
                .map_err(anyhow::Error::from)
                .context("cannot create the wasmtime engine")?
        }
    };
    Ok(HostEngine { engine, cache })
}

/// The configuration of a pooled host engine. Public so that a benchmark
/// can build the very same engine with one setting changed (epochs off) and
/// measure what that setting costs.
pub fn pooled_config(settings: &EngineSettings) -> Config {
    let mut config = base_config(settings);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(settings)));
    config
}

fn pooling(settings: &EngineSettings) -> PoolingAllocationConfig {
    let n = settings.max_instances;
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
    // A freed slot is reset by copying its dirty pages back (found with
    // the kernel's pagemap scan) instead of `madvise`: no page faults when
    // the slot is reused, and no TLB shootdown hitting the other worker.
    // Measured (benches/speed): trivial tasks on 2 workers, ~34k/s before,
    // 65-88k/s after.
    pool.linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT);
    pool
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on its own thread.
///
/// Holds only a weak reference to the engine, so it never keeps one alive;
/// dropping the ticker stops the thread.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> Result<EpochTicker> {
        let weak = engine.weak();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("taskhost-epoch".into())
            .spawn(move || {
                while !stop_flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
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
