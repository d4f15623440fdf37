//! The control API: HTTP + JSON on loopback, so operators (and the CLI)
//! can see and steer a running host.
//!
//! Every request needs the bearer token the host generates at start and
//! writes, with the address, to a state file only its user can read; the
//! CLI finds both there. Errors are JSON (`{"error": {"kind", "message"}}`)
//! with a 4xx status; no request can panic the host.

mod address;
mod api;
pub mod client;
mod dashboard;
pub mod routes;
mod state_file;

pub use address::ControlAddress;

use crate::host::Host;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::sync::Arc;

pub use state_file::{ControlState, default_state_file};

/// Room in a request body for everything but task arguments and event
/// payloads.
pub const MAX_BODY: usize = 64 * 1024;

/// Largest request body accepted (larger ones get 413): room for the
/// largest arguments or payload the limits allow, JSON-escaped (2.06 MiB
/// by default). A key-value write has its own, [`kv_body_limit`].
pub fn body_limit(limits: &crate::config::Limits) -> usize {
    MAX_BODY
        .saturating_add(2usize.saturating_mul(limits.args_bytes.max(limits.event_payload_bytes)))
}

/// Largest body of a key-value write (`PUT /v1/kv/...`): a value
/// comes as text (escaped: up to 6 bytes per byte in JSON) or base64
/// (4/3), so 64 KiB + 6 x `kv_value_bytes` (6.06 MiB by default).
pub fn kv_body_limit(limits: &crate::config::Limits) -> usize {
    MAX_BODY
        .saturating_add(6usize.saturating_mul(limits.kv_value_bytes))
        .max(body_limit(limits))
}

/// The control API as a service, without a listener: every request must
/// carry `token` as its bearer token. [`serve`] puts it on a socket; the
/// fuzz targets call it directly.
pub fn router(host: Arc<Host>, token: String) -> axum::Router {
    api::router(host, token, None)
}

/// Where and how to serve the control API.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// Address to bind (port 0 picks a free one), or a Unix socket path.
    pub bind: ControlAddress,
    /// Allow binding an address other than loopback.
    pub allow_public: bool,
    /// Where to write the address and token.
    pub state_file: PathBuf,
}

/// A running control server. Dropping it does not stop it: call `stop`.
pub struct ControlServer {
    /// Where it listens: the bound port when the options asked for port 0.
    pub address: ControlAddress,
    state_file: PathBuf,
    token: String,
    server: crate::serve::Server,
}

/// Fails if a live host already serves its control API through
/// `state_file` (a stale file from a crashed host is fine: it is replaced).
pub async fn ensure_free(state_file: &std::path::Path) -> Result<()> {
    let Ok(other) = ControlState::read(state_file) else {
        return Ok(());
    };
    if other.is_alive().await {
        bail!(
            "another host (app {:?}, pid {}) is serving its control API through {}; give this \
             one its own with --control-file (or TASKHOST_CONTROL_FILE), or --no-control",
            other.app,
            other.pid,
            state_file.display()
        );
    }
    Ok(())
}

/// The control API's socket, bound before anything runs, not yet served
/// (no state file yet: the CLI finds the API once it answers).
pub struct BoundControl {
    listener: Listener,
}

/// Checks no live host serves through `options.state_file` and binds the
/// control API's address.
pub async fn bind(options: &ControlOptions) -> Result<BoundControl> {
    if let ControlAddress::Tcp(bind) = &options.bind
        && !bind.ip().is_loopback()
        && !options.allow_public
    {
        bail!(
            "refusing to serve the control API on {bind} (not loopback): pass --control-public \
             to allow it"
        );
    }
    ensure_free(&options.state_file).await?;
    let listener = Listener::bind(&options.bind).await?;
    Ok(BoundControl { listener })
}

/// Writes the state file and serves `host` on `bound` until stopped.
pub async fn serve(
    host: Arc<Host>,
    options: &ControlOptions,
    bound: BoundControl,
) -> Result<ControlServer> {
    let listener = bound.listener;
    let address = listener.address()?;
    let token = state_file::new_token()?;
    let state = ControlState {
        address: address.to_string(),
        token,
        read_token: Some(state_file::new_token()?),
        pid: std::process::id(),
        app: host.config().name.clone(),
    };
    state.write(&options.state_file)?;
    let metrics = host.server_metrics().clone();
    let router = api::router(host, state.token.clone(), state.read_token.clone());
    crate::serve::raise_open_files();
    let limits = crate::serve::ConnectionLimits {
        max_connections: crate::serve::CONTROL_CONNECTIONS,
        header_timeout: crate::serve::CONTROL_HEADER_TIMEOUT,
    };
    let server = match listener {
        Listener::Tcp(listener) => {
            crate::serve::spawn(listener, router, limits, "control", metrics)
        }
        #[cfg(unix)]
        Listener::Unix(listener) => {
            crate::serve::spawn(listener, router, limits, "control", metrics)
        }
    };
    let dashboard = match &address {
        ControlAddress::Tcp(addr) => format!("; dashboard at http://{addr}/ui"),
        ControlAddress::Unix(_) => String::new(),
    };
    tracing::info!(
        control = %address,
        state_file = %options.state_file.display(),
        "control API on {address} (token in {}){dashboard}",
        options.state_file.display()
    );
    Ok(ControlServer {
        address,
        state_file: options.state_file.clone(),
        token: state.token,
        server,
    })
}

impl ControlServer {
    /// Stops serving (open event streams end) and removes the state file,
    /// unless another host has written its own there since.
    pub async fn stop(self) {
        self.server.stop(std::time::Duration::from_secs(2)).await;
        if ControlState::read(&self.state_file).is_ok_and(|s| s.token == self.token) {
            let _ = std::fs::remove_file(&self.state_file);
            if let ControlAddress::Unix(path) = &self.address {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

impl Listener {
    async fn bind(address: &ControlAddress) -> Result<Listener> {
        match address {
            ControlAddress::Tcp(addr) => crate::serve::bind_tcp(*addr)
                .map(Listener::Tcp)
                .with_context(|| format!("cannot bind the control API to {addr}")),
            #[cfg(unix)]
            ControlAddress::Unix(path) => {
                // `ensure_free` has checked no live host owns it: a socket
                // file left there is a crashed host's.
                if address.is_alive() {
                    bail!("{} is in use by another process", path.display());
                }
                let _ = std::fs::remove_file(path);
                let listener = tokio::net::UnixListener::bind(path).with_context(|| {
                    format!("cannot bind the control API to {}", path.display())
                })?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot restrict {}", path.display()))?;
                Ok(Listener::Unix(listener))
            }
            #[cfg(not(unix))]
            ControlAddress::Unix(_) => bail!("Unix sockets need a Unix system"),
        }
    }

    fn address(&self) -> Result<ControlAddress> {
        Ok(match self {
            Listener::Tcp(listener) => ControlAddress::Tcp(listener.local_addr()?),
            #[cfg(unix)]
            Listener::Unix(listener) => ControlAddress::Unix(
                listener
                    .local_addr()?
                    .as_pathname()
                    .map(std::path::Path::to_path_buf)
                    .context("the control socket has no path")?,
            ),
        })
    }
}
