//! Outbound HTTP, through the standard `wasi:http/outgoing-handler`, so
//! any language's wasi:http client works. Deny by default: a request goes
//! out only to an origin its plugin's `[plugins.NAME.grants] http` lists
//! (see [`crate::config::HttpGrant`]); anything else fails in the guest
//! with `HTTP-request-denied` and a host log line that says what to change.
//! Requests are bounded by `[limits]` and `[plugins.NAME.limits]` (connect
//! and first-byte timeouts, response and request body bytes, requests open
//! at once per task) and fail at once when their task is cancelled, so the
//! guest can clean up before its next `app` call returns `cancelled`.
//!
//! This module owns the interface's state ([`HttpState`]) and its linking
//! ([`add_to_linker`]). Redirects are never followed by the host: a guest
//! that follows one makes a new request, checked like the first.

use crate::config::Uncertain;
use crate::config::{HttpLimits, PluginPolicy};
use crate::journal::{Journal, JournalError};
use crate::metrics::HttpMetrics;
use crate::task::{CancelSignal, TaskIdent};
use crate::telemetry::{Attr, CallSpan, SpanKind, Telemetry};
use http_body_util::{BodyExt, Limited};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::Linker;
use wasmtime_wasi::ResourceTable;
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

/// The `wasi:http` state of one task's store.
pub(crate) struct HttpState {
    ctx: WasiHttpCtx,
    hooks: Hooks,
}

/// What decides and bounds one task's requests.
struct Hooks {
    ident: Arc<TaskIdent>,
    /// Whose `grants.http` is the allow-list: shared by every task of the
    /// plugin, not copied per task.
    policy: Arc<PluginPolicy>,
    cancel: Arc<CancelSignal>,
    metrics: HttpMetrics,
    limits: HttpLimits,
    /// Requests open now; made on the first request, so a task that sends
    /// none allocates nothing.
    open: Option<Arc<AtomicUsize>>,
    /// A request was refused by the allow-list: a retry cannot change
    /// that, so the task's retry policy does not try again.
    denied: bool,
    /// Where each request's span goes (`[telemetry]`).
    telemetry: Option<Arc<Telemetry>>,
    /// A resuming task's journal and idempotency key: its requests are
    /// answered from the journal while it replays.
    journal: Option<(Arc<Journal>, Arc<str>)>,
}

impl HttpState {
    pub(crate) fn new(
        ident: Arc<TaskIdent>,
        policy: Arc<PluginPolicy>,
        cancel: Arc<CancelSignal>,
        metrics: HttpMetrics,
        telemetry: Option<Arc<Telemetry>>,
        journal: Option<(Arc<Journal>, Arc<str>)>,
    ) -> HttpState {
        // What one `fields` handle may hold; `handles_per_task` bounds how
        // many there are.
        let mut ctx = WasiHttpCtx::new();
        ctx.set_field_size_limit(policy.limits.http.fields_bytes);
        HttpState {
            ctx,
            hooks: Hooks {
                ident,
                limits: policy.limits.http,
                policy,
                cancel,
                metrics,
                open: None,
                denied: false,
                telemetry,
                journal,
            },
        }
    }

    /// Whether the allow-list refused one of the task's requests.
    pub(crate) fn denied(&self) -> bool {
        self.hooks.denied
    }

    /// What `wasmtime-wasi-http` works with; `table` is the store's one
    /// resource table, shared with WASI.
    pub(crate) fn view<'a>(&'a mut self, table: &'a mut ResourceTable) -> WasiHttpCtxView<'a> {
        WasiHttpCtxView {
            ctx: &mut self.ctx,
            hooks: &mut self.hooks,
            table,
        }
    }
}

/// Links `wasi:http/outgoing-handler` and `wasi:http/types` (async); the
/// `wasi:io` they use comes with WASI (see [`crate::wasi::add_to_linker`]).
pub(crate) fn add_to_linker<T: WasiHttpView + 'static>(
    linker: &mut Linker<T>,
) -> anyhow::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
        .map_err(|e| anyhow::anyhow!("cannot add wasi:http to the linker: {e:#}"))
}

type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

/// The smaller of the guest's wish and the host's bound.
fn bounded(asked: Option<Duration>, bound: Duration) -> Duration {
    asked.map_or(bound, |asked| asked.min(bound))
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        let uri = request.uri().clone();
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let default_port = if scheme == "http" { 80 } else { 443 };
        let port = uri.port_u16().unwrap_or(default_port);
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let ident = self.ident.clone();
        // `user:pass@host`: no grant names credentials, and hyper would try
        // to resolve the whole authority as a name. Refused, saying where
        // credentials go instead (and never echoing them).
        if authority.contains('@') {
            let host = authority.rsplit('@').next().unwrap_or_default().to_string();
            tracing::warn!(
                task = %ident.label(),
                task_id = ident.id,
                plugin = %ident.plugin,
                "task {} of plugin {}: HTTP request to {scheme}://{host} refused: its URL \
                 carries a user name or password; send credentials in an Authorization header",
                ident.label(),
                ident.plugin
            );
            self.metrics.denied(&ident.plugin);
            self.denied = true;
            return Box::new(async { Err(Error::HttpRequestUriInvalid) });
        }
        let allowed = uri.host().is_some_and(|host| {
            self.policy
                .grants
                .http
                .iter()
                .any(|g| g.allows(&scheme, host, port))
        });
        if !allowed {
            self.metrics.denied(&ident.plugin);
            self.denied = true;
            tracing::warn!(
                task = %ident.label(),
                task_id = ident.id,
                plugin = %ident.plugin,
                authority,
                "task {} of plugin {}: HTTP request to {scheme}://{authority} denied: \
                 add the origin to [plugins.{}.grants] http",
                ident.label(),
                ident.plugin,
                ident.plugin
            );
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let open = self.open.get_or_insert_with(Arc::default).clone();
        let max_open = self.limits.requests_in_flight;
        if open.fetch_add(1, Ordering::Relaxed) >= max_open {
            open.fetch_sub(1, Ordering::Relaxed);
            return Box::new(async move {
                Err(over_limit(
                    &ident,
                    format!(
                        "requests open at once may be at most {max_open} per task \
                         ([limits] http_requests_per_task)"
                    ),
                ))
            });
        }
        // Open until the response body is dropped (or the request fails).
        let guard = OpenRequest(open);
        let request_limit = self.limits.request_body_bytes;
        let too_large = format!(
            "the request body is larger than {request_limit} bytes \
             ([limits] http_request_body_bytes)"
        );
        // A declared length over the bound is refused before anything is
        // sent: a server that answers early would otherwise hide the cut.
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > request_limit as u64) {
            let error = over_limit(&ident, too_large);
            return Box::new(async move {
                drop(guard);
                Err(error)
            });
        }
        // hyper reports a failed body as a protocol error: the flag lets
        // the request's failure name the limit instead.
        let body_over = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (limited_ident, flag, message) = (ident.clone(), body_over.clone(), too_large.clone());
        let mut request = request.map(move |body| {
            Limited::new(body, request_limit)
                .map_err(move |error| match error.downcast::<Error>() {
                    Ok(error) => *error,
                    Err(_) => {
                        flag.store(true, Ordering::Relaxed);
                        over_limit(&limited_ident, message.clone())
                    }
                })
                .boxed_unsync()
        });
        let options = options.unwrap_or_default();
        let first_byte = bounded(options.first_byte_timeout, self.limits.first_byte_timeout);
        let options = RequestOptions {
            connect_timeout: Some(bounded(
                options.connect_timeout,
                self.limits.connect_timeout,
            )),
            first_byte_timeout: Some(first_byte),
            between_bytes_timeout: Some(bounded(options.between_bytes_timeout, first_byte)),
        };
        let cancel = self.cancel.clone();
        let limit = self.limits.response_bytes;
        let begun_at = Instant::now();
        let method = request.method().clone();
        let metrics = self.metrics.clone();
        // The request's own span in the task's trace, named to the server
        // in `traceparent` (a guest's own header of that name is replaced).
        let span = CallSpan::start(
            self.telemetry.as_ref(),
            &ident,
            SpanKind::Client,
            format!("HTTP {method}"),
        )
        .map(|span| {
            span.with("http.request.method", Attr::Text(method.to_string()))
                .with("url.scheme", Attr::Text(scheme.clone()))
                .with(
                    "server.address",
                    Attr::Text(uri.host().unwrap_or_default().to_string()),
                )
                .with("server.port", Attr::Int(i64::from(port)))
        });
        // An unrecorded trace still travels: the task's span is then the
        // server's parent.
        let parent = span
            .as_ref()
            .map(CallSpan::context)
            .or_else(|| ident.trace.as_deref().map(|trace| trace.span));
        if let Some(parent) = parent
            && let Ok(value) = http::HeaderValue::from_str(&parent.header())
        {
            request.headers_mut().insert("traceparent", value);
        }
        if let Some((journal, key)) = self.journal.clone() {
            // The intent takes its place now, in the order the guest began
            // its requests, whichever of them is answered first.
            let intent = match journal.reserve(format!("http intent {method} {uri}")) {
                Ok(intent) => intent,
                Err(error) => {
                    let error = journal_failed(error);
                    return Box::new(async move {
                        drop(guard);
                        Err(error)
                    });
                }
            };
            let sending = Sending {
                journal,
                intent,
                key,
                options,
                limit,
                cancel,
                guard,
                uncertain: self.policy.http_uncertain,
            };
            return Box::new(async move {
                let sent = sending.send(request).await;
                match &sent {
                    Ok((response, _)) => {
                        metrics.record(
                            &ident.plugin,
                            Some(response.status().as_u16()),
                            begun_at.elapsed(),
                        );
                        end_span(span, Some(response.status().as_u16()), None);
                    }
                    Err(error) => {
                        metrics.record(&ident.plugin, None, begun_at.elapsed());
                        end_span(span, None, Some(error.to_string()));
                    }
                }
                sent
            });
        }
        Box::new(async move {
            if cancel.is_cancelled() {
                return Err(cancelled());
            }
            let begun = Instant::now();
            let sent = wasmtime_wasi_http::default_send_request(request, Some(options));
            let (response, io) = tokio::select! {
                sent = sent => match sent {
                    Ok(sent) => sent,
                    Err(_) if body_over.load(Ordering::Relaxed) => {
                        metrics.record(&ident.plugin, None, begun.elapsed());
                        end_span(span, None, Some(too_large.clone()));
                        return Err(limit_error(too_large));
                    }
                    Err(error) => {
                        metrics.record(&ident.plugin, None, begun.elapsed());
                        end_span(span, None, Some(error.to_string()));
                        tracing::debug!(
                            task = %ident.label(),
                            plugin = %ident.plugin,
                            %method,
                            authority,
                            ms = begun.elapsed().as_secs_f64() * 1e3,
                            "HTTP {method} {scheme}://{authority} failed: {error}"
                        );
                        return Err(error);
                    }
                },
                () = cancel.cancelled() => {
                    end_span(span, None, Some("the task was cancelled".into()));
                    return Err(cancelled());
                }
            };
            let status = response.status().as_u16();
            metrics.record(&ident.plugin, Some(status), begun.elapsed());
            end_span(span, Some(status), None);
            // One debug line per request, once its body is done with.
            let mut done = RequestLog {
                ident: ident.clone(),
                line: format!("HTTP {method} {scheme}://{authority}: {status}"),
                bytes: 0,
                begun,
            };
            let response = response.map(move |body| {
                Limited::new(body, limit)
                    .map_err(move |error| {
                        // The body holds the guard: the request is open
                        // until the guest drops the body.
                        let _open = &guard;
                        error
                    })
                    .map_frame(move |frame| {
                        // A method call: the closure owns the whole log
                        // (a field alone would be captured otherwise, and
                        // the log written at once).
                        done.count(&frame);
                        frame
                    })
                    .map_err(move |error| match error.downcast::<Error>() {
                        Ok(error) => *error,
                        Err(_) => Error::InternalError(Some(format!(
                            "the response body is larger than {limit} bytes \
                             ([limits] http_response_bytes)"
                        ))),
                    })
                    .boxed_unsync()
            });
            Ok((
                response,
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

/// The debug line of one request, written when its response body is
/// dropped: status, bytes read and time.
struct RequestLog {
    ident: Arc<TaskIdent>,
    line: String,
    bytes: usize,
    begun: Instant,
}

impl RequestLog {
    fn count(&mut self, frame: &hyper::body::Frame<bytes::Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.bytes += data.len();
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        tracing::debug!(
            task = %self.ident.label(),
            plugin = %self.ident.plugin,
            bytes = self.bytes,
            ms = self.begun.elapsed().as_secs_f64() * 1e3,
            "{}, {} bytes in {:.1} ms",
            self.line,
            self.bytes,
            self.begun.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// One open request of a task: counted down when dropped.
struct OpenRequest(Arc<AtomicUsize>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a request over one of the task's bounds fails with; the host log
/// says so too, since the operator is the one who can raise it.
fn over_limit(ident: &TaskIdent, message: String) -> Error {
    tracing::warn!(
        task = %ident.label(),
        task_id = ident.id,
        plugin = %ident.plugin,
        "task {} of plugin {}: HTTP request refused: {message}",
        ident.label(),
        ident.plugin
    );
    limit_error(message)
}

fn limit_error(message: String) -> Error {
    Error::InternalError(Some(format!("limit: {message}")))
}

/// What a request of a cancelled task fails with.
fn cancelled() -> Error {
    Error::InternalError(Some("the task was cancelled".into()))
}

/// Records an outbound request's span when its answer's head (or its
/// failure) arrives: a 5xx is an error, as OpenTelemetry's HTTP
/// conventions have it for clients.
fn end_span(span: Option<CallSpan>, status: Option<u16>, error: Option<String>) {
    let Some(mut span) = span else { return };
    if let Some(status) = status {
        span.set("http.response.status_code", Attr::Int(i64::from(status)));
    }
    let error = error.or_else(|| {
        status
            .filter(|status| *status >= 500)
            .map(|status| format!("the server answered {status}"))
    });
    span.end(error);
}

/// A resuming task's request (`durable = "resume"`, docs/durable.md): an
/// intent step takes its place when the guest begins the request (so
/// concurrent requests keep the guest's order on replay) and is
/// committed before anything is sent; the body is read whole, and the
/// whole answer (status, headers, body) is journaled, keyed by its
/// intent, before the guest sees it. On replay a request whose answer is recorded is not
/// sent at all; one whose intent is recorded without its answer (the
/// host died in between) is sent again with the same `Idempotency-Key`
/// header (`TASKKEY/STEP`), which a server that honours it answers once.
struct Sending {
    journal: Arc<Journal>,
    /// Its intent, reserved when the request was begun.
    intent: crate::journal::Intent,
    key: Arc<str>,
    options: RequestOptions,
    limit: usize,
    cancel: Arc<CancelSignal>,
    guard: OpenRequest,
    /// What a request begun before a crash, with no answer recorded,
    /// does: sent again, or the task fails (`http_uncertain`).
    uncertain: Uncertain,
}

/// A journal error as the guest's request fails with it; the journal
/// keeps it too, and the task fails with it at the attempt's end.
fn journal_failed(error: JournalError) -> Error {
    Error::InternalError(Some(error.to_string()))
}

impl Sending {
    async fn send(
        self,
        request: http::Request<WasiBody>,
    ) -> Result<
        (
            http::Response<WasiBody>,
            Box<dyn Future<Output = Result<(), Error>> + Send>,
        ),
        Error,
    > {
        let Sending {
            journal,
            intent,
            key,
            options,
            limit,
            cancel,
            guard,
            uncertain,
        } = self;
        let (mut parts, body) = request.into_parts();
        let body = tokio::select! {
            body = body.collect() => body?.to_bytes(),
            () = cancel.cancelled() => return Err(cancelled()),
        };
        let digest = crate::journal::digest(&body);
        let answer_call = crate::journal::answer_call(
            intent.step,
            &format!("http {} {} body:{digest}", parts.method, parts.uri),
        );
        // The intent is committed before anything is sent.
        journal.commit().await.map_err(journal_failed)?;
        let ready: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async { Ok(()) });
        if let Some(recorded) = journal
            .replay_answer(intent.step, &answer_call)
            .map_err(journal_failed)?
        {
            drop(guard);
            return decode_answer(&recorded).map(|response| (response, ready));
        }
        // Sent before the crash, no answer recorded: it may have reached
        // the server.
        if intent.replayed && uncertain == Uncertain::Fail {
            drop(guard);
            return Err(journal_failed(journal.stop(JournalError::Uncertain {
                step: intent.step,
                call: intent.call,
                policy: "the plugin's `http_uncertain = \"fail\"`",
            })));
        }
        let mark = intent.mark;
        if let Ok(value) = http::HeaderValue::from_str(&format!("{key}/{mark}")) {
            parts.headers.insert("idempotency-key", value);
        }
        let request = http::Request::from_parts(
            parts,
            http_body_util::Full::new(body)
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        // Cancelled meanwhile: not sent (it would not be recorded, and
        // would be sent again when the task resumes).
        if cancel.is_cancelled() {
            return Err(cancelled());
        }
        let began = Instant::now();
        let answer = tokio::select! {
            answer = receive(request, options, limit) => answer,
            () = cancel.cancelled() => return Err(cancelled()),
        };
        drop(guard);
        let encoded = encode_answer(&answer);
        journal
            .record(answer_call, encoded, began)
            .await
            .map_err(journal_failed)?;
        answer.map(|(status, headers, body)| (response_of(status, headers, body), ready))
    }
}

/// A response as the journal keeps it: status, headers, whole body.
type Answer = Result<(u16, Vec<(String, Vec<u8>)>, bytes::Bytes), Error>;

/// Sends `request` and reads its answer whole (at most `limit` bytes).
async fn receive(
    request: http::Request<WasiBody>,
    options: RequestOptions,
    limit: usize,
) -> Answer {
    let (response, io) = wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
    // The connection's own future runs while the body is read, and stops
    // with it however the read ends.
    struct Connection(tokio::task::JoinHandle<Result<(), Error>>);
    impl Drop for Connection {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _connection = Connection(tokio::spawn(io));
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, limit).collect().await.map_err(|error| {
        match error.downcast::<Error>() {
            Ok(error) => *error,
            Err(_) => limit_error(format!(
                "the response body is larger than {limit} bytes ([limits] http_response_bytes)"
            )),
        }
    })?;
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    Ok((parts.status.as_u16(), headers, body.to_bytes()))
}

fn response_of(
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: bytes::Bytes,
) -> http::Response<WasiBody> {
    let mut response = http::Response::new(
        http_body_util::Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// An answer as a journal step keeps it: `0` and the error's text, or `1`,
/// the status (2 bytes), the header count (4), each header's name and
/// value (each a 4-byte length and its bytes), then the body.
fn encode_answer(answer: &Answer) -> Vec<u8> {
    let put = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    match answer {
        Err(error) => {
            let mut out = vec![0];
            out.extend_from_slice(error.to_string().as_bytes());
            out
        }
        Ok((status, headers, body)) => {
            let mut out = vec![1];
            out.extend_from_slice(&status.to_le_bytes());
            out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
            for (name, value) in headers {
                put(&mut out, name.as_bytes());
                put(&mut out, value);
            }
            out.extend_from_slice(body);
            out
        }
    }
}

fn decode_answer(bytes: &[u8]) -> Result<http::Response<WasiBody>, Error> {
    let unreadable =
        || Error::InternalError(Some("a journaled HTTP answer does not read back".into()));
    let (&kind, rest) = bytes.split_first().ok_or_else(unreadable)?;
    if kind == 0 {
        return Err(Error::InternalError(Some(
            String::from_utf8_lossy(rest).into_owned(),
        )));
    }
    let mut at = 0;
    let mut take = |n: usize| -> Result<&[u8], Error> {
        let part = rest.get(at..at + n).ok_or_else(unreadable)?;
        at += n;
        Ok(part)
    };
    let status = u16::from_le_bytes(take(2)?.try_into().map_err(|_| unreadable())?);
    let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| unreadable())?);
    let mut headers = Vec::new();
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| unreadable())?) as usize;
        let name = String::from_utf8_lossy(take(len)?).into_owned();
        let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| unreadable())?) as usize;
        headers.push((name, take(len)?.to_vec()));
    }
    let body = bytes::Bytes::copy_from_slice(&rest[at..]);
    Ok(response_of(status, headers, body))
}
