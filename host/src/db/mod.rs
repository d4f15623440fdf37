//! `taskhost:db` (`wit/deps/db`): Postgres and Redis as host interfaces,
//! for guests that cannot open sockets (componentize-js has no
//! `wasi:sockets`), in the spirit of Spin's outbound Postgres and Redis.
//!
//! The host makes each connection for its task through
//! [`TaskSockets::connect`]: the address must be in the plugin's `tcp`
//! grant (a name is looked up once per task and pinned, as for the task's
//! own sockets), and the connection counts against `[limits]
//! sockets_per_task` and `sockets_per_app` until the guest drops its
//! handle or the task ends. The clients are tokio-postgres and redis-rs,
//! driven on the worker's runtime over that stream ([`Metered`], which
//! also bounds each call's answer by `[limits] db_result_bytes`).
//!
//! Every call ends with the task's cancel: it returns `cancelled`, closes
//! the connection (a Postgres query is also cancelled on the server), and
//! the task, failing or returning `cancelled`, ends cooperatively.

mod postgres;
mod redis;

use crate::bindings::taskhost::db::types::{self, Error};
use crate::interface::{Holds, HostInterface, TaskInit};
use crate::sockets::{Claim, ConnectError, TaskSockets};
use crate::task::TaskIdent;
use crate::telemetry::{Attr, CallSpan, SpanKind, Telemetry};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use wasmtime::component::{HasSelf, Linker, ResourceTable};

/// The interface's state in one task's store: the connections it holds
/// (in a table of its own) and what opening more is checked against.
pub(crate) struct DbState {
    ident: Arc<TaskIdent>,
    /// None without a `tcp` grant: every open is then refused.
    sockets: Option<Arc<TaskSockets>>,
    /// `[limits] db_result_bytes` for the task's plugin.
    result_limit: usize,
    table: ResourceTable,
    opened: bool,
    /// Where each call's span goes (`[telemetry]`).
    telemetry: Option<Arc<Telemetry>>,
}

impl HostInterface for DbState {
    fn new(task: &TaskInit<'_>) -> DbState {
        DbState {
            ident: task.ident.clone(),
            sockets: task.sockets.cloned(),
            result_limit: task.policy.limits.db_result_bytes,
            table: ResourceTable::new(),
            opened: false,
            telemetry: task.telemetry.cloned(),
        }
    }

    fn add_to_linker<T: Holds<Self> + Send + 'static>(
        linker: &mut Linker<T>,
    ) -> anyhow::Result<()> {
        fn state<T: Holds<DbState>>(data: &mut T) -> &mut DbState {
            data.state()
        }
        use crate::bindings::taskhost::db::{postgres, redis};
        types::add_to_linker::<T, HasSelf<DbState>>(linker, state)
            .and_then(|()| postgres::add_to_linker::<T, HasSelf<DbState>>(linker, state))
            .and_then(|()| redis::add_to_linker::<T, HasSelf<DbState>>(linker, state))
            .map_err(|e| anyhow::anyhow!("cannot add taskhost:db to the linker: {e:#}"))
    }
}

impl types::Host for DbState {}

impl DbState {
    /// A call's span (`[telemetry]`), as OpenTelemetry's database
    /// conventions name one: `db.system.name`, the operation and, for
    /// SQL, the statement (its parameters never: they go apart).
    pub(super) fn span(
        &self,
        system: &'static str,
        operation: &str,
        query: Option<&str>,
    ) -> Option<CallSpan> {
        let span = CallSpan::start(
            self.telemetry.as_ref(),
            &self.ident,
            SpanKind::Client,
            format!("{system} {operation}"),
        )?;
        let mut span = span
            .with("db.system.name", Attr::Text(system.into()))
            .with("db.operation.name", Attr::Text(operation.into()));
        if let Some(query) = query {
            // A statement is the guest's text: kept to its first KiB.
            let mut end = query.len().min(1024);
            while !query.is_char_boundary(end) {
                end -= 1;
            }
            span.set("db.query.text", Attr::Text(query[..end].into()));
        }
        Some(span)
    }

    /// Opens a connection to `host:port` for the task, or says why not.
    async fn connect(&mut self, what: &str, host: &str, port: u16) -> Result<Connected, Error> {
        let Some(sockets) = &self.sockets else {
            let plugin = &self.ident.plugin;
            let message = format!(
                "task {} of plugin {plugin}: {what} connection to {host}:{port} denied: the \
                 plugin has no tcp grant; add tcp = [\"{host}:{port}\"] to \
                 [plugins.{plugin}.grants] to allow it",
                self.ident.label(),
            );
            tracing::warn!(task = %self.ident.label(), task_id = self.ident.id, plugin = %plugin, "{message}");
            return Err(Error::Denied(message));
        };
        let (stream, claim) =
            sockets
                .connect(what, host, port)
                .await
                .map_err(|error| match error {
                    ConnectError::Denied(message) => Error::Denied(message),
                    ConnectError::Limit(message) => Error::Limit(message),
                    ConnectError::Failed(message) => Error::ConnectionFailed(message),
                    ConnectError::Cancelled => {
                        sockets.note_cut();
                        Error::Cancelled
                    }
                })?;
        self.opened = true;
        let peer = stream.peer_addr().ok();
        let meter = Arc::new(Meter {
            read: AtomicUsize::new(0),
            limit: self.result_limit,
            over: AtomicBool::new(false),
            armed: AtomicBool::new(false),
        });
        Ok(Connected {
            stream: Metered {
                inner: stream,
                meter: meter.clone(),
            },
            link: Link {
                sockets: sockets.clone(),
                meter,
                claim,
                stop: None,
                peer,
                broken: None,
                what: what.to_string(),
            },
        })
    }

    /// Whether the task opened a connection: a prepared instance that did
    /// is not handed to a task (see `TaskData::reached_out`).
    pub(crate) fn opened(&self) -> bool {
        self.opened
    }
}

/// A connection just made, before its client takes the stream.
struct Connected {
    stream: Metered,
    link: Link,
}

/// What every open connection holds beside its client: its count, its
/// answer's meter, and the end of the task that drives it.
struct Link {
    sockets: Arc<TaskSockets>,
    meter: Arc<Meter>,
    /// Counts the socket until the guest drops the handle (or the store
    /// goes), even after the connection broke: the handles a task holds
    /// are bounded by `sockets_per_task` that way.
    #[allow(dead_code)] // held for its Drop
    claim: Claim,
    /// Ends the driver (and so closes the socket) when dropped.
    stop: Option<DropGuard>,
    /// The server's address, for a Postgres cancel request.
    peer: Option<std::net::SocketAddr>,
    /// Set once the connection can no longer be used, with why.
    broken: Option<String>,
    /// "Postgres" or "Redis", for messages.
    what: String,
}

impl Link {
    /// Runs `driver` (the client's connection task) on the worker's
    /// runtime until it ends or this link goes.
    fn drive(&mut self, driver: impl Future<Output = ()> + Send + 'static) {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = driver => {}
                () = stopped.cancelled() => {}
            }
        });
        self.stop = Some(stop.drop_guard());
    }

    /// Fails a call at once if the connection broke, and starts the
    /// answer's count afresh.
    fn begin(&self) -> Result<(), Error> {
        if self.sockets.cancel().is_cancelled() {
            self.sockets.note_cut();
            return Err(Error::Cancelled);
        }
        if let Some(why) = &self.broken {
            return Err(Error::ConnectionFailed(format!(
                "the {} connection is closed ({why}): open a new one",
                self.what
            )));
        }
        self.meter.read.store(0, Ordering::Relaxed);
        self.meter.armed.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Closes the connection: its driver stops and the socket closes.
    fn close(&mut self, why: &str) {
        self.broken = Some(why.to_string());
        self.stop = None;
    }

    /// The error of a call that failed on the connection itself: over the
    /// answer's limit, or lost. Either way the connection is closed.
    fn lost(&mut self, message: String) -> Error {
        if self.meter.over.load(Ordering::Relaxed) {
            let limit = self.meter.limit;
            let message = format!(
                "the {} answer is over {limit} bytes ([limits] db_result_bytes); the connection \
                 is closed: ask for fewer rows or smaller values, or raise the bound",
                self.what
            );
            self.close("an answer over [limits] db_result_bytes");
            return Error::Limit(message);
        }
        self.close(&message);
        Error::ConnectionFailed(format!("{}: {message}", self.what))
    }

    /// The error of a call the task's cancel ended; the connection closes.
    fn cancelled(&mut self) -> Error {
        self.sockets.note_cut();
        self.close("the task was cancelled");
        Error::Cancelled
    }
}

/// How many bytes a connection read since its call began, against
/// `[limits] db_result_bytes`.
struct Meter {
    read: AtomicUsize,
    limit: usize,
    over: AtomicBool,
    /// Set by the first call: the handshake's messages (the server's
    /// settings) are not an answer the guest asked for.
    armed: AtomicBool,
}

/// A connection's stream: reading past the meter's limit fails it, which
/// ends the client's connection and so the call.
struct Metered {
    inner: TcpStream,
    meter: Arc<Meter>,
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            let meter = &this.meter;
            if meter.armed.load(Ordering::Relaxed)
                && meter.read.fetch_add(read, Ordering::Relaxed) + read > meter.limit
            {
                meter.over.store(true, Ordering::Relaxed);
                return Poll::Ready(Err(io::Error::other(format!(
                    "an answer over {} bytes ([limits] db_result_bytes)",
                    meter.limit
                ))));
            }
        }
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a call waits for, or the task's cancel, whichever comes first.
enum Raced<T> {
    Done(T),
    Cancelled,
}

/// Waits for `call`, or for the task's cancel.
async fn race<T>(sockets: &TaskSockets, call: impl Future<Output = T>) -> Raced<T> {
    tokio::select! {
        done = call => Raced::Done(done),
        () = sockets.cancel().cancelled() => Raced::Cancelled,
    }
}
