//! Every integration test, in one binary: each module is one concern of the
//! host, run against the real `taskhost` binary and real plugins. One binary
//! links the host crate once (31 binaries linked it 31 times, 50-70 MB
//! each), and the plugins it builds (`taskhost_tests::plugin`, the 20 MB
//! Python and JS components among them) are built once per run, not once
//! per file.

mod build;
mod cli_output;
mod cluster;
mod compile_cache;
mod connections;
mod control;
mod control_file;
mod dashboard;
mod databases;
mod durable;
mod events;
mod foundation;
mod grants;
mod guests;
mod hostile;
mod hot_load_paths;
mod http;
mod joins;
mod js;
mod kv;
mod layers;
mod lifecycle;
mod limits;
mod log_safety;
mod memory;
mod python;
mod queues;
mod readme;
mod refusals;
mod retries;
mod scaffold;
mod schedules;
mod sdk_packages;
mod secrets;
mod singletons;
mod sockets;
mod storage_contract;
mod supervision;
mod task_logs;
mod telemetry;
mod variables;
mod watch;
mod watcher;
mod webhooks;
mod wit_compat;
