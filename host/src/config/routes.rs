//! `[listen]` and `[[routes]]`: the public listener, whose websocket
//! connections and HTTP requests (webhooks) start tasks. Off unless
//! app.toml has at least one route; separate from the control API, its
//! address and its token.
//!
//! ```toml
//! [listen]
//! address = "127.0.0.1:8080"
//!
//! [[routes]]
//! websocket = "/feed"
//! plugin = "examples"
//! factory = "feed"
//!
//! [[routes]]
//! http = "POST /hooks/build"
//! plugin = "examples"
//! factory = "on_hook"
//! respond = "result"
//! secret = { env = "HOOK_SECRET" }
//! ```

use super::{ConfigValue, toml_to_json};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Where the listener binds when `[listen]` does not say.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// `[listen]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// `address` (default `127.0.0.1:8080`; `taskhost run --listen` overrides
    /// it; port 0 picks a free one).
    pub address: SocketAddr,
    /// Open websocket connections of every route together; an upgrade
    /// past it is answered 503. With `max_requests`, the most connections
    /// the listener holds open at once (lowered to what the process's
    /// open-file limit leaves room for); past that it stops accepting.
    pub max_connections: u32,
    /// Webhook requests in flight, every route together (each may hold its
    /// route's `max_body_bytes` while it is read).
    pub max_requests: u32,
    /// How long a client may take to send a request's head, from
    /// connecting or from its previous answer; then it is disconnected.
    pub header_timeout: Duration,
}

/// One `[[routes]]` entry, checked.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Position in the `routes` array, for messages (`routes[1]`).
    pub index: usize,
    /// The plugin its tasks start from.
    pub plugin: String,
    /// The factory each connection or request starts.
    pub factory: String,
    /// Fixed arguments of every task the route starts; the host adds
    /// `request` (what the client sent) beside them.
    pub args: serde_json::Map<String, serde_json::Value>,
    /// Request headers that reach the task (lower case); others do not, so
    /// a cookie or a token is not copied into a task's arguments unasked.
    pub headers: Vec<String>,
    /// Whether it serves websocket connections or HTTP requests, with that
    /// kind's settings.
    pub kind: RouteKind,
}

/// What a route serves.
#[derive(Debug, Clone)]
pub enum RouteKind {
    /// `websocket = "/path"`.
    WebSocket(WebSocketRoute),
    /// `http = "METHOD /path"`.
    Http(HttpRoute),
}

/// `websocket = "/path"`: each connection starts one task, bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketRoute {
    /// The literal path it is served on (no patterns), as written after
    /// `websocket =`.
    pub path: String,
    /// Open connections of this route.
    pub max_connections: u32,
    /// Largest message either way; a client's larger message closes its
    /// connection with 1009 (message too big).
    pub max_message_bytes: usize,
    /// Messages a task may queue for a client before `send` waits.
    pub send_buffer: usize,
    /// How long `send` waits on a full buffer before the client is dropped
    /// as too slow.
    pub send_timeout: Duration,
    /// A connection that sends nothing (not even a pong to the host's
    /// pings, sent every third of this) for this long is closed.
    pub idle_timeout: Duration,
}

/// `http = "METHOD /path"`: each request starts one task.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    /// The method it answers; another method on its path is answered 405.
    pub method: http::Method,
    /// The literal path it is served on (no patterns).
    pub path: String,
    /// Whether the request is answered at once (`accepted`, the default) or
    /// when the task ends.
    pub respond: Respond,
    /// `respond = "result"`: how long the request waits for the task
    /// before it is answered 504 (the task goes on).
    pub timeout: Duration,
    /// Largest request body, in bytes (default 1 MiB, at most
    /// `[limits] args_bytes`); 413 past it.
    pub max_body_bytes: usize,
    /// The shared secret a request's HMAC-SHA256 signature is checked
    /// against; none: requests are not signed.
    pub secret: Option<ConfigValue>,
    /// The header carrying the signature, `sha256=<hex>` (GitHub's form).
    pub signature_header: String,
    /// The task is durable: recorded before the request is answered and
    /// run to its end across crashes.
    pub durable: bool,
    /// The queue its task waits in (`[[queues]]`): a burst of requests is
    /// queued and answered, not refused at `tasks_per_worker`.
    pub queue: Option<String>,
}

impl HttpRoute {
    /// The secret's text (a route's secret is always a string).
    pub fn secret_bytes(&self) -> Option<&[u8]> {
        self.secret
            .as_ref()
            .and_then(|s| s.value.as_str())
            .map(str::as_bytes)
    }
}

/// When a webhook's request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Respond {
    /// At once, 202 with the task's id.
    Accepted,
    /// When the task ends: 200 with its result, 500 if it failed, 504 if
    /// it did not end within the route's `timeout`.
    Result,
}

impl RouteConfig {
    /// `websocket /feed` or `POST /hooks/build`: how messages name a route.
    pub fn label(&self) -> String {
        match &self.kind {
            RouteKind::WebSocket(ws) => format!("websocket {}", ws.path),
            RouteKind::Http(route) => format!("{} {}", route.method, route.path),
        }
    }

    /// Arguments shaped as a request's would be, for `taskhost check` to
    /// try the factory with.
    pub fn sample_args(&self) -> String {
        let mut request = serde_json::json!({
            "path": self.path(),
            "query": {},
            "headers": {},
            "remote": "127.0.0.1:0",
        });
        match &self.kind {
            RouteKind::WebSocket(_) => request["connection"] = 0.into(),
            RouteKind::Http(route) => {
                request["method"] = route.method.as_str().into();
                request["body"] = serde_json::Value::Null;
            }
        }
        let mut args = self.args.clone();
        args.insert("request".into(), request);
        serde_json::Value::Object(args).to_string()
    }

    /// The path the route is served on, websocket or HTTP.
    pub fn path(&self) -> &str {
        match &self.kind {
            RouteKind::WebSocket(ws) => &ws.path,
            RouteKind::Http(route) => &route.path,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    address: Option<String>,
    max_connections: Option<u32>,
    max_requests: Option<u32>,
    header_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    websocket: Option<String>,
    http: Option<String>,
    plugin: String,
    factory: String,
    args: Option<toml::Value>,
    #[serde(default)]
    headers: Vec<String>,
    // websocket
    max_connections: Option<u32>,
    max_message_bytes: Option<usize>,
    send_buffer: Option<usize>,
    send_timeout: Option<String>,
    idle_timeout: Option<String>,
    // http
    respond: Option<Respond>,
    timeout: Option<String>,
    max_body_bytes: Option<usize>,
    secret: Option<toml::Value>,
    signature_header: Option<String>,
    durable: Option<bool>,
    queue: Option<String>,
}

/// The methods an HTTP route may serve (what the router can match).
const ROUTABLE: [http::Method; 8] = [
    http::Method::GET,
    http::Method::POST,
    http::Method::PUT,
    http::Method::DELETE,
    http::Method::PATCH,
    http::Method::HEAD,
    http::Method::OPTIONS,
    http::Method::TRACE,
];

/// How long a client has to send a request's head (nginx's
/// `client_header_timeout` is 60 s; a slot held by a silent client is a
/// slot an attacker keeps, so less).
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_TIMEOUT: Duration = Duration::from_secs(300);

/// The shortest `idle_timeout`: the host pings every third of it.
const MIN_IDLE: Duration = Duration::from_millis(100);

/// Bounds of a route's settings: anything past them is a typo.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
const MAX_SEND_BUFFER: usize = 65_536;
const MAX_BODY_BYTES: usize = 64 << 20;

fn duration(field: &str, text: Option<&str>, default: Duration) -> Result<Duration> {
    let Some(text) = text else {
        return Ok(default);
    };
    let value = humantime::parse_duration(text).with_context(|| {
        format!("`{field}` = {text:?} is not a duration such as \"500ms\" or \"30s\"")
    })?;
    if value.is_zero() {
        bail!("`{field}` must be more than zero");
    }
    Ok(value)
}

fn positive<T: PartialOrd + Default + Copy + std::fmt::Display>(
    field: &str,
    value: Option<T>,
    default: T,
    max: T,
) -> Result<T> {
    let value = value.unwrap_or(default);
    if value <= T::default() || value > max {
        bail!("`{field}` must be between 1 and {max} (got {value})");
    }
    Ok(value)
}

/// A literal path: `/` and then segments; no patterns, so a route matches
/// exactly what it says.
fn check_path(field: &str, path: &str) -> Result<()> {
    if !path.starts_with('/') {
        bail!("`{field}` path {path:?} must start with `/`");
    }
    if path.chars().any(|c| {
        matches!(c, '{' | '}' | '*' | ':' | '?' | '#') || c.is_whitespace() || c.is_control()
    }) {
        bail!(
            "`{field}` path {path:?} must be a literal path (no `{{..}}`, `*`, `:`, `?`, `#` \
             or spaces)"
        );
    }
    if path.len() > 1024 {
        bail!("`{field}` path is {} bytes; at most 1024", path.len());
    }
    Ok(())
}

impl RawListen {
    pub(super) fn checked(self, routes: usize) -> Result<Option<ListenConfig>> {
        if routes == 0 {
            if self.address.is_some()
                || self.max_connections.is_some()
                || self.max_requests.is_some()
                || self.header_timeout.is_some()
            {
                bail!(
                    "[listen] is set but there are no [[routes]]: the listener serves routes \
                     only (add a `[[routes]]` entry, or remove [listen])"
                );
            }
            return Ok(None);
        }
        let text = self.address.as_deref().unwrap_or(DEFAULT_LISTEN);
        let address = text.parse().with_context(|| {
            format!("[listen] `address` = {text:?} is not HOST:PORT such as \"127.0.0.1:8080\"")
        })?;
        let max_connections = positive(
            "[listen] max_connections",
            self.max_connections,
            10_000,
            1_000_000,
        )?;
        let max_requests = positive("[listen] max_requests", self.max_requests, 1_000, 1_000_000)?;
        let header_timeout = duration(
            "[listen] header_timeout",
            self.header_timeout.as_deref(),
            DEFAULT_HEADER_TIMEOUT,
        )?;
        if header_timeout > MAX_HEADER_TIMEOUT {
            bail!(
                "`[listen] header_timeout` must be at most {MAX_HEADER_TIMEOUT:?}: a client \
                 holds a connection slot that long without sending a request (got {header_timeout:?})"
            );
        }
        Ok(Some(ListenConfig {
            address,
            max_connections,
            max_requests,
            header_timeout,
        }))
    }
}

impl RawRoute {
    pub(super) fn checked(self, index: usize, base: &Path) -> Result<RouteConfig> {
        let args = match self.args {
            None => serde_json::Map::new(),
            Some(value) => match toml_to_json(value).context("`args`")? {
                serde_json::Value::Object(map) => map,
                _ => bail!("`args` must be a table"),
            },
        };
        if args.contains_key("request") {
            bail!("`args` must not have a `request` key: the host sets it to the request");
        }
        let headers = self
            .headers
            .iter()
            .map(|name| {
                http::HeaderName::try_from(name.as_str())
                    .map(|h| h.as_str().to_string())
                    .with_context(|| format!("`headers`: {name:?} is not a header name"))
            })
            .collect::<Result<Vec<_>>>()?;
        let websocket_only = [
            ("max_connections", self.max_connections.is_some()),
            ("max_message_bytes", self.max_message_bytes.is_some()),
            ("send_buffer", self.send_buffer.is_some()),
            ("send_timeout", self.send_timeout.is_some()),
            ("idle_timeout", self.idle_timeout.is_some()),
        ];
        let http_only = [
            ("respond", self.respond.is_some()),
            ("timeout", self.timeout.is_some()),
            ("max_body_bytes", self.max_body_bytes.is_some()),
            ("secret", self.secret.is_some()),
            ("signature_header", self.signature_header.is_some()),
            ("durable", self.durable.is_some()),
            ("queue", self.queue.is_some()),
        ];
        let refuse = |fields: &[(&str, bool)], kind: &str| -> Result<()> {
            if let Some((field, _)) = fields.iter().find(|(_, set)| *set) {
                bail!("`{field}` is not a setting of a {kind} route");
            }
            Ok(())
        };
        let kind = match (self.websocket, self.http) {
            (Some(path), None) => {
                refuse(&http_only, "websocket")?;
                check_path("websocket", &path)?;
                let max_message_bytes = positive(
                    "max_message_bytes",
                    self.max_message_bytes,
                    64 * 1024,
                    MAX_MESSAGE_BYTES,
                )?;
                RouteKind::WebSocket(WebSocketRoute {
                    path,
                    max_connections: positive(
                        "max_connections",
                        self.max_connections,
                        1_000,
                        1_000_000,
                    )?,
                    max_message_bytes,
                    send_buffer: positive("send_buffer", self.send_buffer, 32, MAX_SEND_BUFFER)?,
                    send_timeout: duration(
                        "send_timeout",
                        self.send_timeout.as_deref(),
                        Duration::from_secs(10),
                    )?,
                    idle_timeout: duration(
                        "idle_timeout",
                        self.idle_timeout.as_deref(),
                        Duration::from_secs(60),
                    )
                    .and_then(|idle| {
                        if idle < MIN_IDLE {
                            bail!("`idle_timeout` must be at least {MIN_IDLE:?} (got {idle:?})");
                        }
                        Ok(idle)
                    })?,
                })
            }
            (None, Some(spec)) => {
                refuse(&websocket_only, "http")?;
                let (method, path) = spec.trim().split_once(' ').with_context(|| {
                    format!(
                        "`http` = {spec:?} must be \"METHOD /path\", e.g. \"POST /hooks/build\""
                    )
                })?;
                let method = ROUTABLE
                    .iter()
                    .find(|m| m.as_str() == method)
                    .cloned()
                    .with_context(|| {
                        format!(
                            "`http` = {spec:?}: {method:?} is not a method a route can serve \
                             (one of {})",
                            ROUTABLE
                                .iter()
                                .map(http::Method::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?;
                let path = path.trim().to_string();
                check_path("http", &path)?;
                let secret = match self.secret {
                    None => None,
                    Some(value) => {
                        let secret = ConfigValue::resolve(value, base).context("`secret`")?;
                        match secret.value.as_str() {
                            Some(text) if text.len() >= 16 => {}
                            Some(_) => bail!("`secret` must be at least 16 bytes long"),
                            None => bail!(
                                "`secret` must be a string, {{ env = \"NAME\" }} or \
                                 {{ file = \"PATH\" }}"
                            ),
                        }
                        Some(secret)
                    }
                };
                let signature_header = match self.signature_header {
                    None => "x-hub-signature-256".to_string(),
                    Some(name) => http::HeaderName::try_from(name.as_str())
                        .map(|h| h.as_str().to_string())
                        .with_context(|| {
                            format!("`signature_header` {name:?} is not a header name")
                        })?,
                };
                if secret.is_none() && signature_header != "x-hub-signature-256" {
                    bail!("`signature_header` needs a `secret` to check the signature against");
                }
                let respond = self.respond.unwrap_or(Respond::Accepted);
                let durable = self.durable.unwrap_or(false);
                if durable && respond == Respond::Result {
                    bail!(
                        "`durable = true` needs `respond = \"accepted\"`: a durable task may \
                         run again after a crash, long after its request was answered"
                    );
                }
                RouteKind::Http(HttpRoute {
                    method,
                    path,
                    respond,
                    timeout: duration("timeout", self.timeout.as_deref(), Duration::from_secs(30))?,
                    max_body_bytes: positive(
                        "max_body_bytes",
                        self.max_body_bytes,
                        1 << 20,
                        MAX_BODY_BYTES,
                    )?,
                    secret,
                    signature_header,
                    durable,
                    queue: self.queue,
                })
            }
            (Some(_), Some(_)) => {
                bail!("has both `websocket` and `http`; a route is one or the other")
            }
            (None, None) => bail!(
                "needs `websocket = \"/path\"` or `http = \"METHOD /path\"` to say what it serves"
            ),
        };
        Ok(RouteConfig {
            index,
            plugin: self.plugin,
            factory: self.factory,
            args,
            headers,
            kind,
        })
    }
}

/// Two routes may not serve the same method and path (a websocket route is
/// a GET).
pub(super) fn check_unique(routes: &[RouteConfig]) -> Result<()> {
    for (i, route) in routes.iter().enumerate() {
        let method = |r: &RouteConfig| match &r.kind {
            RouteKind::WebSocket(_) => http::Method::GET,
            RouteKind::Http(h) => h.method.clone(),
        };
        if let Some(other) = routes[..i]
            .iter()
            .find(|o| o.path() == route.path() && method(o) == method(route))
        {
            bail!(
                "routes[{}] ({}) serves what routes[{}] ({}) already does",
                route.index,
                route.label(),
                other.index,
                other.label()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::AppConfig;
    use std::path::Path;

    /// An app.toml with one plugin (its file exists) and `rest`.
    fn parse(rest: &str) -> anyhow::Result<AppConfig> {
        let wasm = std::env::temp_dir().join("taskhost-routes-test.wasm");
        std::fs::write(&wasm, b"").unwrap();
        let text = format!(
            "name = \"x\"\n[plugins.p]\npath = {:?}\n{rest}",
            wasm.display().to_string()
        );
        AppConfig::parse(&text, Path::new("app.toml"), Path::new("/nonexistent"))
    }

    fn error(rest: &str) -> String {
        format!("{:#}", parse(rest).unwrap_err())
    }

    #[test]
    fn routes_are_off_by_default_and_listen_defaults_to_loopback_8080() {
        let config = parse("").unwrap();
        assert!(config.listen.is_none() && config.routes.is_empty());
        let config =
            parse("[[routes]]\nwebsocket = \"/feed\"\nplugin = \"p\"\nfactory = \"f\"\n").unwrap();
        let listen = config.listen.unwrap();
        assert_eq!(listen.address.to_string(), super::DEFAULT_LISTEN);
        assert_eq!(config.routes[0].label(), "websocket /feed");
    }

    #[test]
    fn bad_routes_are_refused_naming_the_route_and_field() {
        let cases = [
            (
                "[listen]\naddress = \"127.0.0.1:1\"\n",
                "[listen] is set but there are no [[routes]]",
            ),
            (
                "[[routes]]\nplugin = \"p\"\nfactory = \"f\"\n",
                "routes[0]: needs `websocket = \"/path\"` or `http = \"METHOD /path\"`",
            ),
            (
                "[[routes]]\nhttp = \"/hooks\"\nplugin = \"p\"\nfactory = \"f\"\n",
                "must be \"METHOD /path\"",
            ),
            (
                "[[routes]]\nwebsocket = \"feed\"\nplugin = \"p\"\nfactory = \"f\"\n",
                "path \"feed\" must start with `/`",
            ),
            (
                "[[routes]]\nwebsocket = \"/f\"\nplugin = \"p\"\nfactory = \"f\"\nrespond = \"result\"\n",
                "`respond` is not a setting of a websocket route",
            ),
            (
                "[[routes]]\nhttp = \"POST /h\"\nplugin = \"p\"\nfactory = \"f\"\nsecret = \"short\"\n",
                "`secret` must be at least 16 bytes long",
            ),
            (
                "[[routes]]\nhttp = \"POST /h\"\nplugin = \"p\"\nfactory = \"f\"\nrespond = \"result\"\ndurable = true\n",
                "`durable = true` needs `respond = \"accepted\"`",
            ),
            (
                "[[routes]]\nwebsocket = \"/f\"\nplugin = \"q\"\nfactory = \"f\"\n",
                "routes[0] (websocket /f): no plugin named `q`",
            ),
            (
                "[[routes]]\nwebsocket = \"/f\"\nplugin = \"p\"\nfactory = \"f\"\nsend_buffer = 0\n",
                "`send_buffer` must be between 1 and",
            ),
            (
                "[[routes]]\nwebsocket = \"/f\"\nplugin = \"p\"\nfactory = \"f\"\n\
                 [[routes]]\nhttp = \"GET /f\"\nplugin = \"p\"\nfactory = \"g\"\n",
                "routes[1] (GET /f) serves what routes[0] (websocket /f) already does",
            ),
            (
                "[[routes]]\nwebsocket = \"/f\"\nplugin = \"p\"\nfactory = \"f\"\nargs = { request = 1 }\n",
                "`args` must not have a `request` key",
            ),
        ];
        for (rest, expected) in cases {
            let message = error(rest);
            assert!(message.starts_with("app.toml: "), "{message}");
            assert!(message.contains(expected), "{rest}\n=> {message}");
        }
    }

    #[test]
    fn a_route_secret_may_come_from_the_environment() {
        let config = parse(
            "[[routes]]\nhttp = \"POST /h\"\nplugin = \"p\"\nfactory = \"f\"\n\
             secret = { env = \"PATH\" }\n",
        );
        // PATH is set and long enough on any machine the tests run on.
        let config = config.unwrap();
        let super::RouteKind::Http(route) = &config.routes[0].kind else {
            panic!("an http route");
        };
        assert_eq!(
            route.secret_bytes(),
            Some(std::env::var("PATH").unwrap().as_bytes())
        );
        // Debug never shows it.
        assert!(!format!("{route:?}").contains(&std::env::var("PATH").unwrap()));
    }
}
