//! taskhost runs WebAssembly components as background tasks, the way Sanic
//! runs `app.add_task` coroutines, with a sandbox per task and cancellation
//! that always works.
//!
//! # Layers
//!
//! Each module uses only modules of the layers below its own (the test
//! `tests/tests/integration/layers.rs` reads the `use` lines and holds the crate to
//! this list):
//!
//! 0. Below the vocabulary: `config::value` (a `[config]` value or secret,
//!    the bounded file read) and, above it, `variables::section` (the
//!    `[plugins.NAME.variables]` table), so that a host interface owns its
//!    `app.toml` section while [`config`] embeds it; `task_log` (each
//!    task's kept log lines and the budget they share), which a task's
//!    signal holds; [`trace_context`] (W3C `traceparent`: a task's place
//!    in its trace, which app.toml's task specs and a task's identity
//!    carry).
//! 1. Vocabulary, no host logic: [`task`] (ids, states, [`task::TaskView`]),
//!    [`config`] (app.toml), `bindings` (the WIT), `dirs`,
//!    `private_files`, `grace` (the clock of a cancelled task's grace
//!    period).
//! 2. Parts with one job each: [`lifecycle`] (the event type), [`events`]
//!    (named events), [`registry`] (one worker's tasks, and
//!    [`registry::TaskHandle::cancel`], the one way to cancel), `metrics`,
//!    [`compile_cache`], [`storage`] (what outlives the process: key-value
//!    state, durable tasks, schedules' and queues' state: the traits and
//!    their SQLite backend), `connection_hub` (the listener's open
//!    connections, as tasks see them), `sockets` (`wasi:sockets` behind
//!    the `tcp` grant: the address checks, pinned name lookups, counted
//!    sockets and cancellable streams; below `wasi`, whose context it
//!    configures, and `interface`, which hands its checks to the host's
//!    own connections).
//! 3. `telemetry` (the OTLP trace exporter: spans of tasks and of the
//!    calls they make out of the sandbox, batched on a thread of its own),
//!    below `interface` so that every host interface records its calls'
//!    spans.
//! 4. `queues` (the app's queues at run time: who starts next, counted in
//!    `metrics`), `interface` (what a host interface is to the store: its state per
//!    task and its linking; `store`'s `interfaces!` lists them), `logging`
//!    (writes lifecycle events and task lines), [`engine`]
//!    (the wasmtime engines, through the compile cache), `serve` (how
//!    the two HTTP servers bound their connections),
//!    [`operations::types`] (the requests, answers and error of every
//!    operation, low so that guests' calls can name them), `joins`
//!    (waiting for a task's end, for guests' joins and the API's wait) and
//!    `journal` (a resuming task's journal at run time: replay, then
//!    record).
//! 5. The host interfaces a task imports, one module each, owning its
//!    state and its `add_to_linker`: `app` (the handle to the app; it
//!    reaches the worker only through the narrow `app::TaskScope` trait,
//!    which the worker implements), `wasi` (WASI 0.2, deny by default),
//!    `http` (outbound `wasi:http` behind an allow-list), `keyvalue`
//!    (`wasi:keyvalue` over [`storage`]) and `connections` (websocket
//!    connections of the public listener) and `variables` (`wasi:config`:
//!    the plugin's `[plugins.NAME.variables]`) and `db` (`taskhost:db`:
//!    Postgres and Redis connections the host makes behind the `tcp`
//!    grant, for guests without sockets).
//! 6. `store`: one task's store data, composed of the interfaces' states,
//!    the linker that links them all, and the store's limits.
//! 7. [`plugin`]: component files -> linked, pre-instantiated plugins.
//! 8. `runner`: one task in its own instance, to its outcome.
//! 9. `worker`: threads with a registry each, starting tasks.
//! 10. [`scheduler`]: `[[schedules]]`, a loop each, starting tasks on the
//!     workers; in a cluster a tick runs where it is claimed, through the
//!     narrow [`scheduler::TickClaims`] the cluster implements.
//! 11. [`cluster`]: several hosts as one app over NATS (`[cluster]`): the
//!     connection and the storage backends on it, claims (names, ticks),
//!     requests between hosts, events relayed, roll-out.
//! 12. [`host`]: the workers of a running app.
//! 13. [`operations`]: every operation a caller may perform on the host,
//!     typed, placed on this host or the cluster's.
//! 14. [`control`] (the HTTP API; [`control::routes`] is its table of
//!     endpoints), `listener` (the public routes: websockets and webhooks
//!     that start tasks) and `watch` (hot-load on change), all over a
//!     [`host::Host`].
//! 15. [`application`]: app.toml -> a running host with its API and watch;
//!     `scaffold`: `taskhost new`'s projects.
//! 16. [`cli`]: a thin shell over all of it: parse, call, render.
//!
//! docs/architecture.md walks one request through these layers.

#![warn(unreachable_pub, missing_docs)]

// The heap trim (`host::give_back_heap`) calls mimalloc's `mi_collect`:
// linked into every build of the library (the fuzz targets, the tests),
// not only into the binary that makes mimalloc its allocator.
extern crate mimalloc as _;

// What an embedder uses: load an app, run a host, steer it.
pub mod application;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod engine;
pub mod host;
pub mod lifecycle;
pub mod operations;
pub mod plugin;
pub mod registry;
pub mod task;

// Parts that embedders reach through the types above (`Host::events`,
// `Application::compile_cache`) or not at all.
pub(crate) mod app;
pub(crate) mod bindings;
pub mod compile_cache;
pub(crate) mod connection_hub;
pub(crate) mod connections;
pub(crate) mod db;
pub(crate) mod dirs;
pub mod events;
pub(crate) mod grace;
pub(crate) mod http;
pub(crate) mod interface;
pub(crate) mod joins;
pub(crate) mod journal;
pub(crate) mod keyvalue;
pub(crate) mod listener;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod private_files;
pub(crate) mod queues;
pub(crate) mod runner;
pub(crate) mod scaffold;
pub mod scheduler;
pub(crate) mod serve;
pub(crate) mod sockets;
pub mod storage;
pub(crate) mod store;
pub(crate) mod task_log;
pub(crate) mod telemetry;
pub mod trace_context;
pub(crate) mod variables;
pub(crate) mod wasi;
pub(crate) mod watch;
pub(crate) mod worker;

/// The benchmarks' door to internals (the raw-wasmtime baseline needs the
/// generated bindings; the per-task numbers need a worker's runtime). Not
/// an API: it changes without notice.
#[doc(hidden)]
pub mod bench {
    pub use crate::app::AppContext;
    /// The generated bindings of the `taskhost:plugin` world.
    pub mod bindings {
        pub use crate::bindings::{Plugin, PluginPre, taskhost};
    }
    pub use crate::engine::pooled_config;
    pub use crate::worker::{TaskEnv, WorkerCtx};
}
