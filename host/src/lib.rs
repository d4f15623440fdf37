//! taskhost runs WebAssembly components as background tasks, the way Sanic
//! runs `app.add_task` coroutines, with a sandbox per task and cancellation
//! that always works.
//!
//! Data flows one way: [`config`] (app.toml) -> [`plugin`] (components) ->
//! [`worker`] (threads with registries) -> [`runner`] (one task's store) ->
//! [`app`] (the calls a task makes back into the host). [`application`]
//! strings them together; [`cli`] is a thin shell over it.

pub mod app;
pub mod application;
pub mod bindings;
pub mod cli;
pub mod compile_cache;
pub mod config;
pub mod control;
pub mod dirs;
pub mod engine;
pub mod events;
pub mod host;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod plugin;
pub mod private_files;
pub mod registry;
pub mod runner;
pub mod task;
pub mod watch;
pub mod worker;
