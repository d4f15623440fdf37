//! Log output: the subscriber set-up, and the two kinds of attributed lines
//! the host emits for tasks (what a task logs, and its lifecycle).
//!
//! The JSON field names are a public interface (scripts and tests parse
//! them): `worker` (index, or `"main"`), `task` (name, or id when unnamed),
//! `task_id`, `plugin`, `factory`, `level`, `message`, and on lifecycle lines
//! `event` (`started`, `done`, `failed`, `cancelled`) with `result`, `error`
//! or `stage`. Keep them stable.

use crate::bindings::Level;
use crate::config::Limits;
use crate::lifecycle::{LifecycleEvent, TaskRef};
use crate::task::{CancelSignal, TaskIdent, WorkerId};
use crate::task_log::LogBook;
use anyhow::Result;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::Value;

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax
/// (`info`, `taskhost=debug`, ...); `RUST_LOG` wins when set.
///
/// wasmtime-wasi-http's own warnings ("connect error: ...") name no task
/// and repeat what the guest is told: they are kept out unless the filter
/// names that crate. taskhost logs each request's outcome with its task.
pub(crate) fn init(format: LogFormat, filter: &str) -> Result<()> {
    let filter = if filter.contains("wasmtime_wasi_http") {
        filter.to_string()
    } else {
        format!("{filter},wasmtime_wasi_http=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(std::io::stdout);
    let installed = match format {
        LogFormat::Human => builder.event_format(HumanFormat).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// Emits one tracing event at a level chosen at run time (tracing's macros
/// want it at compile time).
macro_rules! event_at {
    ($level:expr, $($rest:tt)*) => {
        match $level {
            Level::Trace => tracing::trace!($($rest)*),
            Level::Debug => tracing::debug!($($rest)*),
            Level::Info => tracing::info!($($rest)*),
            Level::Warn => tracing::warn!($($rest)*),
            Level::Error => tracing::error!($($rest)*),
        }
    };
}

/// Logs a lifecycle event of `task` at `level` (a tracing macro's name):
/// the fields every task line carries, then `rest` (its own fields and
/// message).
macro_rules! task_event {
    ($level:ident, $event:literal, $task:expr, $($rest:tt)*) => {
        with_task($task, |worker, task_name| {
            tracing::$level!(
                event = $event,
                worker,
                task = task_name,
                task_id = $task.task_id,
                plugin = $task.plugin,
                factory = $task.factory,
                connection = $task.connection,
                $($rest)*
            )
        })
    };
}

/// Calls `f` with the task's `worker` field value: a number, or `"main"`.
fn with_worker<R>(worker: WorkerId, f: impl FnOnce(&dyn Value) -> R) -> R {
    match worker {
        WorkerId::Main => f(&"main"),
        WorkerId::Index(index) => f(&index),
    }
}

/// A line a task logged through `app.log` (or wrote to stdout/stderr).
pub(crate) fn task_line(ident: &TaskIdent, level: Level, message: &str) {
    with_worker(ident.worker, |worker| {
        event_at!(
            level,
            worker,
            task = ident.label(),
            task_id = ident.id,
            plugin = &*ident.plugin,
            factory = ident.factory,
            "{message}"
        )
    })
}

/// A level as the kept log and the API name it.
pub(crate) fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// Whether [`lifecycle`] would write anything: false when logging is off or
/// filtered above `info` (`--log-level warn`), so a task's start and end
/// need not build the event at all.
pub(crate) fn lifecycle_enabled() -> bool {
    tracing::enabled!(tracing::Level::INFO)
}

/// Logs a lifecycle event: one line, whose JSON fields are those of
/// [`LifecycleEvent`]'s serde form (`event`, `worker`, `task`, ...). The
/// stream-only events (`subscribed`, `lagged`) are not logged.
pub(crate) fn lifecycle(event: &LifecycleEvent) {
    match event {
        LifecycleEvent::Queued {
            task,
            queue,
            key,
            priority,
            run_at,
        } => task_event!(
            info,
            "queued",
            task,
            queue,
            key = key.as_deref(),
            priority = (*priority != 0).then_some(*priority),
            run_at = run_at.as_deref(),
            "queued {}/{} in queue {queue}",
            task.plugin,
            task.factory
        ),
        LifecycleEvent::Started { task, version } => task_event!(
            info,
            "started",
            task,
            version,
            "started {}/{} ({version})",
            task.plugin,
            task.factory
        ),
        LifecycleEvent::Done {
            task,
            result,
            elapsed_ms,
        } => task_event!(
            info,
            "done",
            task,
            result,
            elapsed_ms,
            "done in {elapsed_ms} ms: {result}"
        ),
        LifecycleEvent::Failed {
            task,
            error,
            elapsed_ms,
        } => task_event!(
            error,
            "failed",
            task,
            error,
            elapsed_ms,
            "failed after {elapsed_ms} ms: {error}"
        ),
        LifecycleEvent::Cancelled {
            task,
            stage,
            elapsed_ms,
        } => {
            let stage = stage.as_str();
            task_event!(
                info,
                "cancelled",
                task,
                stage,
                elapsed_ms,
                "cancelled ({stage}) after {elapsed_ms} ms"
            )
        }
        LifecycleEvent::Retrying {
            task,
            attempt,
            delay_ms,
            error,
        } => task_event!(
            warn,
            "retrying",
            task,
            attempt,
            delay_ms,
            error,
            "attempt {} failed: {error}; attempt {attempt} in {delay_ms} ms",
            attempt - 1
        ),
        LifecycleEvent::Restarting {
            task,
            restart,
            delay_ms,
            error,
        } => {
            let why = match error {
                Some(error) => format!("failed: {error}"),
                None => "ended done".to_string(),
            };
            task_event!(
                warn,
                "restarting",
                task,
                restart,
                delay_ms,
                error,
                "{why}; restart {restart} in {delay_ms} ms"
            )
        }
        LifecycleEvent::Reloaded {
            task,
            from,
            version,
        } => task_event!(
            info,
            "reloaded",
            task,
            from,
            version,
            "moved from {from} to {version}"
        ),
        LifecycleEvent::PluginLoaded {
            plugin,
            version,
            replaces,
            ..
        } => tracing::info!(
            event = "plugin_loaded",
            plugin,
            version,
            "plugin {plugin} {version} loaded{}",
            replaces
                .as_ref()
                .map(|old| format!(" (replacing {old})"))
                .unwrap_or_default()
        ),
        LifecycleEvent::PluginRefused { plugin, error, .. } => tracing::error!(
            event = "plugin_refused",
            plugin,
            "plugin {plugin} refused, the loaded version keeps serving: {error}"
        ),
        LifecycleEvent::PluginDropped { plugin, version } => tracing::info!(
            event = "plugin_dropped",
            plugin,
            version,
            "plugin {plugin} {version} dropped: its last task ended"
        ),
        LifecycleEvent::ScheduleFired {
            schedule,
            tick,
            trigger,
            tasks,
        } => tracing::info!(
            event = "schedule_fired",
            schedule,
            tick,
            trigger = trigger.as_str(),
            tasks = tasks.join(","),
            "schedule {schedule} fired ({}) for {tick}: {}",
            trigger.as_str(),
            tasks.join(", ")
        ),
        LifecycleEvent::ScheduleMissed {
            schedule,
            tick,
            missed,
            reason,
        } => tracing::warn!(
            event = "schedule_missed",
            schedule,
            tick,
            missed,
            reason,
            "schedule {schedule} missed {missed} tick(s), the last at {tick}: {reason}"
        ),
        LifecycleEvent::Subscribed | LifecycleEvent::Lagged { .. } => {}
    }
}

/// Calls `f` with the task's `worker` field value and its label.
fn with_task<R>(task: &TaskRef, f: impl FnOnce(&dyn Value, &str) -> R) -> R {
    with_worker(task.worker, |worker| f(worker, &task.task))
}

/// `text` safe to print on a terminal: control characters (ESC, CR, BEL,
/// ...) that a guest could use to move the cursor, clear the screen or
/// forge a line are written as escapes (`\u{1b}`, `\r`). A newline becomes
/// `\n` too, or, with `continue_lines`, a new line indented by four spaces,
/// which no line of the host's own starts with. JSON output needs none of
/// this: it escapes everything already.
pub(crate) fn escape_controls(text: &str, continue_lines: bool) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' if continue_lines => out.push_str("\n    "),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Unicode's bidirectional formatting characters (U+202A..U+202E,
/// U+2066..U+2069, and the marks U+200E, U+200F, U+061C): not control
/// characters to Rust, but a U+202E (right-to-left override) reorders
/// what follows on a terminal, so a guest could make a line read as
/// something else ("Trojan Source").
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{61c}')
}

/// The human format: `TIME LEVEL [worker/task] message`, and for lines that
/// are not about a task, the message followed by its other fields.
///
/// Task lines carry their plugin and factory in the `started` line only, so
/// the demo's output reads like a program's output, not a field dump.
struct HumanFormat;

/// Fields the human format shows in the `[worker/task]` prefix, or not at
/// all because the message already says them.
const HIDDEN_FIELDS: &[&str] = &[
    "worker",
    "task",
    "task_id",
    "plugin",
    "factory",
    "event",
    "version",
    "result",
    "error",
    "stage",
    "elapsed_ms",
    "app",
    "workers",
    "done",
    "failed",
    "cancelled",
];

#[derive(Default)]
struct HumanFields {
    message: String,
    worker: Option<String>,
    task: Option<String>,
    rest: Vec<(&'static str, String)>,
}

impl tracing::field::Visit for HumanFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record(field, value.to_string());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl HumanFields {
    fn record(&mut self, field: &tracing::field::Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            "worker" => self.worker = Some(value),
            "task" => self.task = Some(value),
            name if HIDDEN_FIELDS.contains(&name) => {}
            name => self.rest.push((name, value)),
        }
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for HumanFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        let mut fields = HumanFields::default();
        event.record(&mut fields);
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut writer)?;
        write!(writer, " {:<5} ", event.metadata().level())?;
        if let (Some(worker), Some(task)) = (&fields.worker, &fields.task) {
            write!(
                writer,
                "[{}/{}] ",
                escape_controls(worker, false),
                escape_controls(task, false)
            )?;
        }
        write!(writer, "{}", escape_controls(&fields.message, true))?;
        for (name, value) in &fields.rest {
            write!(writer, " {name}={}", escape_controls(value, false))?;
        }
        writeln!(writer)
    }
}

/// Every line one task logs (through `app.log`, stdout or stderr) passes
/// here: a token bucket of `log_burst_lines` refilled at
/// `log_lines_per_second`. A task ignoring cancellation wrote 95,000 lines
/// in a 500 ms grace period before this; now it writes the burst, then the
/// rate, and one line says how many it lost.
pub(crate) struct LogGate {
    ident: Arc<TaskIdent>,
    /// Where the admitted lines are kept for reading back: the task's
    /// signal (which holds its log) and the book it counts in.
    keep: Option<(Arc<CancelSignal>, Arc<LogBook>)>,
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
    /// When the last "N log line(s) dropped" note went out.
    noted: Option<Instant>,
}

/// What the gate does with one line.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Drop,
    Line,
    /// Say first that `n` lines were dropped, then the line.
    NoteThenLine(u64),
}

/// The shortest time between two "dropped" notes of one task.
const NOTE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Bucket {
    /// Refills at `rate` up to `burst` and decides. A note costs a token
    /// like any line and goes out at most once per [`NOTE_EVERY`]: a task
    /// writing just above its rate otherwise had a note before every line
    /// it was allowed, twice its rate in all (issue 24).
    fn admit(&mut self, now: Instant, rate: f64, burst: f64) -> Admit {
        let earned = now.saturating_duration_since(self.refilled).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min(burst);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return Admit::Drop;
        }
        if self.dropped == 0 {
            self.tokens -= 1.0;
            return Admit::Line;
        }
        let note_due = self
            .noted
            .is_none_or(|at| now.saturating_duration_since(at) >= NOTE_EVERY);
        // A burst under 2 never holds two tokens: there the note rides on
        // the line's (one extra line a second at most).
        let cost = if burst >= 2.0 { 2.0 } else { 1.0 };
        if note_due && self.tokens >= cost {
            self.tokens -= cost;
            self.noted = Some(now);
            return Admit::NoteThenLine(std::mem::take(&mut self.dropped));
        }
        if note_due {
            // Room for the note only: it waits for the next token with the
            // line counted among the dropped.
            self.dropped += 1;
            return Admit::Drop;
        }
        self.tokens -= 1.0;
        Admit::Line
    }
}

impl LogGate {
    /// A gate whose admitted lines are also kept in `keep`'s task log
    /// (none: only written out).
    pub(crate) fn new(
        ident: Arc<TaskIdent>,
        limits: &Limits,
        keep: Option<(Arc<CancelSignal>, Arc<LogBook>)>,
    ) -> LogGate {
        let burst = f64::from(limits.log_burst_lines);
        LogGate {
            ident,
            keep,
            rate: f64::from(limits.log_lines_per_second),
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                refilled: Instant::now(),
                dropped: 0,
                noted: None,
            }),
        }
    }

    /// Logs `message` as a line of the task, unless it is over its rate.
    pub(crate) fn line(&self, level: Level, message: &str) {
        let admit = self.bucket.lock().unwrap_or_else(|e| e.into_inner()).admit(
            Instant::now(),
            self.rate,
            self.burst,
        );
        match admit {
            Admit::Drop => return,
            Admit::Line => {}
            Admit::NoteThenLine(dropped) => self.report_dropped(dropped),
        }
        self.emit(level, message);
    }

    /// Writes a line out and keeps it.
    fn emit(&self, level: Level, message: &str) {
        task_line(&self.ident, level, message);
        if let Some((signal, book)) = &self.keep {
            signal.log(book).push(level_name(level), message);
        }
    }

    fn report_dropped(&self, dropped: u64) {
        self.emit(
            Level::Warn,
            &format!(
                "{dropped} log line(s) dropped: more than {} per second after a burst of {} \
                 ([limits] log_lines_per_second, log_burst_lines)",
                self.rate, self.burst
            ),
        );
    }
}

impl Drop for LogGate {
    /// The task ended while over its rate: say what it lost.
    fn drop(&mut self) {
        let dropped = self
            .bucket
            .get_mut()
            .map(|b| b.dropped)
            .unwrap_or_else(|e| e.into_inner().dropped);
        if dropped > 0 {
            self.report_dropped(dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Admit, Bucket, escape_controls};
    use std::time::{Duration, Instant};

    /// Issue 24, item 11: a task writing a little above its rate had a
    /// "N log line(s) dropped" note before every line it was let through:
    /// 2 lines a token. Now the notes count against the rate and come at
    /// most once a second.
    #[test]
    fn dropped_notes_count_against_the_rate_and_come_once_a_second() {
        let start = Instant::now();
        let mut bucket = Bucket {
            tokens: 0.0,
            refilled: start,
            dropped: 0,
            noted: None,
        };
        let (rate, burst) = (10.0, 10.0);
        let (mut written, mut notes) = (0u64, 0u64);
        // 20 lines a second for 10 s, twice the rate.
        for i in 1..=200u64 {
            let now = start + Duration::from_millis(i * 50);
            match bucket.admit(now, rate, burst) {
                Admit::Drop => {}
                Admit::Line => written += 1,
                Admit::NoteThenLine(_) => {
                    written += 2;
                    notes += 1;
                }
            }
        }
        assert!(written <= 101, "{written} lines in 10 s at 10 a second");
        assert!((5..=10).contains(&notes), "{notes} notes in 10 s");
        // A burst of one line still lets lines (and notes) through.
        let mut bucket = Bucket {
            tokens: 1.0,
            refilled: start,
            dropped: 0,
            noted: None,
        };
        let admitted = (1..=100u64)
            .filter(|i| {
                let now = start + Duration::from_millis(i * 100);
                bucket.admit(now, 1.0, 1.0) != Admit::Drop
            })
            .count();
        assert!(
            (8..=12).contains(&admitted),
            "{admitted} of 100 in 10 s at 1 a second"
        );
    }

    /// Issue 24, item 11: U+202E passed into the human log, where it
    /// reverses what a terminal shows after it.
    #[test]
    fn bidirectional_overrides_are_escaped_like_control_characters() {
        assert_eq!(
            escape_controls("ok \u{202e}gnp.exe", false),
            "ok \\u{202e}gnp.exe"
        );
        assert_eq!(
            escape_controls("\u{2066}x\u{2069}", false),
            "\\u{2066}x\\u{2069}"
        );
        assert_eq!(escape_controls("plain, ünïcode", false), "plain, ünïcode");
    }
}
