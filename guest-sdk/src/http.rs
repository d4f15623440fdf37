//! Outbound HTTP for tasks, over the standard `wasi:http/outgoing-handler`:
//! `app.http().get(url)?.json()?` in one line. The host allows only the
//! origins app.toml grants the plugin (`[plugins.NAME.grants] http`);
//! anything else fails with an error saying the request was denied.
//!
//! A request of a task being cancelled fails at once; the helper then
//! returns a cancelled [`Error`], so `?` unwinds the task as any other
//! cancelled call does.

use crate::{App, Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wasi::http::outgoing_handler;
use wasi::http::types::{self, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

/// Makes HTTP requests for one task; from [`App::http`].
#[derive(Debug)]
pub struct Http<'a> {
    app: &'a App,
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names (lowercase) and values, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<String> {
        String::from_utf8(self.body.clone())
            .map_err(|_| Error::msg("the response body is not UTF-8"))
    }

    /// The body decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::msg(format!("the response body is not the JSON expected: {e}")))
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl App {
    /// Outbound HTTP, to the origins app.toml grants this plugin.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let response = app.http().get("https://api.example.com/status")?;
    /// app.info(format!("{}: {}", response.status, response.text()?));
    /// # Ok(())
    /// # }
    /// ```
    pub fn http(&self) -> Http<'_> {
        Http { app: self }
    }
}

impl Http<'_> {
    /// `GET url`.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let feed: serde_json::Value = app.http().get("https://api.example.com/feed")?.json()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn get(&self, url: &str) -> Result<Response> {
        self.request("GET", url, &[], None)
    }

    /// `POST url` with `body` as JSON.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let response = app
    ///     .http()
    ///     .post_json("https://api.example.com/events", &serde_json::json!({"seen": 3}))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn post_json(&self, url: &str, body: &impl Serialize) -> Result<Response> {
        let body = serde_json::to_vec(body).map_err(Error::msg)?;
        self.request(
            "POST",
            url,
            &[("content-type", "application/json")],
            Some(&body),
        )
    }

    /// Any request: `method` (`GET`, `POST`, ...), `url`
    /// (`scheme://host[:port]/path?query`), headers and an optional body.
    pub fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response> {
        send(method, url, headers, body).map_err(|failure| {
            // A request of a cancelled task fails with the reason; the
            // cancellation is what the task must see.
            match self.app.sleep(0) {
                Err(cancelled) => cancelled,
                Ok(()) => Error::msg(format!("{method} {url}: {failure}")),
            }
        })
    }
}

fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::result::Result<Response, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("the URL has no scheme (http:// or https://)")?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('?') => (&rest[..at], format!("/{}", &rest[at..])),
        Some(at) => (&rest[..at], rest[at..].to_string()),
        None => (rest, "/".to_string()),
    };
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value.as_bytes())
            .map_err(|e| format!("header {name}: {e:?}"))?;
    }
    let request = OutgoingRequest::new(fields);
    let method = match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "HEAD" => Method::Head,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    };
    request.set_method(&method).map_err(|()| "bad method")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(format!("unsupported scheme {other:?}")),
    };
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| "bad scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|()| "bad host")?;
    request
        .set_path_with_query(Some(&path))
        .map_err(|()| "bad path")?;
    let outgoing = request.body().map_err(|()| "no request body")?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    {
        let stream = outgoing.write().map_err(|()| "no request body stream")?;
        for chunk in body.unwrap_or_default().chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| format!("sending the body failed: {e:?}"))?;
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}"))?;
    let response = loop {
        match pending.get() {
            None => pending.subscribe().block(),
            Some(Err(())) => return Err("the response was taken twice".into()),
            Some(Ok(Err(error))) => return Err(format!("{error:?}")),
            Some(Ok(Ok(response))) => break response,
        }
    };
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let incoming = response.consume().map_err(|()| "no response body")?;
    let stream = incoming.stream().map_err(|()| "no response body stream")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(format!(
                    "reading the response failed: {}{}",
                    error.to_debug_string(),
                    types::http_error_code(&error)
                        .map(|code| format!(" ({code:?})"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    drop(stream);
    drop(incoming);
    Ok(Response {
        status,
        headers,
        body: bytes,
    })
}
