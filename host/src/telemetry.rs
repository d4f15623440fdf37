//! OpenTelemetry traces (`[telemetry]`): a span per task and per outbound
//! HTTP call, sent as OTLP over HTTP (protobuf, the OpenTelemetry
//! project's own message types from `opentelemetry-proto`) to a collector.
//!
//! A worker never waits for this: a span is handed to a bounded queue
//! (`queue_spans`) and dropped, counted, when the queue is full. One thread
//! of its own batches the queue (`batch_spans`, `batch_ms`) and posts each
//! batch; a collector that is down costs failed posts, logged at most once
//! a minute and counted, not memory.
//!
//! Why not the OpenTelemetry SDK's tracer: a task's span is known whole
//! only when the task ends (its attempts, its outcome), on whichever worker
//! ended it, with its ids fixed when it was registered (child tasks and
//! outbound calls name it as their parent before it ends). That is a record
//! to send, which is what this module builds; the SDK's live-span API and
//! its exporter stack (and their runtime) would add nothing but weight.

use crate::config::TelemetryConfig;
use crate::metrics::TraceMetrics;
use crate::task::{Outcome, TaskIdent};
use crate::trace_context::{TaskTrace, TraceParent};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long one post to the collector may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a flush at shutdown waits for the last spans to go.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a span is, as OTLP kinds go.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SpanKind {
    /// A task: work the host does.
    Internal,
    /// An outbound call (HTTP, a database, key-value, a hop to another
    /// host) a task makes and waits for.
    Client,
    /// A task handed to the host to run (started, not awaited).
    Producer,
}

/// An attribute's value.
#[derive(Debug, Clone)]
pub(crate) enum Attr {
    Text(String),
    Int(i64),
}

/// One finished span, as the host records it.
#[derive(Debug, Clone)]
pub(crate) struct SpanRecord {
    /// Its trace and its own id (`span_id`).
    pub(crate) context: TraceParent,
    pub(crate) parent_span_id: Option<[u8; 8]>,
    pub(crate) name: String,
    pub(crate) kind: SpanKind,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    pub(crate) attributes: Vec<(&'static str, Attr)>,
    /// Set when it failed: the span's status is then `error`.
    pub(crate) error: Option<String>,
}

/// The spans waiting for the exporter. The exporter thread is woken when
/// a batch is full (or asked to flush), not per span: a wake per span
/// (a channel's) cost the workers a futex call each.
struct Queue {
    pending: Mutex<Pending>,
    wake: Condvar,
    capacity: usize,
    batch: usize,
}

#[derive(Default)]
struct Pending {
    spans: Vec<SpanRecord>,
    /// Who waits for a flush to be done.
    flushes: Vec<std::sync::mpsc::Sender<()>>,
    /// The host is gone: send what is left and stop.
    closed: bool,
}

impl Queue {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The exporter: a bounded queue and the thread that empties it.
pub(crate) struct Telemetry {
    queue: Arc<Queue>,
    /// `[telemetry] sample`: the share of new traces recorded.
    pub(crate) sample: f64,
    metrics: TraceMetrics,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.queue.pending().closed = true;
        self.queue.wake.notify_one();
    }
}

impl Telemetry {
    /// Starts the exporter thread for `config`; spans carry
    /// `service_name` (the app's, unless the config names one),
    /// `host.name` and, in a cluster, the host's name there as
    /// `service.instance.id` (the hosts of a cluster are one service).
    pub(crate) fn start(
        config: &TelemetryConfig,
        app: &str,
        instance: Option<&str>,
        metrics: TraceMetrics,
    ) -> std::io::Result<Telemetry> {
        let queue = Arc::new(Queue {
            pending: Mutex::default(),
            wake: Condvar::new(),
            capacity: config.queue_spans,
            batch: config.batch_spans,
        });
        let mut resource = Resource {
            attributes: vec![
                attribute(
                    "service.name",
                    Attr::Text(
                        config
                            .service_name
                            .clone()
                            .unwrap_or_else(|| app.to_string()),
                    ),
                ),
                attribute(
                    "service.version",
                    Attr::Text(env!("CARGO_PKG_VERSION").into()),
                ),
                attribute("host.name", Attr::Text(host_name())),
            ],
            ..Default::default()
        };
        if let Some(instance) = instance {
            resource.attributes.push(attribute(
                "service.instance.id",
                Attr::Text(instance.to_string()),
            ));
        }
        let exporter = Exporter {
            url: format!("{}/v1/traces", config.otlp),
            batch_spans: config.batch_spans,
            batch_delay: config.batch_delay,
            resource,
            metrics: metrics.clone(),
            last_complaint: None,
        };
        let spans = queue.clone();
        std::thread::Builder::new()
            .name("taskhost-traces".into())
            .spawn(move || exporter.run(&spans))?;
        Ok(Telemetry {
            queue,
            sample: config.sample,
            metrics,
        })
    }

    /// Hands `span` to the exporter, or drops it (counted) if the queue is
    /// full: never waits.
    pub(crate) fn record(&self, span: SpanRecord) {
        let mut pending = self.queue.pending();
        if pending.spans.len() >= self.queue.capacity {
            drop(pending);
            self.metrics.dropped.inc();
            return;
        }
        // The first span starts the exporter's `batch_ms` clock; a full
        // batch goes at once. Other spans wake nobody.
        let first = pending.spans.is_empty();
        pending.spans.push(span);
        let full = pending.spans.len() == self.queue.batch;
        drop(pending);
        if first || full {
            self.queue.wake.notify_one();
        }
    }

    /// Sends what is queued and waits (a bounded time) until it went: for
    /// a host about to exit.
    pub(crate) fn flush(&self) {
        let (done, flushed) = std::sync::mpsc::channel();
        self.queue.pending().flushes.push(done);
        self.queue.wake.notify_one();
        let _ = flushed.recv_timeout(FLUSH_TIMEOUT);
    }
}

/// A task's span, once it ended after `ran`: its plugin, factory, build,
/// worker, attempts and outcome.
pub(crate) fn task_span(
    ident: &TaskIdent,
    trace: TaskTrace,
    attempts: u32,
    outcome: &Outcome,
    ran: Duration,
) -> SpanRecord {
    let end = SystemTime::now();
    let (state, error) = match outcome {
        Outcome::Done { .. } => ("done", None),
        Outcome::Failed { error } => ("failed", Some(error.clone())),
        Outcome::Cancelled { stage } => {
            ("cancelled", Some(format!("cancelled ({})", stage.as_str())))
        }
    };
    let mut attributes = vec![
        ("taskhost.plugin", Attr::Text(ident.plugin.to_string())),
        ("taskhost.factory", Attr::Text(ident.factory.clone())),
        (
            "taskhost.build",
            Attr::Text(ident.plugin_version.to_string()),
        ),
        ("taskhost.worker", Attr::Text(ident.worker.to_string())),
        (
            "taskhost.task_id",
            Attr::Int(i64::try_from(ident.id).unwrap_or(i64::MAX)),
        ),
        ("taskhost.attempts", Attr::Int(i64::from(attempts))),
        ("taskhost.outcome", Attr::Text(state.into())),
    ];
    if let Some(name) = &ident.name {
        attributes.push(("taskhost.task", Attr::Text(name.clone())));
    }
    SpanRecord {
        context: trace.span,
        parent_span_id: trace.parent_span_id,
        name: format!("task {}/{}", ident.plugin, ident.factory),
        kind: SpanKind::Internal,
        start: end.checked_sub(ran).unwrap_or(end),
        end,
        attributes,
        error,
    }
}

/// The span of one call a task makes out of its sandbox (an HTTP request,
/// a key-value or database call, a wait, starting a task, a hop to another
/// host): begun with the call, recorded when it ends. None, and nothing
/// allocated, without telemetry or when the task's trace is not sampled.
pub(crate) struct CallSpan {
    telemetry: Arc<Telemetry>,
    context: TraceParent,
    parent: [u8; 8],
    start: SystemTime,
    name: std::borrow::Cow<'static, str>,
    kind: SpanKind,
    attributes: Vec<(&'static str, Attr)>,
}

impl CallSpan {
    /// A span under `ident`'s task span, if it is recorded.
    pub(crate) fn start(
        telemetry: Option<&Arc<Telemetry>>,
        ident: &TaskIdent,
        kind: SpanKind,
        name: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Option<CallSpan> {
        let trace = ident.trace.as_deref().filter(|trace| trace.span.sampled)?;
        Some(CallSpan {
            telemetry: telemetry?.clone(),
            context: TraceParent {
                span_id: crate::trace_context::new_span_id(),
                ..trace.span
            },
            parent: trace.span.span_id,
            start: SystemTime::now(),
            name: name.into(),
            kind,
            attributes: Vec::new(),
        })
    }

    /// Adds an attribute.
    pub(crate) fn with(mut self, key: &'static str, value: Attr) -> CallSpan {
        self.attributes.push((key, value));
        self
    }

    /// Adds an attribute to a span already begun.
    pub(crate) fn set(&mut self, key: &'static str, value: Attr) {
        self.attributes.push((key, value));
    }

    /// This span as the parent of what it starts (a `traceparent`).
    pub(crate) fn context(&self) -> TraceParent {
        self.context
    }

    /// Records the span, failed with `error` if there is one.
    pub(crate) fn end(self, error: Option<String>) {
        let CallSpan {
            telemetry,
            context,
            parent,
            start,
            name,
            kind,
            attributes,
        } = self;
        telemetry.record(SpanRecord {
            context,
            parent_span_id: Some(parent),
            name: name.into_owned(),
            kind,
            start,
            end: SystemTime::now(),
            attributes,
            error,
        });
    }

    /// Ends `span` (if any) with `result`'s error.
    pub(crate) fn end_with<T, E: std::fmt::Display>(span: Option<CallSpan>, result: &Result<T, E>) {
        if let Some(span) = span {
            span.end(result.as_ref().err().map(ToString::to_string));
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_default()
}

fn attribute(key: &str, value: Attr) -> KeyValue {
    let value = match value {
        Attr::Text(text) => any_value::Value::StringValue(text),
        Attr::Int(n) => any_value::Value::IntValue(n),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl SpanRecord {
    fn into_otlp(self) -> Span {
        Span {
            trace_id: self.context.trace_id.to_vec(),
            span_id: self.context.span_id.to_vec(),
            parent_span_id: self
                .parent_span_id
                .map(|id| id.to_vec())
                .unwrap_or_default(),
            flags: 0x100 | u32::from(self.context.sampled),
            name: self.name,
            kind: match self.kind {
                SpanKind::Internal => span::SpanKind::Internal,
                SpanKind::Client => span::SpanKind::Client,
                SpanKind::Producer => span::SpanKind::Producer,
            } as i32,
            start_time_unix_nano: nanos(self.start),
            end_time_unix_nano: nanos(self.end),
            attributes: self
                .attributes
                .into_iter()
                .map(|(key, value)| attribute(key, value))
                .collect(),
            status: Some(match self.error {
                Some(message) => Status {
                    message,
                    code: status::StatusCode::Error as i32,
                },
                None => Status {
                    message: String::new(),
                    code: status::StatusCode::Ok as i32,
                },
            }),
            ..Default::default()
        }
    }
}

/// The exporter thread's state.
struct Exporter {
    url: String,
    batch_spans: usize,
    batch_delay: Duration,
    resource: Resource,
    metrics: TraceMetrics,
    last_complaint: Option<Instant>,
}

impl Exporter {
    fn run(mut self, queue: &Queue) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!("traces are not exported: no runtime for the exporter: {error}");
                return;
            }
        };
        let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        loop {
            // Until a batch is full, a flush is asked or the host went; at
            // most `batch_ms` with spans waiting.
            let (spans, flushes, closed) = {
                let mut pending = queue.pending();
                // When this batch's first span was seen waiting.
                let mut first_seen: Option<Instant> = None;
                while pending.spans.len() < self.batch_spans
                    && pending.flushes.is_empty()
                    && !pending.closed
                {
                    let left = if pending.spans.is_empty() {
                        Duration::from_secs(3600)
                    } else {
                        let seen = *first_seen.get_or_insert_with(Instant::now);
                        self.batch_delay.saturating_sub(seen.elapsed())
                    };
                    if left.is_zero() {
                        break;
                    }
                    pending = queue
                        .wake
                        .wait_timeout(pending, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                (
                    std::mem::take(&mut pending.spans),
                    std::mem::take(&mut pending.flushes),
                    pending.closed,
                )
            };
            let mut spans = spans;
            while !spans.is_empty() {
                let rest = spans.split_off(spans.len().min(self.batch_spans));
                runtime.block_on(self.post(&client, spans));
                spans = rest;
            }
            for done in flushes {
                let _ = done.send(());
            }
            if closed {
                return;
            }
        }
    }

    async fn post<C>(
        &mut self,
        client: &hyper_util::client::legacy::Client<C, http_body_util::Full<bytes::Bytes>>,
        spans: Vec<SpanRecord>,
    ) where
        C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    {
        let count = spans.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "taskhost".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: spans.into_iter().map(SpanRecord::into_otlp).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let body = request.encode_to_vec();
        let outcome = match http::Request::post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        {
            Ok(request) => {
                match tokio::time::timeout(POST_TIMEOUT, client.request(request)).await {
                    Ok(Ok(response)) if response.status().is_success() => Ok(()),
                    Ok(Ok(response)) => {
                        Err(format!("the collector answered {}", response.status()))
                    }
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err(format!("no answer within {} s", POST_TIMEOUT.as_secs())),
                }
            }
            Err(error) => Err(error.to_string()),
        };
        match outcome {
            Ok(()) => {
                self.metrics.exported.inc_by(count);
            }
            Err(error) => {
                self.metrics.failed.inc_by(count);
                let due = self
                    .last_complaint
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
                if due {
                    self.last_complaint = Some(Instant::now());
                    tracing::warn!(
                        "{count} span(s) not exported to {} ([telemetry] otlp): {error}",
                        self.url
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace_context::{TaskTrace, TraceParent};

    fn span() -> SpanRecord {
        let trace = TaskTrace::start(None, 1.0);
        SpanRecord {
            context: trace.span,
            parent_span_id: None,
            name: "task p/f".into(),
            kind: SpanKind::Internal,
            start: SystemTime::now(),
            end: SystemTime::now(),
            attributes: vec![("taskhost.attempts", Attr::Int(1))],
            error: None,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_never_waits() {
        // A collector that is not there (a port nothing listens on), a
        // queue of 2 and batches of 1: the exporter is busy failing.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let otlp = format!("http://{}", free.local_addr().unwrap());
        drop(free);
        let config = TelemetryConfig {
            otlp,
            sample: 1.0,
            batch_spans: 1,
            batch_delay: Duration::from_millis(10),
            queue_spans: 2,
            service_name: None,
        };
        let metrics = TraceMetrics::default();
        let telemetry = Telemetry::start(&config, "app", None, metrics.clone()).unwrap();
        let begun = Instant::now();
        for _ in 0..1000 {
            telemetry.record(span());
        }
        // A thousand records cost no wait on the exporter (its posts
        // fail: each would take a connect attempt).
        assert!(begun.elapsed() < Duration::from_secs(5));
        assert!(metrics.dropped.get() >= 900, "{}", metrics.dropped.get());
        telemetry.flush();
        assert_eq!(metrics.exported.get(), 0);
        assert_eq!(metrics.dropped.get() + metrics.failed.get(), 1000);
    }

    #[test]
    fn a_span_becomes_the_otlp_span_with_its_ids_status_and_attributes() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let mut record = span();
        record.context = TraceParent {
            span_id: [1; 8],
            ..parent
        };
        record.parent_span_id = Some(parent.span_id);
        record.error = Some("boom".into());
        let otlp = record.into_otlp();
        assert_eq!(otlp.trace_id, parent.trace_id.to_vec());
        assert_eq!(otlp.span_id, vec![1; 8]);
        assert_eq!(otlp.parent_span_id, parent.span_id.to_vec());
        let status = otlp.status.unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (status::StatusCode::Error as i32, "boom")
        );
        assert_eq!(otlp.attributes[0].key, "taskhost.attempts");
    }
}
