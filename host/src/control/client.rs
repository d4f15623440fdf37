//! The CLI's side of the control API: finds the host through its state
//! file and makes authenticated requests.

use super::ControlState;
use anyhow::Result;
use serde_json::Value;
use std::path::Path;

/// Why a request did not succeed; the CLI maps each to its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No host could be reached (no state file, or nothing listening).
    #[error("{0}")]
    Unreachable(String),
    /// The host answered 404.
    #[error("{0}")]
    NotFound(String),
    /// The host refused the request (any other 4xx/5xx).
    #[error("{0}")]
    Refused(String),
}

/// A connection to one running host.
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// Reads the state file a running host wrote.
    pub fn from_state_file(path: &Path) -> Result<Client, ClientError> {
        let state =
            ControlState::read(path).map_err(|e| ClientError::Unreachable(format!("{e:#}")))?;
        Ok(Client {
            base: format!("http://{}", state.address),
            token: state.token,
            agent: ureq::AgentBuilder::new().build(),
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(self.agent.get(&self.url(path)), None)
    }

    /// GETs a text resource (`/metrics`).
    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        self.agent
            .get(&self.url(path))
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(|e| match e {
                ureq::Error::Status(404, _) => ClientError::NotFound(format!("{path} not found")),
                ureq::Error::Status(status, _) => ClientError::Refused(format!("HTTP {status}")),
                other => ClientError::Unreachable(format!(
                    "cannot reach the host at {}: {other}",
                    self.base
                )),
            })?
            .into_string()
            .map_err(|e| ClientError::Refused(format!("unreadable answer: {e}")))
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(self.agent.post(&self.url(path)), Some(body))
    }

    pub fn put(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(self.agent.put(&self.url(path)), Some(body))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send(&self, request: ureq::Request, body: Option<&Value>) -> Result<Value, ClientError> {
        let request = request.set("Authorization", &format!("Bearer {}", self.token));
        let response = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match response {
            Ok(response) => response.into_json().map_err(|e| {
                ClientError::Refused(format!("the host sent an unreadable answer: {e}"))
            }),
            Err(ureq::Error::Status(status, response)) => {
                let body: Value = response.into_json().unwrap_or(Value::Null);
                let message = body["error"]["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("HTTP {status}"));
                if status == 404 {
                    Err(ClientError::NotFound(message))
                } else {
                    Err(ClientError::Refused(message))
                }
            }
            Err(error) => Err(ClientError::Unreachable(format!(
                "cannot reach the host at {}: {error}",
                self.base
            ))),
        }
    }

    /// Follows the lifecycle stream, calling `each` with every event until
    /// the host closes it (or `each` returns false).
    pub fn follow(&self, mut each: impl FnMut(Value) -> bool) -> Result<(), ClientError> {
        use std::io::BufRead;
        let response = self
            .agent
            .get(&self.url("/v1/stream"))
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(|e| {
                ClientError::Unreachable(format!("cannot follow the host's events: {e}"))
            })?;
        let reader = std::io::BufReader::new(response.into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data:")
                && let Ok(event) = serde_json::from_str(data.trim())
                && !each(event)
            {
                break;
            }
        }
        Ok(())
    }
}
