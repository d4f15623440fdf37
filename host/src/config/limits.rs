//! `[limits]` and `[plugins.NAME.limits]`: bounds on what plugins can make
//! the host spend. Every bound has a default, so both tables are optional;
//! a zero is refused rather than read as "unlimited", because a limit that
//! silently stops limiting is worse than an error.

use anyhow::{Result, bail};
use serde::Deserialize;
use std::time::Duration;

/// Longest task or event name a guest may use, in bytes. Names are keys in
/// maps and fields of every log line: they are meant to be short.
pub const MAX_NAME_BYTES: usize = 256;

/// Largest component file taskhost loads, in bytes (256 MiB). The biggest
/// real plugins, an interpreter and its standard library built with
/// componentize-py, are about 40 MiB; a bound keeps a wrong path (a disk
/// image, a log) from being read into memory whole.
pub const MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// A request that ran into one of the host's bounds: which bound, its
/// maximum, and what was asked. Callers branch on the type (the control
/// API answers 429 or 413, a guest gets `limit`); people read `Display`,
/// which names the setting that raises the bound when one does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct Limit {
    /// What is bounded: "task name", "live tasks of worker 0", ...
    pub what: String,
    /// The bound, in `unit`.
    pub max: u64,
    /// What the request asked for, in `unit`: more than `max`.
    pub got: u64,
    /// What `max` and `got` count.
    pub unit: LimitUnit,
    /// The `[limits]` key that sets the bound; none for fixed bounds.
    pub setting: Option<&'static str>,
}

/// What a [`Limit`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitUnit {
    /// Bytes: of a name, arguments, a payload, a key or value, a plugin's
    /// buckets.
    Bytes,
    /// Live tasks.
    Tasks,
    /// Keys of a key-value bucket.
    Keys,
    /// Schedules guests added at run time.
    Schedules,
}

impl Limit {
    /// A name (task, factory, plugin, event) longer than [`MAX_NAME_BYTES`].
    pub fn name(what: &str, got: usize) -> Limit {
        Limit {
            what: what.to_string(),
            max: MAX_NAME_BYTES as u64,
            got: got as u64,
            unit: LimitUnit::Bytes,
            setting: None,
        }
    }

    /// `text`'s length against [`MAX_NAME_BYTES`].
    pub fn check_name(what: &str, text: &str) -> Result<(), Limit> {
        if text.len() > MAX_NAME_BYTES {
            return Err(Limit::name(what, text.len()));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let unit = match self.unit {
            LimitUnit::Bytes => " bytes",
            LimitUnit::Tasks => "",
            LimitUnit::Keys => " keys",
            LimitUnit::Schedules => " schedules",
        };
        let mut text = format!(
            "{} may be at most {}{unit}, got {}",
            self.what, self.max, self.got
        );
        if let Some(setting) = self.setting {
            text += &format!(" ([limits] {setting})");
        }
        text
    }
}

/// A plugin's name: 1 to [`MAX_NAME_BYTES`] bytes, no control characters.
/// It is a key in maps, a label of metrics and a field of every log line of
/// its tasks.
pub fn check_plugin_name(name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("a plugin name must not be empty");
    }
    Limit::check_name("a plugin name", name)?;
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        bail!("a plugin name may not hold control characters, got {c:?} in {name:?}");
    }
    Ok(())
}

/// Task names starting with this are the host's own: the task of
/// websocket connection N is `ws:N`. Nothing else may take one, so a
/// connection's task always gets its name and `cancel ws:N` reaches only
/// that connection's task.
pub const CONNECTION_NAME_PREFIX: &str = "ws:";

/// The name of websocket connection `id`'s task.
pub fn connection_task_name(id: u64) -> String {
    format!("{CONNECTION_NAME_PREFIX}{id}")
}

/// Why `name` cannot be given to a task that is not a connection's; none
/// if it can.
pub fn reserved_name(name: &str) -> Option<String> {
    name.starts_with(CONNECTION_NAME_PREFIX).then(|| {
        format!(
            "task names starting with `{CONNECTION_NAME_PREFIX}` are the host's own (websocket \
             connections' tasks): pick another than {name:?}"
        )
    })
}

/// Longest bucket name, in bytes: names are for people and for URLs.
pub const MAX_BUCKET_NAME_BYTES: usize = 64;

/// A key-value bucket's name: 1 to [`MAX_BUCKET_NAME_BYTES`] of ASCII
/// letters, digits, `-`, `_` and `.`, not starting with `.`, so it is safe
/// in a URL path, a log line and a shell. The error says the rule.
pub fn check_bucket_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_BUCKET_NAME_BYTES {
        return Err(format!(
            "a bucket name must be 1 to {MAX_BUCKET_NAME_BYTES} bytes, got {} ({name:?})",
            name.len()
        ));
    }
    if name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "bucket name {name:?} may hold only ASCII letters, digits, `-`, `_` and `.` \
             (not first)"
        ));
    }
    Ok(())
}

/// Largest key-value value app.toml may allow: SQLite's own bound is
/// 1e9 bytes, and a value is read whole into memory.
pub(super) const MAX_KV_VALUE_BYTES: usize = 256 << 20;

/// Largest wasm stack app.toml may ask for: the host runs each task on a
/// 2 MiB native stack, which must hold the wasm stack and the host calls
/// made from it.
pub(super) const MAX_WASM_STACK_KB: usize = 1536;

/// Reads `keep_ended`: a duration of at least 1 second, as text.
fn keep_ended<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    match humantime::parse_duration(&text) {
        Ok(keep) if keep >= std::time::Duration::from_secs(1) => Ok(Some(keep)),
        _ => Err(serde::de::Error::custom(format!(
            "`keep_ended` = {text:?} is not a duration of at least 1s such as \"1h\" or \"30m\" \
             (ended tasks stay listed that long; `ended_tasks_per_worker` bounds their count)"
        ))),
    }
}

/// The app-wide `[limits]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory one task may grow to, in MiB; `memory.grow` past it
    /// fails (a Rust guest then aborts with "memory allocation failed").
    pub memory_mb: u64,
    /// Linear memory all live tasks may hold together, in MiB; a
    /// `memory.grow` that would pass it fails like one past `memory_mb`.
    /// None (the default): half of this machine's memory, so that no mix
    /// of tasks can make the host run the machine out of memory.
    pub memory_total_mb: Option<u64>,
    /// Wall-clock time a task may run, in milliseconds; then it is
    /// cancelled (forced after the grace period) and ends `failed`. None
    /// (the default): background tasks may run as long as the host does.
    pub timeout_ms: Option<u64>,
    /// Wasm stack per task, in KiB; deeper recursion traps with a stack
    /// overflow. Engine-wide, so not settable per plugin.
    pub wasm_stack_kb: usize,
    /// Task instances the host keeps slots for (the instance pool); also
    /// the most tasks that can be alive at once.
    pub instances: u32,
    /// Slots of the warm pool, where tasks start while one is free: its
    /// freed slots keep a few pages resident for a fast restart, so after
    /// tasks end the host keeps at most this many slots' worth
    /// (`engine::warm_resident_bound`, 576 KiB each). Tasks past it run in
    /// the cold pool (`instances`), which gives all memory back.
    pub warm_instances: u32,
    /// Slots of the warm image pool, where tasks of large-image plugins
    /// (Python, JavaScript) start while one is free: a freed slot keeps
    /// its plugin's image mapped and the pages its task wrote, so the next
    /// task starts with fewer page faults (`engine::warm_image_resident_bound`,
    /// 2.6 MiB each at most). Tasks past it are instantiated on demand
    /// (from a second copy of the plugin's compiled code, made when a task
    /// first overflows the pool); 0 runs them all so.
    pub warm_image_instances: u32,
    /// Live tasks one worker may hold; `add_task` past it fails with `limit`.
    pub tasks_per_worker: usize,
    /// Live tasks the whole app may hold, across workers.
    pub tasks_per_app: usize,
    /// Ended tasks one worker keeps listed until purged; past it, the oldest
    /// ended ones are dropped, so a stream of short tasks cannot grow the
    /// registry without end.
    pub ended_tasks_per_worker: usize,
    /// How long an ended task stays listed (`keep_ended = "1h"`): past it
    /// it is dropped as a purge would, whatever the count. None (the
    /// default): until `ended_tasks_per_worker` or a purge drops it.
    #[serde(deserialize_with = "keep_ended")]
    pub keep_ended: Option<std::time::Duration>,
    /// Longest log line a task may emit, in bytes; longer ones are cut.
    pub log_line_bytes: usize,
    /// Log lines per second a task may emit, sustained (a token bucket);
    /// lines past it are dropped and counted, and a line saying how many
    /// were dropped comes before the next one let through.
    pub log_lines_per_second: u32,
    /// Log lines a task may emit in a burst above that rate.
    pub log_burst_lines: u32,
    /// Largest event payload `dispatch` accepts, in bytes.
    pub event_payload_bytes: usize,
    /// Largest `args` (JSON text) a new task may be given, in bytes.
    pub args_bytes: usize,
    /// How long an outbound HTTP request may take to connect.
    pub http_connect_timeout_ms: u64,
    /// How long an outbound HTTP request may wait for the response's
    /// first byte once connected.
    pub http_first_byte_timeout_ms: u64,
    /// Largest outbound HTTP response body a task may read, in bytes.
    pub http_response_bytes: usize,
    /// Largest outbound HTTP request body a task may send, in bytes.
    pub http_request_body_bytes: usize,
    /// Outbound HTTP requests one task may have open at once (from the
    /// send until its response body is dropped).
    pub http_requests_per_task: usize,
    /// Largest set of HTTP header fields a task may build (a wasi:http
    /// `fields`), in bytes of the host's in-memory form: what one handle
    /// can make the host hold. Responses' headers are not counted.
    pub http_fields_bytes: usize,
    /// Resource handles (streams, pollables, header fields, requests,
    /// buckets...) one task may hold at once; creating one more fails, and
    /// a guest that does so traps. Together with `http_fields_bytes`, the
    /// most host memory a task's handles can hold.
    pub handles_per_task: usize,
    /// TCP sockets one task may hold open at once (`[plugins.NAME.grants]
    /// tcp`); creating one more fails with `new-socket-limit`. Each is a
    /// file descriptor of the host's.
    pub sockets_per_task: usize,
    /// TCP sockets all tasks together may hold open at once: each is a
    /// file descriptor of the host's process.
    pub sockets_per_app: usize,
    /// Largest answer one Postgres or Redis call (`taskhost:db`) may
    /// read, in bytes as the server sends them: a call past it fails with
    /// `limit` and its connection is closed.
    pub db_result_bytes: usize,
    /// Log lines each task keeps for reading back (`taskhost logs`, the
    /// API, the dashboard): its last ones.
    pub task_log_lines: usize,
    /// Bytes all tasks' kept log lines may take together; past it the
    /// oldest line host-wide goes first.
    pub task_log_bytes: usize,
    /// Bytes one resuming task's journal may hold (`durable = "resume"`:
    /// each host call and its answer): a call past it fails the task.
    pub journal_bytes: usize,
    /// Schedules the tasks of one plugin may add at run time (kept in
    /// storage, so they would otherwise outlive every restart); app.toml's
    /// own do not count.
    pub schedules_per_plugin: usize,
    /// Schedules all plugins together may add at run time.
    pub schedules_per_app: usize,
    /// Longest key-value key, in bytes.
    pub kv_key_bytes: usize,
    /// Largest key-value value, in bytes.
    pub kv_value_bytes: usize,
    /// Most keys one bucket may hold.
    pub kv_keys_per_bucket: u64,
    /// Most bytes (keys and values) one plugin's own buckets may hold
    /// together; a shared bucket counts on its own.
    pub kv_bytes_per_plugin: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 64,
            memory_total_mb: None,
            timeout_ms: None,
            wasm_stack_kb: 512,
            instances: 10_000,
            warm_instances: 128,
            warm_image_instances: 32,
            tasks_per_worker: 10_000,
            tasks_per_app: 100_000,
            ended_tasks_per_worker: 10_000,
            keep_ended: None,
            log_line_bytes: 16 * 1024,
            log_lines_per_second: 1000,
            log_burst_lines: 2000,
            event_payload_bytes: 1024 * 1024,
            args_bytes: 1024 * 1024,
            http_connect_timeout_ms: 10_000,
            http_first_byte_timeout_ms: 30_000,
            http_response_bytes: 16 * 1024 * 1024,
            http_request_body_bytes: 16 * 1024 * 1024,
            http_requests_per_task: 16,
            http_fields_bytes: 16 * 1024,
            handles_per_task: 1_000,
            sockets_per_task: 16,
            sockets_per_app: 1_000,
            db_result_bytes: 16 * 1024 * 1024,
            task_log_lines: 1_000,
            task_log_bytes: 64 * 1024 * 1024,
            journal_bytes: 64 * 1024 * 1024,
            schedules_per_plugin: 100,
            schedules_per_app: 1_000,
            kv_key_bytes: 1024,
            kv_value_bytes: 1024 * 1024,
            kv_keys_per_bucket: 1_000_000,
            kv_bytes_per_plugin: 1024 * 1024 * 1024,
        }
    }
}

/// Physical memory of this machine (`MemTotal`), if it can be read.
pub fn machine_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `[plugins.NAME.limits]`: the per-task bounds a plugin may override.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginLimits {
    /// Overrides `[limits] memory_mb` (MiB of linear memory per task) for this
    /// plugin's tasks; 1 to 4096.
    pub memory_mb: Option<u64>,
    /// Overrides `[limits] timeout_ms` for this plugin's tasks (there is no way
    /// to lift the app's back to none).
    pub timeout_ms: Option<u64>,
    /// Overrides `[limits] http_connect_timeout_ms` for this plugin's tasks.
    pub http_connect_timeout_ms: Option<u64>,
    /// Overrides `[limits] http_first_byte_timeout_ms` for this plugin's tasks.
    pub http_first_byte_timeout_ms: Option<u64>,
    /// Overrides `[limits] http_response_bytes` for this plugin's tasks.
    pub http_response_bytes: Option<usize>,
    /// Overrides `[limits] http_request_body_bytes` for this plugin's tasks.
    pub http_request_body_bytes: Option<usize>,
    /// Overrides `[limits] http_requests_per_task` for this plugin's tasks.
    pub http_requests_per_task: Option<usize>,
    /// Overrides `[limits] http_fields_bytes` for this plugin's tasks.
    pub http_fields_bytes: Option<usize>,
    /// Overrides `[limits] handles_per_task` for this plugin's tasks.
    pub handles_per_task: Option<usize>,
    /// Overrides `[limits] sockets_per_task` for this plugin's tasks.
    pub sockets_per_task: Option<usize>,
    /// Overrides `[limits] db_result_bytes` for this plugin's tasks.
    pub db_result_bytes: Option<usize>,
}

/// What bounds one task, resolved from the app's and its plugin's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLimits {
    /// Linear memory the task may grow to, in bytes: `memory_mb` times 1 MiB.
    pub memory_bytes: usize,
    /// Resource handles the task may hold at once.
    pub handles: usize,
    /// TCP sockets the task may hold open at once.
    pub sockets: usize,
    /// TCP sockets all tasks together may hold open at once (app-wide).
    pub sockets_per_app: usize,
    /// Largest answer of one `taskhost:db` call, in bytes.
    pub db_result_bytes: usize,
    /// Wall-clock time the task may run (`timeout_ms`); none: no bound.
    pub timeout: Option<Duration>,
    /// Its outbound HTTP bounds.
    pub http: HttpLimits,
}

/// What bounds one task's outbound HTTP (`[limits] http_*`, per plugin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// `http_connect_timeout_ms`: how long a request may take to connect.
    pub connect_timeout: Duration,
    /// `http_first_byte_timeout_ms`: how long a connected request may wait for
    /// the response's first byte.
    pub first_byte_timeout: Duration,
    /// `http_response_bytes`: the largest response body the task may read, in
    /// bytes.
    pub response_bytes: usize,
    /// `http_request_body_bytes`: the largest request body the task may send,
    /// in bytes.
    pub request_body_bytes: usize,
    /// `http_requests_per_task`: requests open at once, from the send until the
    /// response body is dropped.
    pub requests_in_flight: usize,
    /// Largest header fields the task may build, in bytes (in memory).
    pub fields_bytes: usize,
}

fn check_memory_mb(table: &str, memory_mb: u64) -> Result<()> {
    if memory_mb == 0 {
        bail!("{table} `memory_mb` must be at least 1");
    }
    if memory_mb > 4096 {
        bail!("{table} `memory_mb` must be at most 4096 (a 32-bit wasm memory), got {memory_mb}");
    }
    Ok(())
}

fn check_timeout_ms(table: &str, timeout_ms: Option<u64>) -> Result<()> {
    if timeout_ms == Some(0) {
        bail!("{table} `timeout_ms` must be at least 1 (leave it out for no timeout)");
    }
    Ok(())
}

/// The most slots `warm_image_instances` may ask for.
const MAX_WARM_IMAGE_INSTANCES: u32 = 1024;

impl Limits {
    /// Checks every bound; `file` names app.toml in the error.
    pub(super) fn checked(self, file: &str) -> Result<Limits> {
        let table = format!("{file}: [limits]");
        for (key, value) in [
            ("instances", self.instances as usize),
            ("warm_instances", self.warm_instances as usize),
            ("tasks_per_worker", self.tasks_per_worker),
            ("tasks_per_app", self.tasks_per_app),
            ("ended_tasks_per_worker", self.ended_tasks_per_worker),
            ("log_line_bytes", self.log_line_bytes),
            ("log_lines_per_second", self.log_lines_per_second as usize),
            ("log_burst_lines", self.log_burst_lines as usize),
            ("event_payload_bytes", self.event_payload_bytes),
            ("args_bytes", self.args_bytes),
            (
                "http_connect_timeout_ms",
                self.http_connect_timeout_ms as usize,
            ),
            (
                "http_first_byte_timeout_ms",
                self.http_first_byte_timeout_ms as usize,
            ),
            ("http_response_bytes", self.http_response_bytes),
            ("http_request_body_bytes", self.http_request_body_bytes),
            ("http_requests_per_task", self.http_requests_per_task),
            ("http_fields_bytes", self.http_fields_bytes),
            ("handles_per_task", self.handles_per_task),
            ("sockets_per_task", self.sockets_per_task),
            ("sockets_per_app", self.sockets_per_app),
            ("db_result_bytes", self.db_result_bytes),
            ("task_log_lines", self.task_log_lines),
            ("task_log_bytes", self.task_log_bytes),
            ("journal_bytes", self.journal_bytes),
            ("schedules_per_plugin", self.schedules_per_plugin),
            ("schedules_per_app", self.schedules_per_app),
            ("kv_key_bytes", self.kv_key_bytes),
            ("kv_value_bytes", self.kv_value_bytes),
            ("kv_keys_per_bucket", self.kv_keys_per_bucket as usize),
            ("kv_bytes_per_plugin", self.kv_bytes_per_plugin as usize),
        ] {
            if value == 0 {
                bail!("{table} `{key}` must be at least 1");
            }
        }
        if self.warm_image_instances > MAX_WARM_IMAGE_INSTANCES {
            bail!(
                "{table} `warm_image_instances` must be at most {MAX_WARM_IMAGE_INSTANCES} (each \
                 slot reserves 8 GiB of address space and may keep 2.6 MiB resident), got {}; \
                 tasks past the pool still run, instantiated on demand",
                self.warm_image_instances
            );
        }
        if self.kv_value_bytes > MAX_KV_VALUE_BYTES {
            bail!(
                "{table} `kv_value_bytes` must be at most {MAX_KV_VALUE_BYTES} (256 MiB), got {}",
                self.kv_value_bytes
            );
        }
        check_memory_mb(&table, self.memory_mb)?;
        if self.memory_total_mb == Some(0) {
            bail!("{table} `memory_total_mb` must be at least 1");
        }
        check_timeout_ms(&table, self.timeout_ms)?;
        if !(16..=MAX_WASM_STACK_KB).contains(&self.wasm_stack_kb) {
            bail!(
                "{table} `wasm_stack_kb` must be between 16 and {MAX_WASM_STACK_KB}, got {}",
                self.wasm_stack_kb
            );
        }
        Ok(self)
    }

    /// The bounds of a task of a plugin with `overrides`.
    pub fn for_task(&self, overrides: &PluginLimits) -> TaskLimits {
        let memory_mb = overrides.memory_mb.unwrap_or(self.memory_mb);
        TaskLimits {
            memory_bytes: usize::try_from(memory_mb.saturating_mul(1024 * 1024))
                .unwrap_or(usize::MAX),
            timeout: overrides
                .timeout_ms
                .or(self.timeout_ms)
                .map(Duration::from_millis),
            handles: overrides.handles_per_task.unwrap_or(self.handles_per_task),
            sockets: overrides.sockets_per_task.unwrap_or(self.sockets_per_task),
            sockets_per_app: self.sockets_per_app,
            db_result_bytes: overrides.db_result_bytes.unwrap_or(self.db_result_bytes),
            http: HttpLimits {
                connect_timeout: Duration::from_millis(
                    overrides
                        .http_connect_timeout_ms
                        .unwrap_or(self.http_connect_timeout_ms),
                ),
                first_byte_timeout: Duration::from_millis(
                    overrides
                        .http_first_byte_timeout_ms
                        .unwrap_or(self.http_first_byte_timeout_ms),
                ),
                response_bytes: overrides
                    .http_response_bytes
                    .unwrap_or(self.http_response_bytes),
                request_body_bytes: overrides
                    .http_request_body_bytes
                    .unwrap_or(self.http_request_body_bytes),
                requests_in_flight: overrides
                    .http_requests_per_task
                    .unwrap_or(self.http_requests_per_task),
                fields_bytes: overrides
                    .http_fields_bytes
                    .unwrap_or(self.http_fields_bytes),
            },
        }
    }

    /// What all live tasks' linear memory may add up to, in bytes.
    pub fn memory_total_bytes(&self) -> u64 {
        match self.memory_total_mb {
            Some(mb) => mb.saturating_mul(1 << 20),
            None => machine_memory_bytes().map_or(4 << 30, |bytes| bytes / 2),
        }
    }

    /// For the engine's `max_wasm_stack`.
    pub fn wasm_stack_bytes(&self) -> usize {
        self.wasm_stack_kb * 1024
    }
}

impl PluginLimits {
    pub(super) fn checked(self, table: &str) -> Result<PluginLimits> {
        if let Some(memory_mb) = self.memory_mb {
            check_memory_mb(table, memory_mb)?;
        }
        check_timeout_ms(table, self.timeout_ms)?;
        for (key, value) in [
            ("http_connect_timeout_ms", self.http_connect_timeout_ms),
            (
                "http_first_byte_timeout_ms",
                self.http_first_byte_timeout_ms,
            ),
            (
                "http_response_bytes",
                self.http_response_bytes.map(|v| v as u64),
            ),
            (
                "http_request_body_bytes",
                self.http_request_body_bytes.map(|v| v as u64),
            ),
            (
                "http_requests_per_task",
                self.http_requests_per_task.map(|v| v as u64),
            ),
            (
                "http_fields_bytes",
                self.http_fields_bytes.map(|v| v as u64),
            ),
            ("handles_per_task", self.handles_per_task.map(|v| v as u64)),
            ("sockets_per_task", self.sockets_per_task.map(|v| v as u64)),
            ("db_result_bytes", self.db_result_bytes.map(|v| v as u64)),
        ] {
            if value == Some(0) {
                bail!("{table} `{key}` must be at least 1");
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_override_wins_and_the_rest_falls_back() {
        let app = Limits {
            timeout_ms: Some(1000),
            ..Limits::default()
        };
        let task = app.for_task(&PluginLimits {
            memory_mb: Some(8),
            http_response_bytes: Some(10),
            ..PluginLimits::default()
        });
        assert_eq!(task.http.response_bytes, 10);
        assert_eq!(task.http.request_body_bytes, 16 << 20);
        assert_eq!(task.memory_bytes, 8 << 20);
        assert_eq!(task.timeout, Some(Duration::from_millis(1000)));
        assert_eq!(
            app.for_task(&PluginLimits::default()).memory_bytes,
            64 << 20
        );
    }

    #[test]
    fn keep_ended_is_a_duration_of_a_second_or_more() {
        let read = |text: &str| toml::from_str::<Limits>(text);
        assert_eq!(
            read("keep_ended = \"1h\"").unwrap().keep_ended,
            Some(Duration::from_secs(3600))
        );
        assert_eq!(read("").unwrap().keep_ended, None);
        for bad in ["keep_ended = \"soon\"", "keep_ended = \"10ms\""] {
            let error = read(bad).unwrap_err().to_string();
            assert!(
                error.contains("is not a duration of at least 1s"),
                "{error}"
            );
        }
    }

    #[test]
    fn zero_and_out_of_range_values_are_refused() {
        let zero = Limits {
            args_bytes: 0,
            ..Limits::default()
        };
        assert_eq!(
            zero.checked("app.toml").unwrap_err().to_string(),
            "app.toml: [limits] `args_bytes` must be at least 1"
        );
        let stack = Limits {
            wasm_stack_kb: 4096,
            ..Limits::default()
        };
        assert!(
            stack
                .checked("app.toml")
                .unwrap_err()
                .to_string()
                .contains("`wasm_stack_kb` must be between 16 and 1536, got 4096")
        );
        let timeout = PluginLimits {
            timeout_ms: Some(0),
            ..PluginLimits::default()
        };
        assert!(
            timeout
                .checked("app.toml: [plugins.p.limits]")
                .unwrap_err()
                .to_string()
                .starts_with("app.toml: [plugins.p.limits] `timeout_ms` must be at least 1")
        );
    }
}
