//! One entry of an outbound HTTP allow-list: `scheme://host[:port]`.
//!
//! The grammar, as app.toml writes it:
//! - `scheme` is `http` or `https`;
//! - `host` is a DNS name, an IPv4 address, or an IPv6 address in
//!   brackets; `*.example.org` matches every name under `example.org` (not
//!   `example.org` itself), and `*` alone matches any host;
//! - `port` is a number, or `*` for any port; without one, only the
//!   scheme's default port (80 for http, 443 for https) is allowed;
//! - nothing else: no user, no path (a single trailing `/` is tolerated),
//!   no query. Names compare case-insensitively.

use std::fmt;

/// A parsed allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    /// `http` or `https`: a grant for one does not allow the other.
    pub scheme: Scheme,
    /// Which hosts: one name or address, a `*.suffix`, or any (`*`).
    pub host: HostPattern,
    /// Which ports: one, or any (`:*`); without a port, the scheme's default
    /// (80, 443).
    pub port: PortPattern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Any host (`*`).
    Any,
    /// Exactly this name or address (lowercase; IPv6 without brackets).
    Exact(String),
    /// Any name ending in `.suffix` (`*.suffix`).
    Subdomains(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPattern {
    Any,
    Exact(u16),
}

impl std::str::FromStr for HttpGrant {
    type Err = String;

    fn from_str(text: &str) -> Result<HttpGrant, String> {
        let bad = |why: &str| {
            format!(
                "{text:?} is not an allowed origin ({why}); write scheme://host[:port], \
                 e.g. \"https://api.example.com\", \"http://127.0.0.1:*\" or \
                 \"https://*.example.org\""
            )
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "only scheme, host and port are allowed: no user, path or query",
            ));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (address, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs its closing `]`"))?;
            if address.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address between the brackets"));
            }
            let port = match after {
                "" => None,
                after => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("only `:port` may follow `]`"))?,
                ),
            };
            (HostPattern::Exact(address.to_ascii_lowercase()), port)
        } else {
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            (
                host_pattern(host).ok_or_else(|| bad("not a host name"))?,
                port,
            )
        };
        let port = match port {
            None => PortPattern::Exact(scheme.default_port()),
            Some("*") => PortPattern::Any,
            Some(port) => PortPattern::Exact(
                port.parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("the port must be 1-65535 or `*`"))?,
            ),
        };
        Ok(HttpGrant { scheme, host, port })
    }
}

/// `*`, `*.name`, or a name or IPv4 address of DNS characters.
fn host_pattern(host: &str) -> Option<HostPattern> {
    let host = host.to_ascii_lowercase();
    if host == "*" {
        return Some(HostPattern::Any);
    }
    let (name, pattern): (&str, fn(String) -> HostPattern) = match host.strip_prefix("*.") {
        Some(suffix) => (suffix, HostPattern::Subdomains),
        None => (&host, HostPattern::Exact),
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    valid.then(|| pattern(name.to_string()))
}

impl HttpGrant {
    /// Whether a request to `scheme://host:port` is allowed by this entry.
    /// `host` as a URI gives it (IPv6 may keep its brackets); `port` is the
    /// one the request will use (the scheme's default when none is given).
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        if !scheme.eq_ignore_ascii_case(self.scheme.as_str()) {
            return false;
        }
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_ascii_lowercase();
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(name) => host == *name,
            HostPattern::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        };
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::Exact(p) => p == port,
        };
        host_ok && port_ok
    }
}

impl fmt::Display for HttpGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        match &self.host {
            HostPattern::Any => f.write_str("*")?,
            HostPattern::Exact(name) if name.contains(':') => write!(f, "[{name}]")?,
            HostPattern::Exact(name) => f.write_str(name)?,
            HostPattern::Subdomains(suffix) => write!(f, "*.{suffix}")?,
        }
        match self.port {
            PortPattern::Any => f.write_str(":*"),
            PortPattern::Exact(p) if p == self.scheme.default_port() => Ok(()),
            PortPattern::Exact(p) => write!(f, ":{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(text: &str) -> HttpGrant {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_exact_origin_allows_its_scheme_host_and_default_port_only() {
        let g = grant("https://API.example.com/");
        assert!(g.allows("https", "api.example.com", 443));
        assert!(g.allows("HTTPS", "Api.Example.com", 443));
        assert!(!g.allows("http", "api.example.com", 443));
        assert!(!g.allows("https", "api.example.com", 8443));
        assert!(!g.allows("https", "example.com", 443));
        assert!(!g.allows("https", "evil-api.example.com", 443));
        assert_eq!(g.to_string(), "https://api.example.com");
    }

    #[test]
    fn wildcards_cover_subdomains_and_ports() {
        let g = grant("https://*.example.org");
        assert!(g.allows("https", "a.example.org", 443));
        assert!(g.allows("https", "a.b.example.org", 443));
        assert!(!g.allows("https", "example.org", 443));
        assert!(!g.allows("https", "badexample.org", 443));
        let g = grant("http://127.0.0.1:*");
        assert!(g.allows("http", "127.0.0.1", 8080));
        assert!(g.allows("http", "127.0.0.1", 80));
        assert!(!g.allows("http", "127.0.0.2", 8080));
        let g = grant("http://[::1]:8080");
        assert!(g.allows("http", "[::1]", 8080));
        assert!(g.allows("http", "::1", 8080));
        assert_eq!(g.to_string(), "http://[::1]:8080");
        assert!(grant("https://*").allows("https", "anything.at.all", 443));
    }

    #[test]
    fn anything_but_scheme_host_and_port_is_refused_with_the_grammar() {
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://example.com/path",
            "https://user@example.com",
            "https://example.com?q",
            "https://example.com:0",
            "https://example.com:http",
            "https://exa mple.com",
            "https://*example.com",
            "https://[::1",
            "https://[nope]:80",
            "https://",
        ] {
            let error = bad.parse::<HttpGrant>().unwrap_err();
            assert!(error.contains("scheme://host[:port]"), "{bad}: {error}");
        }
    }
}
