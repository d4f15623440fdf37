//! How the host's two HTTP servers, the public listener and the control
//! API, hold connections, so that no client can make them hold more than
//! they were given:
//!
//! - **A cap on open connections.** Past it the server stops accepting:
//!   new connections wait in the kernel's accept queue, and the process
//!   holds no descriptor for them. A connection counts until its socket
//!   closes, through a websocket upgrade too (the count rides on the
//!   socket), so the cap bounds the descriptors the server holds.
//! - **A header timeout.** A client must have sent a request's whole head
//!   within `header_timeout` of connecting, and of its previous answer on a
//!   kept-alive connection; otherwise the connection is closed. Silent and
//!   trickling clients therefore cannot hold a slot for long.
//!
//! axum's own `serve` has neither: probed at `8d72e91`, silent and
//! header-trickling connections were still open after 300 s, and ~1,000 of
//! them against a 1,024-descriptor host locked the operator out. hyper's
//! HTTP/1 server has the header timeout (it needs a timer, which axum's
//! `serve` does not give it); the accept loop here adds the cap.
//!
//! Each server has its own cap and the process's open-file limit is raised
//! at start ([`raise_open_files`]), so the public listener saturated still
//! leaves the control API room.

use crate::metrics::ServerMetrics;
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What one server may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
    /// Open connections at once.
    pub max_connections: usize,
    /// From connecting (or the previous answer) to a request's whole head.
    pub header_timeout: Duration,
}

/// Descriptors kept out of the public listener's reach: the control API's
/// connections, storage, plugin files, NATS, and tasks' outbound HTTP.
pub(crate) const RESERVED_FILES: u64 = 512;

/// Connections the control API serves at once. Event streams (`taskhost
/// events`) hold one each for as long as they run.
pub(crate) const CONTROL_CONNECTIONS: usize = 128;

/// The control API's header timeout: the CLI sends its request at once.
pub(crate) const CONTROL_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections the kernel completes and queues for a server before it
/// accepts them (Linux caps it at `net.core.somaxconn`, 4,096 by default
/// since 5.4). tokio, mio and std listen with 128: a burst past that (or
/// past a paused accept loop) had its SYNs dropped, and each of those
/// clients waited out a 1 s retransmit. Measured at c40b745, 1,000
/// websocket connections opened at once: 4 runs of 9 overflowed the queue
/// (722 drops in one) and took 1.1-1.5 s instead of ~136 ms.
/// Queued connections hold kernel memory only, not a descriptor of ours.
pub(crate) const ACCEPT_BACKLOG: u32 = 4096;

/// Binds a TCP listener with [`ACCEPT_BACKLOG`] and, as std does,
/// `SO_REUSEADDR` (a restarted host rebinds at once).
pub(crate) fn bind_tcp(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match address {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Raises this process's soft open-file limit to its hard limit (Linux
/// starts most processes at a soft 1,024 while allowing far more) and
/// returns the soft limit now in force; none where it cannot be read.
pub(crate) fn raise_open_files() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        limit.current = Some(hard);
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!("cannot raise the open-file limit to {hard}: {error}");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// The public listener's connection cap: its websocket connections and
/// webhook requests together (`[listen] max_connections + max_requests`),
/// or less when the open-file limit `open_files` leaves no room for them
/// beside [`RESERVED_FILES`]. The second value says why it was lowered.
pub(crate) fn public_cap(
    max_connections: u32,
    max_requests: u32,
    open_files: Option<u64>,
) -> (usize, Option<String>) {
    let wanted = u64::from(max_connections) + u64::from(max_requests);
    let Some(open_files) = open_files else {
        return (wanted as usize, None);
    };
    let room = open_files.saturating_sub(RESERVED_FILES).max(16);
    if wanted <= room {
        return (wanted as usize, None);
    }
    let why = format!(
        "[listen] max_connections + max_requests = {wanted} connections is more than this \
         process's open-file limit ({open_files}) leaves room for beside {RESERVED_FILES} \
         descriptors kept for the control API, storage and tasks: the listener holds at most \
         {room} (raise the hard limit, `ulimit -Hn`, to {} or more to serve them all)",
        wanted + RESERVED_FILES
    );
    (room as usize, Some(why))
}

/// A server running on its own tokio task. Dropping it does not stop it:
/// call [`Server::stop`].
pub(crate) struct Server {
    stop: CancellationToken,
    connections: TaskTracker,
    accept: tokio::task::JoinHandle<()>,
}

/// Serves `router` on `listener` within `limits`. `name` labels the
/// metrics (`public`, `control`); `metrics` counts what the server did.
/// With `connect_info`, each request carries the client's address as
/// axum's `ConnectInfo`, as `into_make_service_with_connect_info` does.
pub(crate) fn spawn<L>(
    mut listener: L,
    router: axum::Router,
    limits: ConnectionLimits,
    name: &'static str,
    metrics: ServerMetrics,
) -> Server
where
    L: Listener,
    L::Addr: Clone + Send + Sync + 'static,
{
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let accept = tokio::spawn({
        let stop = stop.clone();
        let connections = connections.clone();
        async move {
            loop {
                let permit = tokio::select! {
                    _ = stop.cancelled() => break,
                    permit = open.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                };
                if open.available_permits() == 0 {
                    metrics.at_cap(name);
                }
                let (io, remote) = tokio::select! {
                    _ = stop.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                metrics.opened(name);
                let io = Counted {
                    io,
                    _permit: permit,
                    close: Closing {
                        metrics: metrics.clone(),
                        name,
                    },
                };
                connections.spawn(serve_connection(
                    io,
                    remote,
                    router.clone(),
                    limits.header_timeout,
                    stop.clone(),
                    metrics.clone(),
                    name,
                ));
            }
        }
    });
    Server {
        stop,
        connections,
        accept,
    }
}

async fn serve_connection<I, A>(
    io: I,
    remote: A,
    router: axum::Router,
    header_timeout: Duration,
    stop: CancellationToken,
    metrics: ServerMetrics,
    name: &'static str,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Clone + Send + Sync + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
        let mut request = request.map(axum::body::Body::new);
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(remote.clone()));
        let mut router = router.clone();
        async move {
            use tower::Service;
            router.call(request).await
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served
        && error.is_timeout()
    {
        metrics.timed_out(name);
    }
}

impl Server {
    /// Stops accepting, asks every connection to close after its request
    /// in flight, and waits for them up to `wait` (event streams and
    /// websockets end on their own shutdown signals).
    pub(crate) async fn stop(self, wait: Duration) {
        self.stop.cancel();
        self.connections.close();
        let _ = self.accept.await;
        let _ = tokio::time::timeout(wait, self.connections.wait()).await;
    }
}

/// Counts the connection closed when the socket goes, wherever it went.
struct Closing {
    metrics: ServerMetrics,
    name: &'static str,
}

impl Drop for Closing {
    fn drop(&mut self) {
        self.metrics.closed(self.name);
    }
}

/// A socket holding its server's connection slot until it is dropped,
/// which for an upgraded websocket is when the websocket closes.
struct Counted<I> {
    io: I,
    _permit: OwnedSemaphorePermit,
    #[allow(dead_code)]
    close: Closing,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_cap_leaves_room_for_the_reserve() {
        assert_eq!(public_cap(10_000, 1_000, None), (11_000, None));
        assert_eq!(public_cap(10_000, 1_000, Some(1_048_576)), (11_000, None));
        let (cap, why) = public_cap(10_000, 1_000, Some(1_024));
        assert_eq!(cap, 512);
        let why = why.unwrap();
        assert!(
            why.contains("[listen] max_connections + max_requests = 11000"),
            "{why}"
        );
        assert!(why.contains("open-file limit (1024)"), "{why}");
        assert_eq!(public_cap(10_000, 1_000, Some(100)).0, 16);
    }
}
