//! Outbound HTTP, through the standard `wasi:http/outgoing-handler`, so
//! any language's wasi:http client works. Deny by default: a request goes
//! out only to an origin its plugin's `[plugins.NAME.grants] http` lists
//! (see [`crate::config::HttpGrant`]); anything else fails in the guest
//! with `HTTP-request-denied` and a host log line that says what to change.
//! Requests are bounded by `[limits]` (connect and first-byte timeouts,
//! response body bytes) and fail at once when their task is cancelled, so
//! the guest can clean up before its next `app` call returns `cancelled`.
//!
//! This module owns the interface's state ([`HttpState`]) and its linking
//! ([`add_to_linker`]). Redirects are never followed by the host: a guest
//! that follows one makes a new request, checked like the first.

use crate::config::{Limits, PluginPolicy};
use crate::metrics::HttpMetrics;
use crate::task::{CancelSignal, TaskIdent};
use http_body_util::{BodyExt, Limited};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::Linker;
use wasmtime_wasi::ResourceTable;
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

/// The `wasi:http` state of one task's store.
pub struct HttpState {
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
    connect_timeout: Duration,
    first_byte_timeout: Duration,
    response_bytes: usize,
}

impl HttpState {
    pub fn new(
        ident: Arc<TaskIdent>,
        policy: Arc<PluginPolicy>,
        cancel: Arc<CancelSignal>,
        limits: &Limits,
        metrics: HttpMetrics,
    ) -> HttpState {
        HttpState {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks {
                ident,
                policy,
                cancel,
                metrics,
                connect_timeout: Duration::from_millis(limits.http_connect_timeout_ms),
                first_byte_timeout: Duration::from_millis(limits.http_first_byte_timeout_ms),
                response_bytes: limits.http_response_bytes,
            },
        }
    }

    /// What `wasmtime-wasi-http` works with; `table` is the store's one
    /// resource table, shared with WASI.
    pub fn view<'a>(&'a mut self, table: &'a mut ResourceTable) -> WasiHttpCtxView<'a> {
        WasiHttpCtxView {
            ctx: &mut self.ctx,
            hooks: &mut self.hooks,
            table,
        }
    }
}

/// Links `wasi:http/outgoing-handler` and `wasi:http/types` (async); the
/// `wasi:io` they use comes with WASI (see [`crate::wasi::add_to_linker`]).
pub fn add_to_linker<T: WasiHttpView + 'static>(linker: &mut Linker<T>) -> anyhow::Result<()> {
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
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let default_port = if scheme == "http" { 80 } else { 443 };
        let port = uri.port_u16().unwrap_or(default_port);
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let allowed = uri.host().is_some_and(|host| {
            self.policy
                .grants
                .http
                .iter()
                .any(|g| g.allows(&scheme, host, port))
        });
        let ident = self.ident.clone();
        if !allowed {
            self.metrics.denied(&ident.plugin);
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
        let options = options.unwrap_or_default();
        let first_byte = bounded(options.first_byte_timeout, self.first_byte_timeout);
        let options = RequestOptions {
            connect_timeout: Some(bounded(options.connect_timeout, self.connect_timeout)),
            first_byte_timeout: Some(first_byte),
            between_bytes_timeout: Some(bounded(options.between_bytes_timeout, first_byte)),
        };
        let cancel = self.cancel.clone();
        let limit = self.response_bytes;
        let method = request.method().clone();
        let metrics = self.metrics.clone();
        Box::new(async move {
            if cancel.is_cancelled() {
                return Err(cancelled());
            }
            let begun = Instant::now();
            let sent = wasmtime_wasi_http::default_send_request(request, Some(options));
            let (response, io) = tokio::select! {
                sent = sent => match sent {
                    Ok(sent) => sent,
                    Err(error) => {
                        metrics.record(&ident.plugin, None, begun.elapsed());
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
                () = cancel.cancelled() => return Err(cancelled()),
            };
            metrics.record(
                &ident.plugin,
                Some(response.status().as_u16()),
                begun.elapsed(),
            );
            tracing::debug!(
                task = %ident.label(),
                plugin = %ident.plugin,
                %method,
                authority,
                status = response.status().as_u16(),
                ms = begun.elapsed().as_secs_f64() * 1e3,
                "HTTP {method} {scheme}://{authority}: {}",
                response.status()
            );
            let response = response.map(|body| {
                Limited::new(body, limit)
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

/// What a request of a cancelled task fails with.
fn cancelled() -> Error {
    Error::InternalError(Some("the task was cancelled".into()))
}
