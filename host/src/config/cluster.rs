//! `[cluster]`: several hosts as one app, over NATS (docs/cluster.md).
//!
//! Without the table nothing changes: one host, no NATS. With it the host
//! connects to the NATS servers given, and every subject it uses starts
//! with the cluster's `name`, so several apps can share one NATS.

use super::ConfigValue;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How this host joins its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://...`); the client
    /// tries them in turn and reconnects to any.
    pub servers: Vec<String>,
    /// The cluster's name: the first token of every subject.
    pub name: String,
    /// This host's name in the cluster: stable and unique (by default the
    /// machine's hostname).
    pub host: String,
    /// How to prove who we are to NATS.
    pub auth: ClusterAuth,
    /// TLS beyond what a `tls://` URL asks for.
    pub tls: ClusterTls,
    /// How long a host may go without saying it still runs a durable
    /// task (it says so every third of this) before the task is handed to
    /// another host: the longest a dead host's durable tasks wait.
    pub ack_wait: Duration,
    /// Deliveries of one durable task before it is given up and recorded
    /// as failed (a dead letter), so a task that kills every host it runs
    /// on does not go round the cluster for ever.
    pub max_deliveries: u32,
}

/// The default `ack_wait_ms`: long enough that a busy host's progress
/// (every 10 s) is not mistaken for its death.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

/// The default `max_deliveries`.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;

/// NATS authentication: at most one way. `Debug` shows which way, never
/// the token or the password (an `AppConfig` printed with `{:?}` must not
/// carry a secret into a log).
#[derive(Clone, PartialEq, Eq, Default)]
pub enum ClusterAuth {
    /// No credentials: a NATS that lets anyone in (a local one, say).
    #[default]
    None,
    /// A `.creds` file (a user JWT and its NKey seed).
    Credentials(PathBuf),
    /// `token`: a NATS token, as written or read from `{ env }` or `{ file }`.
    Token(String),
    /// `user` and `password`, which go together.
    UserPassword {
        /// `user`, as written.
        user: String,
        /// `password`, as written or read from `{ env }` or `{ file }`.
        password: String,
    },
}

impl std::fmt::Debug for ClusterAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterAuth::None => f.write_str("None"),
            ClusterAuth::Credentials(path) => f.debug_tuple("Credentials").field(path).finish(),
            ClusterAuth::Token(_) => f.write_str("Token(<secret>)"),
            ClusterAuth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &format_args!("<secret>"))
                .finish(),
        }
    }
}

/// TLS settings: a CA to trust, and a client certificate for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterTls {
    /// Refuse a server that does not speak TLS.
    pub required: bool,
    /// `tls_ca`: a file of CA certificates to check the server's against
    /// (resolved against app.toml's directory); none: the client's defaults.
    pub ca: Option<PathBuf>,
    /// Certificate and key, both or neither.
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    nats: RawServers,
    name: String,
    host: Option<String>,
    credentials: Option<PathBuf>,
    token: Option<toml::Value>,
    user: Option<String>,
    password: Option<toml::Value>,
    #[serde(default)]
    tls_required: bool,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    ack_wait_ms: Option<u64>,
    max_deliveries: Option<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawServers {
    One(String),
    Many(Vec<String>),
}

/// Whether `text` may be one token of a NATS subject and the name of a
/// JetStream bucket: letters, digits, `-` and `_`.
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl RawCluster {
    /// Checks the table of `file`, resolving paths against `base`.
    pub(super) fn checked(self, file: &str, base: &Path) -> Result<ClusterConfig> {
        let at = |field: &str| format!("{file}: [cluster] {field}");
        let servers = match self.nats {
            RawServers::One(url) => vec![url],
            RawServers::Many(urls) => urls,
        };
        if servers.is_empty() {
            bail!(
                "{}: give at least one NATS server, as `nats = \"nats://127.0.0.1:4222\"`",
                at("nats")
            );
        }
        for url in &servers {
            let scheme = url.split_once("://").map(|(scheme, _)| scheme);
            if !matches!(scheme, Some("nats" | "tls" | "ws" | "wss")) {
                bail!(
                    "{}: {url:?} is not a NATS URL; write it as nats://HOST:PORT (or tls://, \
                     ws://, wss://)",
                    at("nats")
                );
            }
        }
        if !is_token(&self.name) {
            bail!(
                "{}: {:?} cannot start a NATS subject; use 1-64 letters, digits, `-` or `_`",
                at("name"),
                self.name
            );
        }
        let host = match self.host {
            Some(host) => host,
            None => hostname().with_context(|| {
                format!(
                    "{}: not given, and this machine's hostname is unknown; set it",
                    at("host")
                )
            })?,
        };
        if host == "any" || host == "all" {
            bail!(
                "{}: {host:?} is how a request names any or all hosts; give this host another name",
                at("host")
            );
        }
        if !is_token(&host) {
            bail!(
                "{}: {host:?} cannot be a NATS subject token; use 1-64 letters, digits, `-` or \
                 `_`{}",
                at("host"),
                " (the default is the hostname: set `host` when it has dots)"
            );
        }
        let secret = |field: &str, value: toml::Value| -> Result<String> {
            let resolved = ConfigValue::resolve(value, base).with_context(|| at(field))?;
            match resolved.value {
                serde_json::Value::String(text) => Ok(text),
                _ => bail!(
                    "{}: give a string, {{ env = \"VAR\" }} or {{ file = \"path\" }}",
                    at(field)
                ),
            }
        };
        let auth = match (self.credentials, self.token, self.user, self.password) {
            (None, None, None, None) => ClusterAuth::None,
            (Some(path), None, None, None) => {
                let path = base.join(path);
                if !path.is_file() {
                    bail!(
                        "{}: {} does not exist or is not a file (a NATS .creds file)",
                        at("credentials"),
                        path.display()
                    );
                }
                ClusterAuth::Credentials(path)
            }
            (None, Some(token), None, None) => ClusterAuth::Token(secret("token", token)?),
            (None, None, Some(user), Some(password)) => ClusterAuth::UserPassword {
                user,
                password: secret("password", password)?,
            },
            (None, None, Some(_), None) | (None, None, None, Some(_)) => {
                bail!("{}: `user` and `password` go together", at("user/password"))
            }
            _ => bail!(
                "{file}: [cluster] gives more than one way to authenticate; keep one of \
                 `credentials`, `token`, or `user` + `password`"
            ),
        };
        let file_at = |field: &str, path: Option<PathBuf>| -> Result<Option<PathBuf>> {
            let Some(path) = path else { return Ok(None) };
            let path = base.join(path);
            if !path.is_file() {
                bail!(
                    "{}: {} does not exist or is not a file",
                    at(field),
                    path.display()
                );
            }
            Ok(Some(path))
        };
        let client = match (
            file_at("tls_cert", self.tls_cert)?,
            file_at("tls_key", self.tls_key)?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!("{}: `tls_cert` and `tls_key` go together", at("tls_cert")),
        };
        let ack_wait = Duration::from_millis(
            self.ack_wait_ms
                .unwrap_or(DEFAULT_ACK_WAIT.as_millis() as u64),
        );
        if ack_wait < Duration::from_secs(1) || ack_wait > Duration::from_secs(3600) {
            bail!(
                "{}: {} ms is out of range; give 1000 to 3600000 (the default is {})",
                at("ack_wait_ms"),
                ack_wait.as_millis(),
                DEFAULT_ACK_WAIT.as_millis()
            );
        }
        let max_deliveries = self.max_deliveries.unwrap_or(DEFAULT_MAX_DELIVERIES);
        if max_deliveries == 0 {
            bail!(
                "{}: 0 would never run a durable task; give 1 or more (the default is \
                 {DEFAULT_MAX_DELIVERIES})",
                at("max_deliveries")
            );
        }
        Ok(ClusterConfig {
            ack_wait,
            max_deliveries,
            servers,
            name: self.name,
            host,
            auth,
            tls: ClusterTls {
                required: self.tls_required,
                ca: file_at("tls_ca", self.tls_ca)?,
                client,
            },
        })
    }
}

/// The machine's hostname, up to its first dot (a subject token cannot
/// hold one).
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?;
    let short = name.split('.').next().unwrap_or(name);
    (!short.is_empty()).then(|| short.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig> {
        let raw: RawCluster = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        raw.checked("app.toml", Path::new("/nonexistent"))
    }

    /// A derived `Debug` printed the token and the password as written.
    #[test]
    fn debug_names_the_way_of_auth_but_never_the_secret() {
        let token = ClusterAuth::Token("tok-never-shown".into());
        assert_eq!(format!("{token:?}"), "Token(<secret>)");
        let user = ClusterAuth::UserPassword {
            user: "ops".into(),
            password: "pw-never-shown".into(),
        };
        let shown = format!("{user:?}");
        assert!(
            shown.contains("ops") && !shown.contains("pw-never-shown"),
            "{shown}"
        );
    }

    #[test]
    fn a_cluster_needs_servers_a_name_and_a_host_that_are_subject_tokens() {
        let config = parse(
            r#"
            nats = "nats://127.0.0.1:4222"
            name = "prod"
            host = "host-a"
            "#,
        )
        .unwrap();
        assert_eq!(config.servers, ["nats://127.0.0.1:4222"]);
        assert_eq!(
            (config.name.as_str(), config.host.as_str()),
            ("prod", "host-a")
        );
        assert_eq!(config.auth, ClusterAuth::None);

        let error = parse("nats = \"127.0.0.1:4222\"\nname = \"prod\"\nhost = \"a\"")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("[cluster] nats") && error.contains("nats://HOST:PORT"),
            "{error}"
        );
        let error = parse("nats = \"nats://x:1\"\nname = \"my.app\"\nhost = \"a\"")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("[cluster] name") && error.contains("\"my.app\""),
            "{error}"
        );
        let error = parse("nats = \"nats://x:1\"\nname = \"app\"\nhost = \"a b\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("[cluster] host"), "{error}");
        assert_eq!(
            (config.ack_wait, config.max_deliveries),
            (DEFAULT_ACK_WAIT, DEFAULT_MAX_DELIVERIES)
        );
        let error = parse("nats = \"nats://x:1\"\nname = \"app\"\nack_wait_ms = 10")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("[cluster] ack_wait_ms") && error.contains("1000 to"),
            "{error}"
        );
        let error = parse("nats = \"nats://x:1\"\nname = \"app\"\nmax_deliveries = 0")
            .unwrap_err()
            .to_string();
        assert!(error.contains("[cluster] max_deliveries"), "{error}");
    }

    #[test]
    fn one_way_to_authenticate_and_tls_files_that_exist() {
        let error = parse(
            "nats = \"nats://x:1\"\nname = \"app\"\nhost = \"a\"\ntoken = \"t\"\nuser = \"u\"\npassword = \"p\"",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("more than one way"), "{error}");
        let config = parse(
            "nats = \"nats://x:1\"\nname = \"app\"\nhost = \"a\"\nuser = \"u\"\npassword = \"p\"",
        )
        .unwrap();
        assert_eq!(
            config.auth,
            ClusterAuth::UserPassword {
                user: "u".into(),
                password: "p".into()
            }
        );
        let error =
            parse("nats = \"nats://x:1\"\nname = \"app\"\nhost = \"a\"\ntls_ca = \"ca.pem\"")
                .unwrap_err()
                .to_string();
        assert!(
            error.contains("[cluster] tls_ca") && error.contains("ca.pem"),
            "{error}"
        );
    }

    #[test]
    fn the_default_host_is_the_hostname_without_its_domain() {
        let config = parse("nats = \"nats://x:1\"\nname = \"app\"").unwrap();
        assert!(is_token(&config.host), "{}", config.host);
    }
}
