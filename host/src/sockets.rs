//! `wasi:sockets` as a task sees it: TCP connections to the addresses its
//! plugin's `tcp` grant lists (`[plugins.NAME.grants] tcp`), and nothing
//! else. No UDP, no socket that listens or accepts, no name lookup of a
//! name not granted. This module owns the interface's grant check, its
//! per-task state ([`SocketsState`]) and its linking ([`add_to_linker`]),
//! which replaces three parts of wasmtime-wasi's own:
//!
//! - **Name lookups** (`ip-name-lookup`) answer only names a grant lists,
//!   with what the host resolved them to, once per task (pinned): a guest
//!   cannot resolve other names (a lookup is a message to a DNS server),
//!   and the addresses it connects to are the ones the check allows, even
//!   if the name's records change in between.
//! - **Counting**: creating a TCP socket past `[limits] sockets_per_task`
//!   fails with `new-socket-limit`; each socket is a file descriptor of
//!   the host's, and every one is closed when its task ends (its store
//!   goes).
//! - **Cancellation**: a connected socket's streams end with an error as
//!   soon as the task is cancelled, so a guest blocked reading (a slow
//!   query) wakes, fails its call and ends cooperatively within its grace
//!   period instead of being forced.
//!
//! The address check itself is wasmtime-wasi's `socket_addr_check`
//! (see [`configure`]).

use crate::config::{GrantHost, PluginPolicy, SocketGrant};
use crate::task::{CancelSignal, TaskIdent};
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable, ResourceType};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    self, HostResolveAddressStream, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddress, Network};
use wasmtime_wasi::p2::bindings::sockets::tcp::HostTcpSocket;
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket;
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, DynPollable, InputStream, OutputStream, Pollable, SocketError,
    SocketResult, StreamError, StreamResult, TcpSocket, pipe,
};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtx, WasiSocketsCtxView};
use wasmtime_wasi::{WasiCtxBuilder, async_trait};

/// The `wasi:sockets/tcp` instance whose parts [`add_to_linker`] replaces:
/// the version wasmtime-wasi links (guests' older 0.2 versions resolve to
/// it). The sockets tests fail if it no longer matches.
const TCP_INSTANCE: &str = "wasi:sockets/tcp@0.2.12";

/// What a task's address checks and socket streams share with its store:
/// they run outside it, in wasmtime-wasi's socket calls. Made only for a
/// plugin with a `tcp` grant, so a task of any other pays nothing for it.
pub(crate) struct TaskSockets {
    ident: Arc<TaskIdent>,
    policy: Arc<PluginPolicy>,
    cancel: Arc<CancelSignal>,
    /// Each granted name's addresses, resolved once for this task.
    pins: Mutex<HashMap<String, Pinned>>,
    /// Whether a connect or a lookup was refused: the task's failure is
    /// then not retried (the next attempt would be refused the same).
    denied: AtomicBool,
    /// Set once a socket stream failed a call because of the cancel.
    cut: AtomicBool,
    /// The sockets the task holds now: its own (`wasi:sockets`) and the
    /// host's connections for it (`crate::db`), against `sockets_per_task`.
    task_open: AtomicUsize,
    /// The sockets all tasks hold, host-wide (`taskhost_sockets_open`),
    /// and what bounds it.
    app_open: Gauge,
    app_limit: usize,
}

/// How long the host waits for a TCP connect it makes for a task
/// ([`TaskSockets::connect`]); the task's cancel ends the wait sooner.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why [`TaskSockets::connect`] made no connection: the message is meant
/// for the task's author and names the grant, the limit or the address.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// Not in the plugin's `tcp` grant.
    Denied(String),
    /// `sockets_per_task` or `sockets_per_app` reached.
    Limit(String),
    /// The name did not resolve, or no address answered.
    Failed(String),
    /// The task was cancelled while connecting.
    Cancelled,
}

/// A socket the host holds for a task ([`TaskSockets::connect`]), counted
/// against the task's and the app's bounds until dropped.
pub(crate) struct Claim(Arc<TaskSockets>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.give_back(1);
    }
}

/// One name's addresses, resolved on first use.
type Pinned = Arc<tokio::sync::OnceCell<Result<Arc<[IpAddr]>, ErrorCode>>>;

impl TaskSockets {
    /// What `name` resolves to for this task: resolved by the host on the
    /// first call, the same addresses after.
    async fn resolve(&self, name: &str) -> Result<Arc<[IpAddr]>, ErrorCode> {
        let pin = self
            .pins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_string())
            .or_default()
            .clone();
        pin.get_or_init(|| async {
            match tokio::net::lookup_host((name, 0)).await {
                Ok(addrs) => Ok(addrs.map(|a| a.ip().to_canonical()).collect()),
                Err(error) => {
                    tracing::warn!(
                        task = %self.ident.label(),
                        task_id = self.ident.id,
                        plugin = %self.ident.plugin,
                        "task {} of plugin {}: granted name {name} does not resolve: {error}",
                        self.ident.label(),
                        self.ident.plugin,
                    );
                    Err(ErrorCode::NameUnresolvable)
                }
            }
        })
        .await
        .clone()
    }

    /// Whether a grant lists `addr`: by address, or by a name that
    /// resolved to it.
    async fn granted(&self, addr: SocketAddr) -> bool {
        let tcp = &self.policy.grants.tcp;
        if tcp.iter().any(|grant| grant.names_addr(addr)) {
            return true;
        }
        let ip = addr.ip().to_canonical();
        for grant in tcp.iter().filter(|grant| grant.port == addr.port()) {
            if let GrantHost::Name(name) = &grant.host
                && let Ok(addrs) = self.resolve(name).await
                && addrs.contains(&ip)
            {
                return true;
            }
        }
        false
    }

    /// wasmtime-wasi's check of each use of an address.
    async fn allows(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        match usage {
            // A connect binds first, to the wildcard address and port 0;
            // a guest may do the same itself. Either opens nothing to
            // anyone, and a bound socket still cannot listen (below).
            SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
            SocketAddrUse::TcpConnect => {
                let granted = self.granted(addr).await;
                if !granted {
                    self.refuse(&format!("TCP connect to {addr}"), &addr.to_string());
                }
                granted
            }
            SocketAddrUse::TcpListen => {
                self.refuse_listen();
                false
            }
            // UDP is never allowed (`allow_udp(false)`), and what accept
            // would need (a listener) never exists.
            _ => false,
        }
    }

    /// Logs a refused connect or lookup with what to add to the grant,
    /// and returns the message.
    fn refuse(&self, what: &str, add: &str) -> String {
        self.denied.store(true, Ordering::Relaxed);
        refuse(&self.ident, &self.policy, what, add)
    }

    /// Counts one more socket of the task's, or says (and logs) which
    /// bound it would cross.
    fn take(&self) -> Result<(), String> {
        let ident = &self.ident;
        let limit = self.policy.limits.sockets;
        if self.task_open.fetch_add(1, Ordering::Relaxed) >= limit {
            self.task_open.fetch_sub(1, Ordering::Relaxed);
            let message = format!(
                "task {} of plugin {}: a TCP socket past the task's {limit} refused \
                 ([limits] sockets_per_task): close sockets it no longer needs, or raise \
                 the bound",
                ident.label(),
                ident.plugin,
            );
            tracing::warn!(task = %ident.label(), task_id = ident.id, plugin = %ident.plugin, "{message}");
            return Err(message);
        }
        if self.app_open.inc() >= self.app_limit as i64 {
            self.give_back(1);
            let message = format!(
                "task {} of plugin {}: a TCP socket refused: the app's tasks hold {} at once \
                 ([limits] sockets_per_app), each a file descriptor of the host's: raise the \
                 bound (and the process's open-file limit), or hold fewer",
                ident.label(),
                ident.plugin,
                self.app_limit,
            );
            tracing::warn!(task = %ident.label(), task_id = ident.id, plugin = %ident.plugin, "{message}");
            return Err(message);
        }
        Ok(())
    }

    /// Counts one more socket the host holds for the task, outside
    /// [`TaskSockets::connect`].
    pub(crate) fn claim(self: &Arc<Self>) -> Result<Claim, String> {
        self.take()?;
        Ok(Claim(self.clone()))
    }

    /// Uncounts `n` sockets of the task's.
    fn give_back(&self, n: usize) {
        self.task_open.fetch_sub(n, Ordering::Relaxed);
        self.app_open.dec_by(n as i64);
    }

    /// The task's cancel signal: what a call made for it must end with.
    pub(crate) fn cancel(&self) -> &CancelSignal {
        &self.cancel
    }

    /// Notes that the cancel failed one of the task's calls (see
    /// [`SocketsState::cut_by_cancel`]).
    pub(crate) fn note_cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    /// Connects to `host:port` for the task, the way its own sockets
    /// would: `host` (an address, or a name looked up once per task) must
    /// be in the `tcp` grant, and the socket counts against
    /// `sockets_per_task` and `sockets_per_app` until its [`Claim`] is
    /// dropped. `what` names the caller in a refusal ("Postgres").
    pub(crate) async fn connect(
        self: &Arc<Self>,
        what: &str,
        host: &str,
        port: u16,
    ) -> Result<(tokio::net::TcpStream, Claim), ConnectError> {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<IpAddr>();
        let addrs: Vec<SocketAddr> = match literal {
            Ok(ip) => {
                let addr = SocketAddr::new(ip, port);
                if !self.granted(addr).await {
                    let add = addr.to_string();
                    return Err(ConnectError::Denied(
                        self.refuse(&format!("{what} connection to {addr}"), &add),
                    ));
                }
                vec![addr]
            }
            Err(_) => {
                let name = host.trim_end_matches('.').to_ascii_lowercase();
                let granted = self.policy.grants.tcp.iter().any(|grant| {
                    grant.port == port && matches!(&grant.host, GrantHost::Name(n) if *n == name)
                });
                if !granted {
                    let add = format!("{name}:{port}");
                    return Err(ConnectError::Denied(
                        self.refuse(&format!("{what} connection to {add}"), &add),
                    ));
                }
                let ips = self.resolve(&name).await.map_err(|_| {
                    ConnectError::Failed(format!("granted name {name} does not resolve"))
                })?;
                ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
            }
        };
        if self.cancel.is_cancelled() {
            return Err(ConnectError::Cancelled);
        }
        self.take().map_err(ConnectError::Limit)?;
        let claim = Claim(self.clone());
        let mut last = String::from("no address");
        for addr in addrs {
            let attempt =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr));
            tokio::select! {
                connected = attempt => match connected {
                    Ok(Ok(stream)) => {
                        // Small requests and answers, one at a time: sent at once.
                        let _ = stream.set_nodelay(true);
                        return Ok((stream, claim));
                    }
                    Ok(Err(error)) => last = format!("{addr}: {error}"),
                    Err(_) => {
                        last = format!("{addr}: no answer within {} s", CONNECT_TIMEOUT.as_secs())
                    }
                },
                () = self.cancel.cancelled() => return Err(ConnectError::Cancelled),
            }
        }
        Err(ConnectError::Failed(format!(
            "{what}: cannot connect to {last}"
        )))
    }

    fn refuse_listen(&self) {
        self.denied.store(true, Ordering::Relaxed);
        let ident = &self.ident;
        tracing::warn!(
            task = %ident.label(),
            task_id = ident.id,
            plugin = %ident.plugin,
            "task {} of plugin {}: listening on a TCP socket denied: tasks may only connect \
             out, to the addresses [plugins.{}.grants] tcp lists",
            ident.label(),
            ident.plugin,
            ident.plugin,
        );
    }
}

/// Logs a refused connect or lookup of `ident`'s task, naming what the
/// grant lists and what to add to it; returns the message.
fn refuse(ident: &TaskIdent, policy: &PluginPolicy, what: &str, add: &str) -> String {
    let plugin = &ident.plugin;
    let tcp = &policy.grants.tcp;
    let granted = match tcp.is_empty() {
        true => "it grants nothing".to_string(),
        false => {
            let list: Vec<String> = tcp.iter().map(SocketGrant::to_string).collect();
            format!("it grants {}", list.join(", "))
        }
    };
    let message = format!(
        "task {} of plugin {plugin}: {what} denied: not in [plugins.{plugin}.grants] tcp \
         ({granted}); add \"{add}\" to it to allow it",
        ident.label(),
    );
    tracing::warn!(task = %ident.label(), task_id = ident.id, plugin = %plugin, "{message}");
    message
}

/// Opens `wasi:sockets` in `builder` as far as the plugin's `tcp` grant
/// goes: TCP and name lookups, every address checked. Without a grant
/// (`sockets` is none) nothing is opened.
pub(crate) fn configure(builder: &mut WasiCtxBuilder, sockets: Option<&Arc<TaskSockets>>) {
    let Some(sockets) = sockets else {
        builder
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        return;
    };
    let sockets = sockets.clone();
    builder
        .allow_tcp(true)
        .allow_udp(false)
        .allow_ip_name_lookup(true)
        .socket_addr_check(move |addr, usage| {
            let sockets = sockets.clone();
            Box::pin(async move { sockets.allows(addr, usage).await })
        });
}

/// One task's sockets: what its address checks share (for a plugin with
/// a `tcp` grant), and how many TCP sockets it holds against its limit.
pub(crate) struct SocketsState {
    shared: Option<Arc<TaskSockets>>,
    /// TCP sockets the task holds now.
    open: usize,
    /// Whether a socket or a lookup was refused here (the address checks
    /// note theirs in `shared`).
    denied: bool,
}

impl SocketsState {
    pub(crate) fn new(
        ident: &Arc<TaskIdent>,
        policy: &Arc<PluginPolicy>,
        cancel: &Arc<CancelSignal>,
        app_open: &Gauge,
    ) -> SocketsState {
        let shared = (!policy.grants.tcp.is_empty()).then(|| {
            Arc::new(TaskSockets {
                ident: ident.clone(),
                policy: policy.clone(),
                cancel: cancel.clone(),
                pins: Mutex::default(),
                denied: AtomicBool::new(false),
                cut: AtomicBool::new(false),
                task_open: AtomicUsize::new(0),
                app_open: app_open.clone(),
                app_limit: policy.limits.sockets_per_app,
            })
        });
        SocketsState {
            shared,
            open: 0,
            denied: false,
        }
    }

    /// What WASI's context checks addresses with ([`configure`]); none
    /// without a `tcp` grant.
    pub(crate) fn shared(&self) -> Option<&Arc<TaskSockets>> {
        self.shared.as_ref()
    }

    /// Whether a connect, a listen or a name lookup was refused.
    pub(crate) fn denied(&self) -> bool {
        self.denied
            || self
                .shared
                .as_ref()
                .is_some_and(|s| s.denied.load(Ordering::Relaxed))
    }

    /// Whether the cancel failed one of the task's socket calls: a task
    /// that then fails, failed because of the cancel, and ended by it.
    pub(crate) fn cut_by_cancel(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|s| s.cut.load(Ordering::Relaxed))
    }
}

impl Drop for SocketsState {
    /// The task's store goes, and with it every socket it still held
    /// (closed with the resource table, no drop call each): they leave
    /// the host-wide count.
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.give_back(self.open);
        }
    }
}

/// What this module's functions work with: its state, the task's identity
/// and policy, and WASI's sockets context and resource table.
pub(crate) struct SocketsView<'a> {
    pub(crate) state: &'a mut SocketsState,
    pub(crate) ident: &'a Arc<TaskIdent>,
    pub(crate) policy: &'a Arc<PluginPolicy>,
    pub(crate) ctx: &'a mut WasiSocketsCtx,
    pub(crate) table: &'a mut ResourceTable,
}

impl SocketsView<'_> {
    fn wasi(&mut self) -> WasiSocketsCtxView<'_> {
        WasiSocketsCtxView {
            ctx: self.ctx,
            table: self.table,
        }
    }
}

struct Sockets;

impl HasData for Sockets {
    type Data<'a> = SocketsView<'a>;
}

/// Replaces wasmtime-wasi's name lookups, socket creation, socket drop and
/// `finish-connect` (see the module docs). Runs after WASI is linked.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> SocketsView<'_>,
) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    ip_name_lookup::add_to_linker::<T, Sockets>(linker, get)
        .map_err(|e| anyhow::anyhow!("cannot link wasi:sockets/ip-name-lookup: {e:#}"))?;
    tcp_create_socket::add_to_linker::<T, Sockets>(linker, get)
        .map_err(|e| anyhow::anyhow!("cannot link wasi:sockets/tcp-create-socket: {e:#}"))?;
    let mut tcp = linker.instance(TCP_INSTANCE)?;
    tcp.resource(
        "tcp-socket",
        ResourceType::host::<TcpSocket>(),
        move |mut store, rep| {
            let mut view = get(store.data_mut());
            HostTcpSocket::drop(&mut view.wasi(), Resource::new_own(rep))?;
            if view.state.open > 0 {
                view.state.open -= 1;
                if let Some(shared) = &view.state.shared {
                    shared.give_back(1);
                }
            }
            Ok(())
        },
    )?;
    tcp.func_wrap(
        "[method]tcp-socket.finish-connect",
        move |mut store, (this,): (Resource<TcpSocket>,)| {
            let mut view = get(store.data_mut());
            let connected = match HostTcpSocket::finish_connect(&mut view.wasi(), this) {
                Ok(streams) => streams,
                Err(error) => return Ok((Err(error_code(error)?),)),
            };
            let (input, output) = connected;
            // A connected socket was created, so the plugin has the grant.
            let Some(shared) = view.state.shared.clone() else {
                return Ok((Err(ErrorCode::AccessDenied),));
            };
            let cut = Cut(shared);
            let stream: &mut DynInputStream = view.table.get_mut(&input)?;
            let inner = std::mem::replace(stream, Box::new(pipe::ClosedInputStream));
            *stream = Box::new(CancellableInput {
                inner,
                cut: cut.clone(),
            });
            let stream: &mut DynOutputStream = view.table.get_mut(&output)?;
            let inner = std::mem::replace(stream, Box::new(pipe::ClosedOutputStream));
            *stream = Box::new(CancellableOutput { inner, cut });
            Ok((Ok((input, output)),))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The guest's error code of a socket error, or the trap it stands for.
fn error_code(error: SocketError) -> wasmtime::Result<ErrorCode> {
    error.downcast()
}

// What the lookup and create interfaces' traits build on, as wasmtime-wasi
// has it.
impl network::Host for SocketsView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.wasi(), error)
    }

    fn network_error_code(
        &mut self,
        error: Resource<wasmtime_wasi::p2::IoError>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.wasi(), error)
    }
}

impl network::HostNetwork for SocketsView<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.wasi(), network)
    }
}

impl tcp_create_socket::Host for SocketsView<'_> {
    fn create_tcp_socket(
        &mut self,
        family: wasmtime_wasi::p2::bindings::sockets::network::IpAddressFamily,
    ) -> SocketResult<Resource<TcpSocket>> {
        let Some(shared) = self.state.shared.clone() else {
            self.state.denied = true;
            let ident = self.ident;
            let plugin = &ident.plugin;
            tracing::warn!(
                task = %ident.label(),
                task_id = ident.id,
                plugin = %plugin,
                "task {} of plugin {plugin}: TCP sockets are not granted: add \
                 tcp = [\"HOST:PORT\"] to [plugins.{plugin}.grants] for each address its \
                 tasks may connect to",
                ident.label(),
            );
            return Err(ErrorCode::AccessDenied.into());
        };
        // Taken before the socket is made, given back if it is not.
        if shared.take().is_err() {
            return Err(ErrorCode::NewSocketLimit.into());
        }
        let socket = match tcp_create_socket::Host::create_tcp_socket(&mut self.wasi(), family) {
            Ok(socket) => socket,
            Err(error) => {
                shared.give_back(1);
                return Err(error);
            }
        };
        self.state.open += 1;
        Ok(socket)
    }
}

/// A name lookup's answer, in the resource table in place of
/// wasmtime-wasi's own stream (the functions that read it are all here).
struct Lookup {
    state: LookupState,
}

/// What a name resolved to, for this task.
type Answer = Result<Arc<[IpAddr]>, ErrorCode>;

enum LookupState {
    Waiting(Pin<Box<dyn Future<Output = Answer> + Send + Sync>>),
    Answered(Result<(Arc<[IpAddr]>, usize), ErrorCode>),
}

impl Lookup {
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if let LookupState::Waiting(future) = &mut self.state {
            let Poll::Ready(answer) = future.as_mut().poll(cx) else {
                return Poll::Pending;
            };
            self.state = LookupState::Answered(answer.map(|addrs| (addrs, 0)));
        }
        Poll::Ready(())
    }
}

#[async_trait]
impl Pollable for Lookup {
    async fn ready(&mut self) {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }
}

fn lookup(stream: &Resource<ResolveAddressStream>) -> Resource<Lookup> {
    Resource::new_borrow(stream.rep())
}

impl ip_name_lookup::Host for SocketsView<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> SocketResult<Resource<ResolveAddressStream>> {
        // The network resource is the capability to look names up.
        self.table.get(&network)?;
        let literal = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(&name)
            .parse::<IpAddr>();
        let state = match literal {
            // An address looks nothing up.
            Ok(ip) => LookupState::Answered(Ok((Arc::from([ip]), 0))),
            Err(_) => {
                let wanted = name.trim_end_matches('.').to_ascii_lowercase();
                let granted = self
                    .policy
                    .grants
                    .tcp
                    .iter()
                    .any(|g| matches!(&g.host, GrantHost::Name(n) if *n == wanted));
                let shared = match (&self.state.shared, granted) {
                    (Some(shared), true) => shared.clone(),
                    _ => {
                        self.state.denied = true;
                        refuse(
                            self.ident,
                            self.policy,
                            &format!("name lookup of {name:?}"),
                            &format!("{wanted}:PORT"),
                        );
                        return Err(ErrorCode::AccessDenied.into());
                    }
                };
                LookupState::Waiting(Box::pin(async move { shared.resolve(&wanted).await }))
            }
        };
        let stream = self.table.push(Lookup { state })?;
        Ok(Resource::new_own(stream.rep()))
    }
}

impl HostResolveAddressStream for SocketsView<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> SocketResult<Option<IpAddress>> {
        let lookup = self.table.get_mut(&lookup(&stream))?;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if lookup.poll(&mut cx).is_pending() {
            return Err(ErrorCode::WouldBlock.into());
        }
        match &mut lookup.state {
            LookupState::Answered(Ok((addrs, next))) => {
                let addr = addrs.get(*next).copied();
                *next += 1;
                Ok(addr.map(IpAddress::from))
            }
            LookupState::Answered(Err(code)) => Err((*code).into()),
            LookupState::Waiting(_) => Err(ErrorCode::WouldBlock.into()),
        }
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        wasmtime_wasi::p2::subscribe(self.table, lookup(&stream))
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        self.table
            .delete(Resource::<Lookup>::new_own(stream.rep()))?;
        Ok(())
    }
}

/// What ends a connected socket's streams: the task's cancel, noted (in
/// `cut`) when it fails a call.
#[derive(Clone)]
struct Cut(Arc<TaskSockets>);

impl Cut {
    /// Fails the call if the task is cancelled.
    fn check(&self) -> StreamResult<()> {
        if !self.0.cancel.is_cancelled() {
            return Ok(());
        }
        self.0.cut.store(true, Ordering::Relaxed);
        Err(StreamError::LastOperationFailed(wasmtime::format_err!(
            "the task was cancelled"
        )))
    }

    /// Waits for `ready`, or the cancel.
    async fn ready(&self, ready: impl Future<Output = ()>) {
        tokio::select! {
            () = ready => {}
            () = self.0.cancel.cancelled() => {}
        }
    }
}

/// A connected socket's input, ended by the task's cancel.
struct CancellableInput {
    inner: DynInputStream,
    cut: Cut,
}

#[async_trait]
impl Pollable for CancellableInput {
    async fn ready(&mut self) {
        self.cut.ready(self.inner.ready()).await
    }
}

#[async_trait]
impl InputStream for CancellableInput {
    fn read(&mut self, size: usize) -> StreamResult<bytes::Bytes> {
        self.cut.check()?;
        self.inner.read(size)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

/// A connected socket's output, ended by the task's cancel.
struct CancellableOutput {
    inner: DynOutputStream,
    cut: Cut,
}

#[async_trait]
impl Pollable for CancellableOutput {
    async fn ready(&mut self) {
        self.cut.ready(self.inner.ready()).await
    }
}

#[async_trait]
impl OutputStream for CancellableOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.cut.check()?;
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.cut.check()?;
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}
