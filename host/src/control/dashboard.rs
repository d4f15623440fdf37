//! The dashboard at `/ui`: a page and its script, embedded in the binary
//! (nothing is fetched from anywhere but this host), and the sign-in that
//! lets a browser call the control API.
//!
//! Sign-in takes a token in a POST body (never in a URL) and sets a
//! session cookie: `HttpOnly` (no script reads it), `SameSite=Strict`
//! (no other site's page sends it). The session is a random id the host
//! keeps (at most [`MAX_SESSIONS`], for [`SESSION_TTL`]), not the token.
//! Every call the page makes is a call of the control API (the one the
//! CLI makes), authorized by the session in [`Sessions::authorize`]: a
//! call that changes anything must also carry the session's CSRF value in
//! `X-Taskhost-CSRF` (which another site's page cannot read), and come
//! from this origin if the browser says where it comes from. A session
//! signed in with the read-only token may only read.

use crate::operations::{ErrorKind, OpError};
use crate::private_files::hex;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The session cookie's name.
const COOKIE: &str = "taskhost_ui";

/// The header a session's changing calls carry its CSRF value in.
pub(super) const CSRF_HEADER: &str = "x-taskhost-csrf";

/// Sessions kept at once; signing in past it drops the oldest.
const MAX_SESSIONS: usize = 256;

/// How long a session lasts from its sign-in.
const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// What a token or a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Access {
    /// Everything: the token the CLI uses.
    Full,
    /// Reading only: GET requests (and the event stream).
    ReadOnly,
}

impl Access {
    /// Refuses a request that `self` may not make.
    pub(super) fn allows(self, method: &Method) -> Result<(), OpError> {
        let reads = matches!(*method, Method::GET | Method::HEAD);
        if self == Access::ReadOnly && !reads {
            return Err(OpError::new(
                ErrorKind::Forbidden,
                "the read-only token may only read: sign in with the control token to steer",
            ));
        }
        Ok(())
    }
}

struct Session {
    access: Access,
    csrf: String,
    since: Instant,
}

/// The dashboard's signed-in sessions.
#[derive(Default)]
pub(super) struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes, hex: a session id or a CSRF value.
fn random() -> Result<String, OpError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| OpError::new(ErrorKind::Internal, format!("no randomness: {e}")))?;
    Ok(hex(&bytes))
}

/// The session cookie's value in `headers`, if any.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Whether the browser says the request comes from a page of this host:
/// an `Origin` header, when there is one, must name the `Host` it went to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = origin.to_str().ok();
    matches!((origin, host), (Some(origin), Some(host))
        if origin.strip_prefix("http://") == Some(host))
}

/// What a signed-in page is told about its session.
#[derive(serde::Serialize)]
pub(super) struct SessionView {
    access: Access,
    /// What the page sends in `X-Taskhost-CSRF` with every change.
    csrf: String,
}

impl Sessions {
    fn by_id(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a session of `access`; returns its view and its cookie.
    pub(super) fn sign_in(&self, access: Access) -> Result<(SessionView, HeaderValue), OpError> {
        let id = random()?;
        let csrf = random()?;
        let mut sessions = self.by_id();
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.since) < SESSION_TTL);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.since)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                access,
                csrf: csrf.clone(),
                since: now,
            },
        );
        let cookie = format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            SESSION_TTL.as_secs()
        );
        let cookie = HeaderValue::from_str(&cookie)
            .map_err(|_| OpError::new(ErrorKind::Internal, "a cookie that is not a header"))?;
        Ok((SessionView { access, csrf }, cookie))
    }

    /// Ends the session `headers` carry, if any; returns the cookie that
    /// clears it in the browser.
    pub(super) fn sign_out(&self, headers: &HeaderMap) -> HeaderValue {
        if let Some(id) = session_id(headers) {
            self.by_id().remove(id);
        }
        HeaderValue::from_static("taskhost_ui=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
    }

    /// The session `headers` carry, as the page sees it.
    pub(super) fn current(&self, headers: &HeaderMap) -> Option<SessionView> {
        let id = session_id(headers)?;
        let sessions = self.by_id();
        let session = sessions.get(id)?;
        (session.since.elapsed() < SESSION_TTL).then(|| SessionView {
            access: session.access,
            csrf: session.csrf.clone(),
        })
    }

    /// What the session in `headers` may do for a `method` request: none
    /// if there is no live session; an error if it may not make it.
    pub(super) fn authorize(
        &self,
        headers: &HeaderMap,
        method: &Method,
    ) -> Option<Result<Access, OpError>> {
        let session = self.current(headers)?;
        Some(session.access.allows(method).and_then(|()| {
            if matches!(*method, Method::GET | Method::HEAD) {
                return Ok(session.access);
            }
            let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            let matches = csrf.is_some_and(|csrf| same(csrf.as_bytes(), session.csrf.as_bytes()));
            if !matches || !same_origin(headers) {
                return Err(OpError::new(
                    ErrorKind::Forbidden,
                    "a dashboard change needs the session's X-Taskhost-CSRF header and this \
                     host's origin",
                ));
            }
            Ok(session.access)
        }))
    }
}

/// Compares secrets (tokens, CSRF values) without stopping at the first
/// difference.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Content-Security-Policy of every dashboard response: this host's own
/// script, style and API only, and no framing.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self' data:; form-action 'self'; \
                      frame-ancestors 'none'; base-uri 'none'";

/// One embedded file of the dashboard, with its headers.
pub(super) fn asset(path: &str) -> Response {
    let (body, kind): (&'static str, &'static str) = match path {
        "" | "index.html" => (include_str!("ui/index.html"), "text/html; charset=utf-8"),
        "app.js" => (include_str!("ui/app.js"), "text/javascript; charset=utf-8"),
        "style.css" => (include_str!("ui/style.css"), "text/css; charset=utf-8"),
        _ => {
            return OpError::new(ErrorKind::NoRoute, format!("no dashboard file {path:?}"))
                .into_response();
        }
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={id}")).unwrap(),
        );
        headers
    }

    #[test]
    fn a_session_reads_and_changes_only_with_its_csrf_value_and_origin() {
        let sessions = Sessions::default();
        let (view, cookie) = sessions.sign_in(Access::Full).unwrap();
        let cookie = cookie.to_str().unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        let id = cookie
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("taskhost_ui=")
            .unwrap();
        let mut headers = with_cookie(id);
        assert_eq!(
            sessions.authorize(&headers, &Method::GET).unwrap().unwrap(),
            Access::Full
        );
        let refused = sessions
            .authorize(&headers, &Method::POST)
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Forbidden);
        headers.insert(CSRF_HEADER, HeaderValue::from_str(&view.csrf).unwrap());
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:4000"));
        assert!(sessions.authorize(&headers, &Method::POST).unwrap().is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(
            sessions
                .authorize(&headers, &Method::POST)
                .unwrap()
                .is_err()
        );
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:4000"),
        );
        assert!(sessions.authorize(&headers, &Method::POST).unwrap().is_ok());
        // Signed out, the cookie opens nothing.
        sessions.sign_out(&headers);
        assert!(sessions.authorize(&headers, &Method::GET).is_none());
        assert!(
            sessions
                .authorize(&with_cookie("made-up"), &Method::GET)
                .is_none()
        );
    }

    #[test]
    fn a_read_only_session_cannot_change_anything() {
        let sessions = Sessions::default();
        let (view, cookie) = sessions.sign_in(Access::ReadOnly).unwrap();
        let id =
            cookie.to_str().unwrap().split(';').next().unwrap()[COOKIE.len() + 1..].to_string();
        let mut headers = with_cookie(&id);
        headers.insert(CSRF_HEADER, HeaderValue::from_str(&view.csrf).unwrap());
        assert!(sessions.authorize(&headers, &Method::GET).unwrap().is_ok());
        let refused = sessions
            .authorize(&headers, &Method::POST)
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Forbidden);
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::default();
        for _ in 0..MAX_SESSIONS + 10 {
            sessions.sign_in(Access::ReadOnly).unwrap();
        }
        assert_eq!(sessions.by_id().len(), MAX_SESSIONS);
    }
}
