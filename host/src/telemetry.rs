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
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
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
    pub(crate) kind: SpanKind,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    pub(crate) body: SpanBody,
    /// Set when it failed: the span's status is then `error`.
    pub(crate) error: Option<String>,
}

/// What a span says besides its ids and times.
#[derive(Debug, Clone)]
pub(crate) enum SpanBody {
    /// A task's span: its name and attributes are read from its identity
    /// when the span is encoded, on the exporter's thread. A worker ending
    /// a task copies no string for its span.
    Task {
        ident: Arc<TaskIdent>,
        attempts: u32,
        /// `done`, `failed` or `cancelled`.
        outcome: &'static str,
    },
    /// A call's span, named and described by its caller.
    Call {
        name: std::borrow::Cow<'static, str>,
        attributes: Vec<(&'static str, Attr)>,
    },
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
        let scope = InstrumentationScope {
            name: "taskhost".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let exporter = Exporter {
            url: format!("{}/v1/traces", config.otlp),
            batch_spans: config.batch_spans,
            batch_delay: config.batch_delay,
            resource: resource.encode_to_vec(),
            scope: scope.encode_to_vec(),
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
    ident: &Arc<TaskIdent>,
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
    SpanRecord {
        context: trace.span,
        parent_span_id: trace.parent_span_id,
        kind: SpanKind::Internal,
        start: end.checked_sub(ran).unwrap_or(end),
        end,
        body: SpanBody::Task {
            ident: ident.clone(),
            attempts,
            outcome: state,
        },
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
            kind,
            start,
            end: SystemTime::now(),
            body: SpanBody::Call { name, attributes },
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

/// OTLP's protobuf, written straight from the records: the spans of a
/// batch cost no intermediate message (a `Span` of `opentelemetry-proto`
/// is a dozen allocations: each key, each value, each id). The field
/// numbers are those of `opentelemetry/proto/trace/v1/trace.proto`; the
/// tests decode the output with `opentelemetry-proto`'s own types.
mod encode {
    use super::{Attr, SpanBody, SpanKind, SpanRecord, nanos};
    use opentelemetry_proto::tonic::trace::v1::{span, status};
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

    /// A length-delimited field: bytes, a string or an encoded message.
    pub(super) fn delimited(tag: u32, content: &[u8], buf: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(content.len() as u64, buf);
        buf.extend_from_slice(content);
    }

    fn varint(tag: u32, value: u64, buf: &mut Vec<u8>) {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }

    fn fixed64(tag: u32, value: u64, buf: &mut Vec<u8>) {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }

    fn fixed32(tag: u32, value: u32, buf: &mut Vec<u8>) {
        encode_key(tag, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }

    /// An attribute's value as it is encoded.
    enum Value<'a> {
        Text(&'a str),
        Int(i64),
    }

    /// A `KeyValue` (key 1, `AnyValue` 2: `string_value` 1 or
    /// `int_value` 3) as a span's attribute (field 9).
    fn attribute(key: &str, value: Value<'_>, buf: &mut Vec<u8>) {
        let any_len = match value {
            Value::Text(text) => 1 + encoded_len_varint(text.len() as u64) + text.len(),
            Value::Int(n) => 1 + encoded_len_varint(n as u64),
        };
        let pair_len = 1
            + encoded_len_varint(key.len() as u64)
            + key.len()
            + 1
            + encoded_len_varint(any_len as u64)
            + any_len;
        encode_key(9, WireType::LengthDelimited, buf);
        encode_varint(pair_len as u64, buf);
        delimited(1, key.as_bytes(), buf);
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(any_len as u64, buf);
        match value {
            Value::Text(text) => delimited(1, text.as_bytes(), buf),
            Value::Int(n) => varint(3, n as u64, buf),
        }
    }

    /// Appends `record` as a `Span` message's fields.
    pub(super) fn span(record: &SpanRecord, buf: &mut Vec<u8>) {
        delimited(1, &record.context.trace_id, buf);
        delimited(2, &record.context.span_id, buf);
        if let Some(parent) = &record.parent_span_id {
            delimited(4, parent, buf);
        }
        match &record.body {
            SpanBody::Task { ident, .. } => {
                let (plugin, factory) = (&*ident.plugin, ident.factory.as_str());
                encode_key(5, WireType::LengthDelimited, buf);
                encode_varint((6 + plugin.len() + factory.len()) as u64, buf);
                buf.extend_from_slice(b"task ");
                buf.extend_from_slice(plugin.as_bytes());
                buf.push(b'/');
                buf.extend_from_slice(factory.as_bytes());
            }
            SpanBody::Call { name, .. } => delimited(5, name.as_bytes(), buf),
        }
        let kind = match record.kind {
            SpanKind::Internal => span::SpanKind::Internal,
            SpanKind::Client => span::SpanKind::Client,
            SpanKind::Producer => span::SpanKind::Producer,
        };
        varint(6, kind as u64, buf);
        fixed64(7, nanos(record.start), buf);
        fixed64(8, nanos(record.end), buf);
        match &record.body {
            SpanBody::Task {
                ident,
                attempts,
                outcome,
            } => {
                attribute("taskhost.plugin", Value::Text(&ident.plugin), buf);
                attribute("taskhost.factory", Value::Text(&ident.factory), buf);
                attribute("taskhost.build", Value::Text(&ident.plugin_version), buf);
                let worker = match ident.worker {
                    crate::task::WorkerId::Main => std::borrow::Cow::Borrowed("main"),
                    crate::task::WorkerId::Index(i) => std::borrow::Cow::Owned(i.to_string()),
                };
                attribute("taskhost.worker", Value::Text(&worker), buf);
                let id = i64::try_from(ident.id).unwrap_or(i64::MAX);
                attribute("taskhost.task_id", Value::Int(id), buf);
                attribute("taskhost.attempts", Value::Int(i64::from(*attempts)), buf);
                attribute("taskhost.outcome", Value::Text(outcome), buf);
                if let Some(name) = &ident.name {
                    attribute("taskhost.task", Value::Text(name), buf);
                }
            }
            SpanBody::Call { attributes, .. } => {
                for (key, value) in attributes {
                    let value = match value {
                        Attr::Text(text) => Value::Text(text),
                        Attr::Int(n) => Value::Int(*n),
                    };
                    attribute(key, value, buf);
                }
            }
        }
        // Status (15): `message` 2, `code` 3.
        let (code, message) = match &record.error {
            Some(message) => (status::StatusCode::Error, message.as_str()),
            None => (status::StatusCode::Ok, ""),
        };
        let status_len = if message.is_empty() {
            0
        } else {
            1 + encoded_len_varint(message.len() as u64) + message.len()
        } + 1
            + encoded_len_varint(code as u64);
        encode_key(15, WireType::LengthDelimited, buf);
        encode_varint(status_len as u64, buf);
        if !message.is_empty() {
            delimited(2, message.as_bytes(), buf);
        }
        varint(3, code as u64, buf);
        // Flags (16): the trace flags' low byte, and bit 8 ("is the
        // parent remote" known).
        fixed32(16, 0x100 | u32::from(record.context.sampled), buf);
    }
}

/// The exporter thread's state.
struct Exporter {
    url: String,
    batch_spans: usize,
    batch_delay: Duration,
    /// The encoded `Resource` (this host) and `InstrumentationScope`
    /// (taskhost), the same in every post.
    resource: Vec<u8>,
    scope: Vec<u8>,
    metrics: TraceMetrics,
    last_complaint: Option<Instant>,
}

impl Exporter {
    /// An `ExportTraceServiceRequest` of `spans`: one `ResourceSpans`
    /// (1) of this host's resource (1) and one `ScopeSpans` (2) of
    /// taskhost's scope (1) and the spans (2).
    fn encode(&self, spans: &[SpanRecord]) -> Vec<u8> {
        let mut scope_spans = Vec::with_capacity(256 * spans.len() + 64);
        encode::delimited(1, &self.scope, &mut scope_spans);
        let mut one = Vec::with_capacity(512);
        for record in spans {
            one.clear();
            encode::span(record, &mut one);
            encode::delimited(2, &one, &mut scope_spans);
        }
        let mut resource_spans = Vec::with_capacity(scope_spans.len() + self.resource.len() + 16);
        encode::delimited(1, &self.resource, &mut resource_spans);
        encode::delimited(2, &scope_spans, &mut resource_spans);
        let mut request = Vec::with_capacity(resource_spans.len() + 8);
        encode::delimited(1, &resource_spans, &mut request);
        request
    }

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
        let body = self.encode(&spans);
        drop(spans);
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
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{span, status};

    fn span() -> SpanRecord {
        let trace = TaskTrace::start(None, 1.0);
        SpanRecord {
            context: trace.span,
            parent_span_id: None,
            kind: SpanKind::Client,
            start: SystemTime::now(),
            end: SystemTime::now(),
            body: SpanBody::Call {
                name: "kv get".into(),
                attributes: vec![
                    ("db.namespace", Attr::Text("p/state".into())),
                    ("taskhost.tasks", Attr::Int(-3)),
                ],
            },
            error: None,
        }
    }

    fn exporter() -> Exporter {
        Exporter {
            url: String::new(),
            batch_spans: 1,
            batch_delay: Duration::from_millis(1),
            resource: Resource {
                attributes: vec![attribute("service.name", Attr::Text("app".into()))],
                ..Default::default()
            }
            .encode_to_vec(),
            scope: InstrumentationScope {
                name: "taskhost".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            metrics: TraceMetrics::default(),
            last_complaint: None,
        }
    }

    fn text(value: &Option<AnyValue>) -> String {
        match value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(text)) => text.clone(),
            Some(any_value::Value::IntValue(n)) => n.to_string(),
            other => panic!("{other:?}"),
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
    fn spans_encode_as_opentelemetry_protos_own_types_decode_them() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let mut call = span();
        call.context = TraceParent {
            span_id: [1; 8],
            ..parent
        };
        call.parent_span_id = Some(parent.span_id);
        call.error = Some("boom".into());
        let ident = Arc::new(TaskIdent {
            name: Some("nightly".into()),
            worker: crate::task::WorkerId::Index(1),
            plugin_version: "sha256:0123456789ab".into(),
            ..TaskIdent::for_tests(42, "reports", "build")
        });
        let task = task_span(
            &ident,
            TaskTrace {
                span: TraceParent {
                    span_id: [2; 8],
                    ..parent
                },
                parent_span_id: None,
            },
            3,
            &Outcome::Done {
                result: "null".into(),
            },
            Duration::from_millis(5),
        );
        let body = exporter().encode(&[call, task]);
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("decodes");
        let resource = &request.resource_spans[0];
        assert_eq!(
            resource.resource.as_ref().unwrap().attributes[0].key,
            "service.name"
        );
        let scope = &resource.scope_spans[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "taskhost");
        let [call, task] = &scope.spans[..] else {
            panic!("{:?}", scope.spans)
        };
        assert_eq!(call.trace_id, parent.trace_id.to_vec());
        assert_eq!(call.span_id, vec![1; 8]);
        assert_eq!(call.parent_span_id, parent.span_id.to_vec());
        assert_eq!(call.name, "kv get");
        assert_eq!(call.kind, span::SpanKind::Client as i32);
        assert_eq!(call.flags, 0x101);
        assert!(call.start_time_unix_nano > 0);
        let status = call.status.as_ref().unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (status::StatusCode::Error as i32, "boom")
        );
        let attributes: Vec<(String, String)> = call
            .attributes
            .iter()
            .map(|a| (a.key.clone(), text(&a.value)))
            .collect();
        assert_eq!(
            attributes,
            [
                ("db.namespace".to_string(), "p/state".to_string()),
                ("taskhost.tasks".to_string(), "-3".to_string())
            ]
        );
        assert_eq!(task.name, "task reports/build");
        assert_eq!(task.kind, span::SpanKind::Internal as i32);
        assert!(task.parent_span_id.is_empty());
        assert_eq!(
            task.status.as_ref().unwrap().code,
            status::StatusCode::Ok as i32
        );
        assert_eq!(
            task.end_time_unix_nano - task.start_time_unix_nano,
            5_000_000
        );
        let attributes: Vec<(String, String)> = task
            .attributes
            .iter()
            .map(|a| (a.key.clone(), text(&a.value)))
            .collect();
        let want = [
            ("taskhost.plugin", "reports"),
            ("taskhost.factory", "build"),
            ("taskhost.build", "sha256:0123456789ab"),
            ("taskhost.worker", "1"),
            ("taskhost.task_id", "42"),
            ("taskhost.attempts", "3"),
            ("taskhost.outcome", "done"),
            ("taskhost.task", "nightly"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(attributes, want);
    }
}
