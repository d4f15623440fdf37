//! Where the control API listens: a TCP address, or a Unix socket
//! (`unix:/path/to/socket`), which file permissions protect as well as the
//! token does.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Where the control API listens, as `--control` and the state file give
/// it: `HOST:PORT`, or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAddress {
    /// A TCP address; port 0 to bind picks a free one. Only loopback unless
    /// `--control-public`.
    Tcp(SocketAddr),
    /// A Unix socket, which only the host's user may open.
    Unix(PathBuf),
}

impl FromStr for ControlAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a socket path, e.g. unix:/run/taskhost.sock".into());
            }
            return Ok(ControlAddress::Unix(PathBuf::from(path)));
        }
        text.parse().map(ControlAddress::Tcp).map_err(|_| {
            format!("{text:?} is neither HOST:PORT (e.g. 127.0.0.1:7070) nor unix:PATH")
        })
    }
}

impl fmt::Display for ControlAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlAddress::Tcp(addr) => write!(f, "{addr}"),
            ControlAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl ControlAddress {
    /// Whether something answers there (a crashed host leaves a stale state
    /// file, and a stale socket file, behind).
    pub fn is_alive(&self) -> bool {
        let timeout = std::time::Duration::from_millis(300);
        match self {
            ControlAddress::Tcp(addr) => {
                std::net::TcpStream::connect_timeout(addr, timeout).is_ok()
            }
            #[cfg(unix)]
            ControlAddress::Unix(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            #[cfg(not(unix))]
            ControlAddress::Unix(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_addresses() {
        assert_eq!(
            "127.0.0.1:7070".parse::<ControlAddress>(),
            Ok(ControlAddress::Tcp("127.0.0.1:7070".parse().unwrap()))
        );
        assert_eq!(
            "unix:/tmp/t.sock".parse::<ControlAddress>(),
            Ok(ControlAddress::Unix("/tmp/t.sock".into()))
        );
        assert!("unix:".parse::<ControlAddress>().is_err());
        assert!("localhost".parse::<ControlAddress>().is_err());
        let unix = ControlAddress::Unix("/tmp/t.sock".into());
        assert_eq!(unix.to_string().parse::<ControlAddress>(), Ok(unix));
    }
}
