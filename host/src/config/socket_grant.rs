//! One entry of a TCP allow-list: `host:port`.
//!
//! The grammar, as app.toml writes it (`[plugins.NAME.grants] tcp`):
//! - `host` is an IPv4 address, an IPv6 address in brackets, or a DNS
//!   name (letters, digits, `-` and `.`; compared case-insensitively);
//! - `port` is one number from 1 to 65535;
//! - nothing else: no wildcard host, no port range, no scheme. A socket
//!   grant opens a raw byte stream to a service, so each one is named
//!   exactly.
//!
//! A name is resolved by the host, not trusted as the guest resolves it:
//! see `crate::sockets`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// A parsed `tcp` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SocketGrant {
    /// The address, or the name the host resolves.
    pub host: GrantHost,
    /// The one port allowed.
    pub port: u16,
}

/// Whom a grant names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GrantHost {
    /// This address only.
    Ip(IpAddr),
    /// What this name resolves to on the host, lowercase.
    Name(String),
}

impl SocketGrant {
    /// Whether the grant names `addr` by its address (a name's grant is
    /// matched against what the name resolved to, see `crate::sockets`).
    pub fn names_addr(&self, addr: SocketAddr) -> bool {
        self.port == addr.port()
            && matches!(self.host, GrantHost::Ip(ip) if ip.to_canonical() == addr.ip().to_canonical())
    }
}

impl std::str::FromStr for SocketGrant {
    type Err = String;

    fn from_str(text: &str) -> Result<SocketGrant, String> {
        let bad = |why: &str| {
            format!(
                "{text:?} is not a TCP address ({why}); write host:port, e.g. \
                 \"127.0.0.1:5432\", \"cache.internal:6379\" or \"[::1]:6379\""
            )
        };
        if text.contains("://") {
            return Err(bad("a TCP grant has no scheme"));
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
        let host = if let Some(v6) = host.strip_prefix('[') {
            let v6 = v6
                .strip_suffix(']')
                .ok_or_else(|| bad("an IPv6 address needs its closing bracket"))?;
            GrantHost::Ip(IpAddr::V6(
                v6.parse().map_err(|_| bad("not an IPv6 address"))?,
            ))
        } else if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            GrantHost::Ip(IpAddr::V4(ip))
        } else if host.contains(':') {
            return Err(bad("an IPv6 address goes in brackets"));
        } else if host.contains('*') {
            return Err(bad("a TCP grant names one host: no wildcards"));
        } else if is_dns_name(host) {
            GrantHost::Name(host.to_ascii_lowercase())
        } else {
            return Err(bad("not an IP address or a DNS name"));
        };
        Ok(SocketGrant { host, port })
    }
}

/// Letters, digits and `-` in labels of 1 to 63 characters, separated by
/// dots; 253 characters at most.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl fmt::Display for SocketGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            GrantHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            GrantHost::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            GrantHost::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_names_and_ports_parse() {
        let grant: SocketGrant = "127.0.0.1:5432".parse().unwrap();
        assert!(grant.names_addr("127.0.0.1:5432".parse().unwrap()));
        assert!(!grant.names_addr("127.0.0.1:5433".parse().unwrap()));
        assert!(!grant.names_addr("127.0.0.2:5432".parse().unwrap()));
        // An IPv4 address reached as IPv4-mapped IPv6 is the same address.
        assert!(grant.names_addr("[::ffff:127.0.0.1]:5432".parse().unwrap()));
        let grant: SocketGrant = "[::1]:6379".parse().unwrap();
        assert_eq!(grant.to_string(), "[::1]:6379");
        let grant: SocketGrant = "Cache.Internal:6379".parse().unwrap();
        assert_eq!(grant.host, GrantHost::Name("cache.internal".into()));
        assert_eq!(grant.to_string(), "cache.internal:6379");
    }

    #[test]
    fn every_bad_form_says_what_to_write() {
        for (text, why) in [
            ("127.0.0.1", "no port"),
            ("127.0.0.1:0", "from 1 to 65535"),
            ("127.0.0.1:70000", "from 1 to 65535"),
            ("127.0.0.1:*", "from 1 to 65535"),
            ("::1:6379", "in brackets"),
            ("[::1:6379", "closing bracket"),
            ("[nope]:6379", "not an IPv6 address"),
            ("*.internal:6379", "no wildcards"),
            ("db_1.internal:5432", "not an IP address or a DNS name"),
            ("tcp://db:5432", "no scheme"),
        ] {
            let error = text.parse::<SocketGrant>().unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
            assert!(error.contains("write host:port"), "{text}: {error}");
        }
    }
}
