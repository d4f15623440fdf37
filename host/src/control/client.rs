//! The CLI's side of the control API: finds the host through its state
//! file and makes authenticated requests, over TCP or a Unix socket.

use super::routes::{self, Route};
use super::{ControlAddress, ControlState};
use crate::lifecycle::LifecycleEvent;
use crate::operations::{ErrorKind, OpError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

/// Why a request did not succeed; the CLI maps each to its exit code
/// (4 for an unreachable host, else [`ErrorKind::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No host could be reached (no state file, or nothing listening).
    #[error("{0}")]
    Unreachable(String),
    /// The host answered with an error, or the request could not be made.
    #[error(transparent)]
    Failed(#[from] OpError),
}

impl ClientError {
    /// What a verb named does not exist.
    pub fn not_found(message: impl Into<String>) -> ClientError {
        ClientError::Failed(OpError::new(ErrorKind::NotFound, message))
    }

    /// The request was refused, here or by the host.
    pub fn refused(message: impl Into<String>) -> ClientError {
        ClientError::Failed(OpError::new(ErrorKind::Refused, message))
    }
}

/// A connection recipe for one running host.
pub struct Client {
    address: ControlAddress,
    token: String,
}

type Response = hyper::Response<hyper::body::Incoming>;

impl Client {
    /// Reads the state file a running host wrote.
    pub fn from_state_file(path: &Path) -> Result<Client, ClientError> {
        let state =
            ControlState::read(path).map_err(|e| ClientError::Unreachable(format!("{e:#}")))?;
        Client::from_state(&state)
            .map_err(|e| ClientError::Unreachable(format!("{}: {e}", path.display())))
    }

    /// The host a state file describes.
    pub fn from_state(state: &ControlState) -> Result<Client, ClientError> {
        let address = state
            .address
            .parse()
            .map_err(|e| ClientError::Unreachable(format!("bad address: {e}")))?;
        Ok(Client {
            address,
            token: state.token.clone(),
        })
    }

    /// Calls `route` with its path's `params` and `request` (its query for
    /// a GET or DELETE, else its JSON body), and decodes the answer.
    pub async fn call<Request: Serialize, Answer: DeserializeOwned>(
        &self,
        route: &Route<Request, Answer>,
        params: &[&str],
        request: &Request,
    ) -> Result<Answer, ClientError> {
        let (path, body) = route
            .request(params, request)
            .map_err(ClientError::refused)?;
        let method = match route.method {
            routes::Method::Get => Method::GET,
            routes::Method::Post => Method::POST,
            routes::Method::Put => Method::PUT,
            routes::Method::Delete => Method::DELETE,
        };
        self.json(method, &path, body).await
    }

    /// GETs a text resource (`/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let response = self.send(Method::GET, path, None).await?;
        let bytes = checked(response).await?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| ClientError::refused("the host sent text that is not UTF-8"))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<T, ClientError> {
        let response = self.send(method, path, body).await?;
        let bytes = checked(response).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::refused(format!("the host sent an unreadable answer: {e}")))
    }

    /// One request on a fresh connection (the CLI makes one or two).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Response, ClientError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ClientError::Unreachable(format!("cannot reach the host at {}: {e}", self.address))
        };
        let body = body.unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "taskhost")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::refused(format!("cannot build the request: {e}")))?;
        macro_rules! over {
            ($stream:expr) => {{
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new($stream))
                        .await
                        .map_err(|e| unreachable(&e))?;
                tokio::spawn(connection);
                sender
                    .send_request(request)
                    .await
                    .map_err(|e| unreachable(&e))
            }};
        }
        match &self.address {
            ControlAddress::Tcp(addr) => {
                over!(
                    tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(|e| unreachable(&e))?
                )
            }
            #[cfg(unix)]
            ControlAddress::Unix(path) => {
                over!(
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|e| unreachable(&e))?
                )
            }
            #[cfg(not(unix))]
            ControlAddress::Unix(_) => Err(unreachable(&"Unix sockets need a Unix system")),
        }
    }

    /// Follows the lifecycle stream, calling `each` with every event until
    /// the host closes it (or `each` returns false). Items this client
    /// cannot decode (from a newer host) are skipped.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes the stream; no event is half-handled, but
    /// those the host sent meanwhile are lost to this follower.
    pub async fn follow(
        &self,
        mut each: impl FnMut(LifecycleEvent) -> bool,
    ) -> Result<(), ClientError> {
        let mut body = self
            .send(Method::GET, "/v1/stream", None)
            .await?
            .into_body();
        let mut pending = String::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            let Some(chunk) = frame.data_ref() else {
                continue;
            };
            pending.push_str(&String::from_utf8_lossy(chunk));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                if let Some(data) = line.trim_end().strip_prefix("data:")
                    && let Ok(event) = serde_json::from_str(data.trim())
                    && !each(event)
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// The body of a successful answer, or the error the host explained.
async fn checked(response: Response) -> Result<Bytes, ClientError> {
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Unreachable(format!("the host hung up: {e}")))?
        .to_bytes();
    if status.is_success() {
        return Ok(bytes);
    }
    Err(ClientError::Failed(OpError::of_answer(
        status.as_u16(),
        &bytes,
    )))
}
