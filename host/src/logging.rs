//! Log output: the subscriber set-up, and the two kinds of attributed lines
//! the host emits for tasks (what a task logs, and its lifecycle).
//!
//! The JSON field names are a public interface (scripts and tests parse
//! them): `worker` (index, or `"main"`), `task` (name, or id when unnamed),
//! `task_id`, `plugin`, `factory`, `level`, `message`, and on lifecycle lines
//! `event` (`started`, `done`, `failed`, `cancelled`) with `result`, `error`
//! or `stage`. Keep them stable.

use crate::bindings::Level;
use crate::task::{CancelStage, TaskIdent, WorkerId};
use anyhow::Result;
use std::time::Duration;
use tracing::Value;

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax
/// (`info`, `taskhost=debug`, ...); `RUST_LOG` wins when set.
pub fn init(format: LogFormat, filter: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))?;
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

/// Calls `f` with the task's `worker` field value: a number, or `"main"`.
fn with_worker<R>(worker: WorkerId, f: impl FnOnce(&dyn Value) -> R) -> R {
    match worker {
        WorkerId::Main => f(&"main"),
        WorkerId::Index(index) => f(&index),
    }
}

/// A line a task logged through `app.log` (or wrote to stdout/stderr).
pub fn task_line(ident: &TaskIdent, level: Level, message: &str) {
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

/// How a task's life moved on; one line per step.
pub enum Lifecycle<'a> {
    Started,
    Done {
        result: &'a str,
        elapsed: Duration,
    },
    Failed {
        error: &'a str,
        elapsed: Duration,
    },
    Cancelled {
        stage: CancelStage,
        elapsed: Duration,
    },
}

/// The lifecycle step as the JSON object the log line carries (the same
/// field names), for the control API's event stream.
pub fn lifecycle_json(ident: &TaskIdent, step: &Lifecycle<'_>) -> serde_json::Value {
    let mut line = serde_json::json!({
        "worker": match ident.worker {
            WorkerId::Main => serde_json::json!("main"),
            WorkerId::Index(i) => serde_json::json!(i),
        },
        "task": ident.label(),
        "task_id": ident.id,
        "plugin": &*ident.plugin,
        "factory": ident.factory,
    });
    let extra = match step {
        Lifecycle::Started => {
            serde_json::json!({"event": "started", "version": &*ident.plugin_version})
        }
        Lifecycle::Done { result, elapsed } => {
            serde_json::json!({"event": "done", "result": result, "elapsed_ms": millis(*elapsed)})
        }
        Lifecycle::Failed { error, elapsed } => {
            serde_json::json!({"event": "failed", "error": error, "elapsed_ms": millis(*elapsed)})
        }
        Lifecycle::Cancelled { stage, elapsed } => serde_json::json!({
            "event": "cancelled", "stage": stage.as_str(), "elapsed_ms": millis(*elapsed)
        }),
    };
    if let (Some(line), serde_json::Value::Object(extra)) = (line.as_object_mut(), extra) {
        line.extend(extra);
    }
    line
}

pub fn lifecycle(ident: &TaskIdent, step: Lifecycle<'_>) {
    let task = ident.label();
    let plugin = &*ident.plugin;
    let factory = &ident.factory;
    with_worker(ident.worker, |worker| match step {
        Lifecycle::Started => tracing::info!(
            event = "started",
            worker,
            task,
            task_id = ident.id,
            plugin,
            factory,
            version = &*ident.plugin_version,
            "started {plugin}/{factory} ({})",
            ident.plugin_version
        ),
        Lifecycle::Done { result, elapsed } => tracing::info!(
            event = "done",
            worker,
            task,
            task_id = ident.id,
            plugin,
            factory,
            result,
            elapsed_ms = millis(elapsed),
            "done in {} ms: {result}",
            millis(elapsed)
        ),
        Lifecycle::Failed { error, elapsed } => tracing::error!(
            event = "failed",
            worker,
            task,
            task_id = ident.id,
            plugin,
            factory,
            error,
            elapsed_ms = millis(elapsed),
            "failed after {} ms: {error}",
            millis(elapsed)
        ),
        Lifecycle::Cancelled { stage, elapsed } => tracing::info!(
            event = "cancelled",
            worker,
            task,
            task_id = ident.id,
            plugin,
            factory,
            stage = stage.as_str(),
            elapsed_ms = millis(elapsed),
            "cancelled ({}) after {} ms",
            stage.as_str(),
            millis(elapsed)
        ),
    })
}

/// Milliseconds with microsecond precision, without float noise in the log.
fn millis(elapsed: Duration) -> f64 {
    elapsed.as_micros() as f64 / 1e3
}

/// `text` safe to print on a terminal: control characters (ESC, CR, BEL,
/// ...) that a guest could use to move the cursor, clear the screen or
/// forge a line are written as escapes (`\u{1b}`, `\r`). A newline becomes
/// `\n` too, or, with `continue_lines`, a new line indented by four spaces,
/// which no line of the host's own starts with. JSON output needs none of
/// this: it escapes everything already.
pub fn escape_controls(text: &str, continue_lines: bool) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' if continue_lines => out.push_str("\n    "),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
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
