//! Websocket routes: each accepted connection starts one task, named
//! `ws:<connection id>`, bound to the connection for its whole life.
//!
//! - The client closing (or vanishing) cancels the task, cooperatively
//!   then forced after the grace period, so its cleanup runs; so does the
//!   end of a close handshake the task or the host began. Tasks still
//!   `recv`ing on the connection see none only once that task has ended.
//! - The task ending closes the connection, after what it queued: 1000
//!   after a result, 1011 after a failure, 1001 after a cancel.
//! - The host stopping closes every connection with 1001 (going away).
//! - Bounded: a client's message over `max_message_bytes` closes with
//!   1009; a client that does not read is dropped once a task's `send` has
//!   waited `send_timeout` on its full buffer; a client that sends nothing
//!   (not even a pong to the pings sent every third of `idle_timeout`) for
//!   `idle_timeout` is closed with 1001. Connections over a route's or the
//!   listener's `max_connections` are refused with 503 before the upgrade.
//!
//! When the connection is over, its task's record is dropped from the
//! registry: a connection leaves nothing in `taskhost tasks` (the log's
//! lifecycle lines keep its story).

use super::{Shared, error, request_json, task_args};
use crate::config::{RouteConfig, TaskSpec, WebSocketRoute};
use crate::connection_hub::{ConnectionEnds, ConnectionLimits, Message, Outgoing};
use crate::registry::{AddTaskError, RegisterError, TaskHandle};
use crate::task::{TaskState, WorkerId};
use axum::extract::ConnectInfo;
use axum::extract::ws::{self, CloseFrame, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

/// tungstenite's read buffer per connection. Its default, 128 KiB, is
/// zero-filled on every read, so each connection held 128 KiB resident
/// (measured: 208 KiB per connection with its task, 55 KiB of it the
/// task); a bigger message still gets a buffer of its own size. Writes go
/// out frame by frame (`write_buffer_size(0)`), each flushed by `send`.
const READ_BUFFER: usize = 4096;

/// How long a close handshake may take before the socket is dropped.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

/// One websocket route, as its handler holds it.
struct Route {
    shared: Arc<Shared>,
    config: RouteConfig,
    settings: WebSocketRoute,
    label: String,
    /// Open connections of this route.
    slots: Arc<Semaphore>,
}

pub(super) fn handler(
    shared: Arc<Shared>,
    config: RouteConfig,
    settings: WebSocketRoute,
) -> axum::routing::MethodRouter {
    let route = Arc::new(Route {
        label: config.label(),
        slots: Arc::new(Semaphore::new(settings.max_connections as usize)),
        shared,
        config,
        settings,
    });
    axum::routing::get(
        move |upgrade: Result<WebSocketUpgrade, ws::rejection::WebSocketUpgradeRejection>,
              ConnectInfo(remote): ConnectInfo<SocketAddr>,
              uri: Uri,
              headers: HeaderMap| {
            let route = route.clone();
            async move { accept(route, upgrade, remote, uri, headers) }
        },
    )
}

fn accept(
    route: Arc<Route>,
    upgrade: Result<WebSocketUpgrade, ws::rejection::WebSocketUpgradeRejection>,
    remote: SocketAddr,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let metrics = route.shared.host.route_metrics();
    let refuse = |status: StatusCode, kind: &str, message: String| {
        metrics.answered(&route.label, status.as_u16(), Duration::ZERO);
        error(status, kind, message)
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return refuse(
                StatusCode::UPGRADE_REQUIRED,
                "not_websocket",
                format!(
                    "{} takes websocket connections only: {rejection}",
                    route.label
                ),
            );
        }
    };
    if route.shared.shutdown.is_cancelled() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the host is stopping".into(),
        );
    }
    let Ok(own) = route.slots.clone().try_acquire_owned() else {
        metrics.dropped(&route.label, "refused");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "limit",
            format!(
                "{} has {} open connections, its `max_connections`; try again later",
                route.label, route.settings.max_connections
            ),
        );
    };
    let Ok(total) = route.shared.connections.clone().try_acquire_owned() else {
        metrics.dropped(&route.label, "refused");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "limit",
            format!(
                "the listener has {} open connections, [listen] `max_connections`; try again \
                 later",
                route.shared.max_connections
            ),
        );
    };
    let request = request_json(&route.config, &uri, &headers, remote);
    let max = route.settings.max_message_bytes;
    // Counted from the answer on, so a stop that begins between the 101
    // and the upgrade's completion still waits for this connection.
    let tracked = route.shared.tracker.token();
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            serve(route, socket, request, remote).await;
            drop((own, total, tracked));
        })
}

/// Why a connection ended, from the listener's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client sent a close frame.
    ClientClosed,
    /// The socket ended or failed without a close.
    ClientGone,
    /// A close the host sent was answered (or timed out).
    Closed,
    /// A task's `send` gave up on the full buffer.
    TooSlow,
    /// Nothing came from the client for `idle_timeout`.
    Idle,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client closed",
            End::ClientGone => "client gone",
            End::Closed => "closed",
            End::TooSlow => "client too slow",
            End::Idle => "idle timeout",
        }
    }
}

/// A close the host asks the writer for. On a channel of its own (a
/// `watch`), so no queue of pings can crowd it out.
#[derive(Debug, Clone, Copy)]
enum Closing {
    /// Send what is queued now (a close the task queued among it wins),
    /// then close.
    AfterQueued(u16, &'static str),
    /// Close at once.
    Now(u16, &'static str),
}

async fn serve(
    route: Arc<Route>,
    socket: WebSocket,
    request: serde_json::Map<String, serde_json::Value>,
    remote: SocketAddr,
) {
    let host = &route.shared.host;
    let metrics = host.route_metrics();
    let limits = ConnectionLimits {
        max_message_bytes: route.settings.max_message_bytes,
        send_buffer: route.settings.send_buffer,
        send_timeout: route.settings.send_timeout,
    };
    let (connection, ends) = host.connections().open(&route.config.plugin, limits);
    let id = connection.id;
    drop(connection);
    let mut request = request;
    request.insert("connection".into(), id.into());
    let name = crate::config::connection_task_name(id);
    let spec = TaskSpec {
        factory: route.config.factory.clone(),
        args: task_args(&route.config, request),
        name: Some(name.clone()),
        connection: Some(id),
        ..TaskSpec::default()
    };
    metrics.opened(&route.label);
    let worker = route.shared.next_worker();
    // Boxed, as the end below is: rustc keeps an await's state beside the
    // others', so each would stay in this future for the connection's life.
    let started = Box::pin(host.add_task(worker, &route.config.plugin, spec)).await;
    let task = started.map(|added| {
        host.worker(added.worker)
            .and_then(|w| w.registry().handle_of(added.id))
            .map(|handle| (added.worker, handle))
    });
    let (worker, handle) = match task {
        Ok(Some(task)) => task,
        failed => {
            // A limit (live tasks) is worth trying again later (1013); the
            // rest is the app's to fix, and the log says what.
            let (code, why) = match &failed {
                Err(AddTaskError::Register(RegisterError::Limit(_))) => (1013, "try again later"),
                _ => (1011, "the task could not start"),
            };
            let error = match failed {
                Err(error) => error.to_string(),
                Ok(_) => "it ended and was purged at once".to_string(),
            };
            tracing::warn!(
                connection = id,
                route = route.label,
                "connection {id} on {}: its task {name} could not start ({error}); closing \
                 with {code}",
                route.label
            );
            let mut socket = socket;
            let _ = tokio::time::timeout(
                CLOSE_HANDSHAKE,
                socket.send(ws::Message::Close(Some(CloseFrame {
                    code,
                    reason: why.into(),
                }))),
            )
            .await;
            host.connections().remove(id);
            metrics.closed(&route.label);
            return;
        }
    };
    tracing::info!(
        connection = id,
        route = route.label,
        task = name,
        remote = %remote,
        "connection {id} on {} from {remote}: task {name} on worker {worker}",
        route.label
    );
    let ConnectionEnds {
        outgoing,
        incoming,
        too_slow,
    } = ends;
    let end = run(
        &route,
        socket,
        outgoing,
        &incoming,
        too_slow,
        handle.clone(),
        worker,
    )
    .await;
    metrics.closed(&route.label);
    Box::pin(finish(&route, id, &name, worker, handle, end, incoming)).await;
}

/// Drives one connection until it is over from the socket's side.
async fn run(
    route: &Route,
    socket: WebSocket,
    mut outgoing: mpsc::Receiver<Outgoing>,
    incoming: &mpsc::Sender<Message>,
    too_slow: tokio_util::sync::CancellationToken,
    handle: TaskHandle,
    worker: WorkerId,
) -> End {
    let metrics = route.shared.host.route_metrics();
    let label = route.label.as_str();
    let (mut sink, mut stream) = socket.split();
    let (ping, mut pings_out) = mpsc::channel::<()>(1);
    let (close_tx, mut close_rx) = tokio::sync::watch::channel::<Option<Closing>>(None);
    let mut writer = Box::pin(async {
        loop {
            let (message, last) = tokio::select! {
                biased;
                changed = close_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let closing = *close_rx.borrow_and_update();
                    match closing {
                        Some(Closing::AfterQueued(code, reason)) => {
                            let mut frame = close(code, reason);
                            while let Ok(item) = outgoing.try_recv() {
                                match item {
                                    Outgoing::Message(message) => {
                                        if sink.send(to_ws(message)).await.is_err() {
                                            return;
                                        }
                                        metrics.message(label, "out");
                                    }
                                    // The task's own close, queued before
                                    // it ended, is the one the client gets.
                                    Outgoing::Close(code, reason) => {
                                        frame = ws::Message::Close(Some(CloseFrame {
                                            code,
                                            reason: reason.into(),
                                        }));
                                        break;
                                    }
                                }
                            }
                            (frame, true)
                        }
                        Some(Closing::Now(code, reason)) => (close(code, reason), true),
                        None => continue,
                    }
                }
                Some(()) = pings_out.recv() => (ws::Message::Ping(Default::default()), false),
                item = outgoing.recv() => match item {
                    Some(Outgoing::Message(message)) => {
                        metrics.message(label, "out");
                        (to_ws(message), false)
                    }
                    Some(Outgoing::Close(code, reason)) => (
                        ws::Message::Close(Some(CloseFrame { code, reason: reason.into() })),
                        true,
                    ),
                    None => return,
                },
            };
            if sink.send(message).await.is_err() || last {
                return;
            }
        }
    });
    let idle = route.settings.idle_timeout;
    let mut pings = tokio::time::interval(idle / 3);
    pings.tick().await;
    let mut last_heard = Instant::now();
    let mut pending: Option<Message> = None;
    let mut task = handle.clone();
    let mut task_ended = false;
    let mut writer_done = false;
    // Set once the host asked for a close: the client's answer, or this
    // deadline, ends the connection. What was queued gets `send_timeout`
    // to go out first; the handshake then gets `CLOSE_HANDSHAKE`.
    let mut closing: Option<tokio::time::Instant> = None;
    let after_queue = CLOSE_HANDSHAKE + route.settings.send_timeout;
    let never = tokio::time::Instant::now() + Duration::from_secs(365 * 86_400);
    let end = loop {
        tokio::select! {
            biased;
            _ = too_slow.cancelled() => {
                metrics.dropped(label, "slow");
                break End::TooSlow;
            }
            _ = route.shared.shutdown.cancelled(), if closing.is_none() => {
                let _ = close_tx.send(Some(Closing::AfterQueued(1001, "going away")));
                closing = Some(tokio::time::Instant::now() + after_queue);
            }
            _ = task.ended(), if !task_ended => {
                task_ended = true;
                if closing.is_none() {
                    let state = route.shared.host.worker(worker)
                        .and_then(|w| w.registry().get(handle.id))
                        .map(|info| info.state);
                    let (code, reason) = match state {
                        Some(TaskState::Done) => (1000, "the task ended"),
                        Some(TaskState::Cancelled) => (1001, "the task was cancelled"),
                        _ => (1011, "the task failed"),
                    };
                    let _ = close_tx.send(Some(Closing::AfterQueued(code, reason)));
                    closing = Some(tokio::time::Instant::now() + after_queue);
                }
            }
            () = &mut writer, if !writer_done => {
                writer_done = true;
                // A close sent (the host's or the task's), or a dead
                // socket: either way only the client's answer is left.
                closing = Some(tokio::time::Instant::now() + CLOSE_HANDSHAKE);
            }
            permit = incoming.reserve(), if pending.is_some() => {
                match permit {
                    Ok(permit) => permit.send(pending.take().expect("guarded by the branch")),
                    // Nobody can receive any more: drop what the client sends.
                    Err(_) => pending = None,
                }
                // The host, not the client, held the socket unread
                // meanwhile: that is not the client being idle.
                last_heard = Instant::now();
            }
            frame = stream.next(), if pending.is_none() => {
                last_heard = Instant::now();
                match frame {
                    Some(Ok(ws::Message::Text(text))) => {
                        metrics.message(label, "in");
                        pending = Some(Message::Text(text.as_str().to_string()));
                    }
                    Some(Ok(ws::Message::Binary(bytes))) => {
                        metrics.message(label, "in");
                        pending = Some(Message::Binary(bytes.to_vec()));
                    }
                    Some(Ok(ws::Message::Ping(_) | ws::Message::Pong(_))) => {}
                    Some(Ok(ws::Message::Close(_))) => {
                        break if closing.is_some() { End::Closed } else { End::ClientClosed };
                    }
                    Some(Err(error)) => {
                        if closing.is_some() {
                            break End::Closed;
                        }
                        if let Some((code, reason, why)) = refusal(error) {
                            metrics.dropped(label, why);
                            let _ = close_tx.send(Some(Closing::Now(code, reason)));
                            closing = Some(tokio::time::Instant::now() + CLOSE_HANDSHAKE);
                        } else {
                            break End::ClientGone;
                        }
                    }
                    None => break if closing.is_some() { End::Closed } else { End::ClientGone },
                }
            }
            _ = pings.tick(), if closing.is_none() => {
                // While a message waits for a `recv`, the socket is not
                // read, so a pong could not be seen: not idle.
                if pending.is_none() && last_heard.elapsed() >= idle {
                    metrics.dropped(label, "idle");
                    let _ = close_tx.send(Some(Closing::Now(1001, "idle timeout")));
                    // The client is gone in all but name.
                    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, &mut writer).await;
                    break End::Idle;
                }
                let _ = ping.try_send(());
            }
            _ = tokio::time::sleep_until(closing.unwrap_or(never)), if closing.is_some() => {
                break End::Closed;
            }
        }
    };
    drop(writer);
    // The close a client began is answered (tungstenite queued the reply;
    // this flushes it), so the client sees a clean close, not 1006.
    if end == End::ClientClosed {
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, sink.close()).await;
    }
    end
}

/// A read error the host answers with a close code (and a metric reason)
/// rather than by dropping the socket.
fn refusal(error: axum::Error) -> Option<(u16, &'static str, &'static str)> {
    let error = error.into_inner();
    match error.downcast_ref::<tungstenite::Error>()? {
        tungstenite::Error::Capacity(_) => Some((1009, "message too big", "too_big")),
        tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_) => {
            Some((1002, "protocol error", "protocol"))
        }
        _ => None,
    }
}

fn close(code: u16, reason: &'static str) -> ws::Message {
    ws::Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

fn to_ws(message: Message) -> ws::Message {
    match message {
        Message::Text(text) => ws::Message::Text(text.into()),
        Message::Binary(bytes) => ws::Message::Binary(bytes.into()),
    }
}

/// After the socket: the task is cancelled if it still runs, awaited,
/// and then the connection and its task's record are dropped.
async fn finish(
    route: &Route,
    id: u64,
    name: &str,
    worker: WorkerId,
    mut handle: TaskHandle,
    end: End,
    incoming: mpsc::Sender<Message>,
) {
    let host = &route.shared.host;
    // However it ended, a connection that is over takes its task along.
    if !handle.is_ended() {
        handle.cancel();
    }
    handle.ended().await;
    // Only now: tasks blocked in `recv` on it see none, and later calls
    // find it over.
    drop(incoming);
    host.connections().remove(id);
    let state = host
        .worker(worker)
        .and_then(|w| w.registry().get(handle.id))
        .map(|info| info.state)
        .or(handle.end_state());
    if let Some(worker) = host.worker(worker) {
        worker.registry().forget(handle.id);
    }
    // What the task and its connection held goes back as a purge's does.
    host.trim_heap_soon();
    tracing::info!(
        connection = id,
        route = route.label,
        task = name,
        "connection {id} on {} over ({}); task {name} ended {}",
        route.label,
        end.as_str(),
        state.map_or("and was purged", |s| s.as_str())
    );
}
