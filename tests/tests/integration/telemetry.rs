//! OpenTelemetry traces (`[telemetry]`) sent to a real OTLP/HTTP receiver
//! of the test's own, which decodes the protobuf with the OpenTelemetry
//! project's message types: a webhook request's `traceparent` reaches the
//! task's span, its outbound HTTP call's span and the header the loopback
//! server received, the spans of its key-value call, its child's start,
//! its join and the child's sleep, and the guest's own `TRACEPARENT`; a
//! child task's span is the child of the span that started it.

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use taskhost_tests::routes::start;
use taskhost_tests::{TestApp, millis, poll_until, secs};

/// What the receiver and the loopback server saw.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) spans: Vec<Span>,
    service_names: Vec<String>,
    /// Each span's sender's `service.instance.id` (a cluster host's name),
    /// by span id.
    pub(crate) instances: std::collections::HashMap<Vec<u8>, String>,
    traceparents: Vec<String>,
}

impl Seen {
    /// The span so named, or a panic listing those there are.
    pub(crate) fn span(&self, name: &str) -> &Span {
        self.spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no span {name}: {:?}",
                    self.spans.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
    }
}

/// An OTLP/HTTP receiver (`POST /v1/traces`) and a plain server (`GET
/// /hello`, noting its `traceparent`) on one loopback port.
pub(crate) fn receiver() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (traces, hello) = (seen.clone(), seen.clone());
    let address = taskhost_tests::serve(move |_| {
        Router::new()
            .route(
                "/v1/traces",
                post(move |body: Bytes| async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    let mut seen = traces.lock().unwrap();
                    for resource in request.resource_spans {
                        let mut instance = String::new();
                        for attribute in resource.resource.into_iter().flat_map(|r| r.attributes) {
                            if attribute.key == "service.name" {
                                seen.service_names.push(format!("{:?}", attribute.value));
                            }
                            if attribute.key == "service.instance.id" {
                                instance = format!("{:?}", attribute.value);
                            }
                        }
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                seen.instances
                                    .insert(span.span_id.clone(), instance.clone());
                                seen.spans.push(span);
                            }
                        }
                    }
                    ""
                }),
            )
            .route(
                "/hello",
                get(move |headers: axum::http::HeaderMap| async move {
                    if let Some(value) = headers.get("traceparent") {
                        hello
                            .lock()
                            .unwrap()
                            .traceparents
                            .push(value.to_str().unwrap().to_string());
                    }
                    "hello"
                }),
            )
    });
    (address, seen)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn attribute(span: &Span, key: &str) -> String {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .map(|a| format!("{:?}", a.value))
        .unwrap_or_default()
}

#[test]
fn a_webhooks_trace_reaches_its_task_its_http_call_and_its_child_task() {
    let (otlp, seen) = receiver();
    let app = TestApp::new(&format!(
        r#"
        name = "traced"
        [telemetry]
        otlp = "http://{otlp}"
        batch_ms = 50
        [plugins.kit]
        path = "{{testkit}}"
        [plugins.kit.grants]
        http = ["http://127.0.0.1:{port}"]
        [[routes]]
        http = "POST /hooks/traced"
        plugin = "kit"
        factory = "traced_hook"
        args = {{ url = "http://{otlp}/hello" }}
        respond = "result"
        "#,
        port = otlp.port(),
    ));
    let (host, listen) = start(&app);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let answer = ureq::post(&format!("http://{listen}/hooks/traced"))
        .set("traceparent", &format!("00-{trace_id}-{caller_span}-01"))
        .send_string("{}")
        .expect("the webhook answers");
    let answer: serde_json::Value = answer.into_json().unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    // The task, its HTTP call, its key-value call, the start of its child
    // and its join, the child and the child's sleep: seven spans, batched
    // within 50 ms of their ends.
    poll_until(secs(60), millis(20), || {
        match seen.lock().unwrap().spans.len() {
            n if n >= 7 => Ok(()),
            n => Err(format!("{n} spans so far")),
        }
    });
    let seen = seen.lock().unwrap();
    let find = |name: &str| seen.span(name);
    let task = find("task kit/traced_hook");
    let call = find("HTTP GET");
    let kv = find("kv increment");
    let start_child = find("start task kit/nap");
    let join = find("join");
    let child = find("task kit/nap");
    let sleep = find("sleep");
    // One trace, the caller's.
    for span in [task, call, kv, start_child, join, child, sleep] {
        assert_eq!(hex(&span.trace_id), trace_id, "{}", span.name);
    }
    // The task under the caller's span; what it did under the task's; the
    // child under the span that started it, its sleep under the child's.
    assert_eq!(hex(&task.parent_span_id), caller_span);
    for span in [call, kv, start_child, join] {
        assert_eq!(span.parent_span_id, task.span_id, "{}", span.name);
    }
    assert_eq!(child.parent_span_id, start_child.span_id);
    assert_eq!(sleep.parent_span_id, child.span_id);
    assert!(
        attribute(kv, "db.namespace").contains("kit/traced"),
        "{kv:?}"
    );
    assert!(
        attribute(sleep, "taskhost.sleep_ms").contains('1'),
        "{sleep:?}"
    );
    // The guest saw its own span as its `traceparent` (TRACEPARENT).
    assert_eq!(
        answer["traceparent"],
        format!("00-{trace_id}-{}-01", hex(&task.span_id)),
        "{answer}"
    );
    // The server was told the call's span.
    assert_eq!(
        seen.traceparents,
        [format!("00-{trace_id}-{}-01", hex(&call.span_id))]
    );
    assert!(
        attribute(task, "taskhost.outcome").contains("done"),
        "{task:?}"
    );
    assert!(
        attribute(call, "http.response.status_code").contains("200"),
        "{call:?}"
    );
    assert!(task.start_time_unix_nano <= call.start_time_unix_nano);
    assert!(call.end_time_unix_nano <= task.end_time_unix_nano);
    assert!(
        seen.service_names.iter().all(|n| n.contains("traced")),
        "{:?}",
        seen.service_names
    );
    drop(seen);
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}

/// A durable task's record keeps the trace it was submitted under: after
/// `kill -9` and a restart, its next run's span is in that trace, under
/// the same parent.
#[test]
fn a_durable_task_run_again_after_kill_9_stays_in_its_trace() {
    let (otlp, seen) = receiver();
    let app = TestApp::new(&format!(
        r#"
        name = "traced"
        [telemetry]
        otlp = "http://{otlp}"
        batch_ms = 50
        [plugins.kit]
        path = "{{testkit}}"
        "#,
    ));
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let mut host = app.spawn();
    let added = app.cli(&[
        "add",
        "kit",
        "nap",
        "--args",
        r#"{"ms": 600000}"#,
        "--name",
        "kept",
        "--durable",
        "--traceparent",
        &format!("00-{trace_id}-{caller_span}-01"),
    ]);
    assert_eq!(added.code, Some(0), "{}", added.stderr);
    host.wait_for(1, |l| l["event"] == "started" && l["task"] == "kept");
    host.signal("KILL");
    host.finish();

    let mut host = app.spawn();
    host.wait_for(1, |l| l["event"] == "started" && l["task"] == "kept");
    let cancelled = app.cli(&["cancel", "kept", "--json"]);
    assert_eq!(cancelled.code, Some(0), "{}", cancelled.stderr);
    host.wait_for(1, |l| l["event"] == "cancelled" && l["task"] == "kept");
    poll_until(secs(60), millis(20), || {
        let seen = seen.lock().unwrap();
        match seen.spans.iter().any(|s| s.name == "task kit/nap") {
            true => Ok(()),
            false => Err(format!("{} spans so far", seen.spans.len())),
        }
    });
    let seen = seen.lock().unwrap();
    let task = seen.span("task kit/nap");
    assert_eq!(hex(&task.trace_id), trace_id);
    assert_eq!(hex(&task.parent_span_id), caller_span);
    assert!(
        attribute(task, "taskhost.attempts").contains('2'),
        "the run after the restart is attempt 2: {task:?}"
    );
    assert!(
        attribute(task, "taskhost.outcome").contains("cancelled"),
        "{task:?}"
    );
    drop(seen);
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}
