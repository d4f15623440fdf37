//! `taskhost:db/redis`: redis-rs's multiplexed connection over a
//! connection the host made for the task (see the module above).

use super::{DbState, Link, Raced, race};
use crate::bindings::taskhost::db::redis::{Argument, Connection, Host, HostConnection, Reply};
use crate::bindings::taskhost::db::types::Error;
use crate::telemetry::CallSpan;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, Value};
use wasmtime::component::Resource;

/// Commands that would turn the connection into a subscriber (or a
/// monitor), whose replies never end: not one command, one reply.
const REFUSED: &[&str] = &["SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR"];

/// What a guest's `connection` handle stands for.
struct RedisConnection {
    connection: MultiplexedConnection,
    link: Link,
}

type DbResult<T> = wasmtime::Result<Result<T, Error>>;

impl Host for DbState {}

impl HostConnection for DbState {
    async fn open(&mut self, url: String) -> DbResult<Resource<Connection>> {
        let info = match url.as_str().into_connection_info() {
            Ok(info) => info,
            Err(error) => {
                return Ok(Err(Error::BadUrl(format!(
                    "not a Redis URL ({error}); write redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]"
                ))));
            }
        };
        let (host, port) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            ConnectionAddr::TcpTls { .. } => {
                return Ok(Err(Error::BadUrl(
                    "TLS (rediss://) is not offered: use redis:// to an address the plugin's \
                     tcp grant lists"
                        .into(),
                )));
            }
            _ => {
                return Ok(Err(Error::BadUrl(
                    "a Unix socket is not reachable from a task: name a TCP HOST:PORT the \
                     plugin's tcp grant lists"
                        .into(),
                )));
            }
        };
        let connected = match self.connect("Redis", &host, port).await {
            Ok(connected) => connected,
            Err(error) => return Ok(Err(error)),
        };
        let sockets = connected.link.sockets.clone();
        let mut link = connected.link;
        // No response timeout: a blocking command (BLPOP) may wait as long
        // as its task; the task's cancel and timeout end the wait.
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        let handshake = race(
            &sockets,
            MultiplexedConnection::new_with_config(info.redis_settings(), connected.stream, config),
        )
        .await;
        let (connection, driver) = match handshake {
            Raced::Done(Ok(pair)) => pair,
            Raced::Done(Err(error)) => {
                return Ok(Err(Error::ConnectionFailed(format!(
                    "Redis at {host}:{port}: {error}"
                ))));
            }
            Raced::Cancelled => return Ok(Err(link.cancelled())),
        };
        link.drive(driver);
        let handle = self.table.push(RedisConnection { connection, link })?;
        Ok(Ok(Resource::new_own(handle.rep())))
    }

    async fn execute(
        &mut self,
        connection: Resource<Connection>,
        command: String,
        arguments: Vec<Argument>,
    ) -> DbResult<Vec<Reply>> {
        let name = command.trim().to_ascii_uppercase();
        let span = self.span("redis", &name, None);
        let entry: Resource<RedisConnection> = Resource::new_borrow(connection.rep());
        let entry = self.table.get_mut(&entry)?;
        if let Err(error) = entry.link.begin() {
            return Ok(Err(error));
        }
        if REFUSED.contains(&name.as_str()) {
            return Ok(Err(Error::QueryFailed(format!(
                "{name} is not offered: it turns the connection into a subscriber, whose \
                 replies never end; use a list (LPUSH/BLPOP) or a stream (XADD/XREAD) instead"
            ))));
        }
        let mut cmd = redis::cmd(&command);
        for argument in &arguments {
            match argument {
                Argument::Text(text) => cmd.arg(text.as_str()),
                Argument::Binary(bytes) => cmd.arg(bytes.as_slice()),
                Argument::Int64(n) => cmd.arg(*n),
                Argument::Float64(f) => cmd.arg(*f),
            };
        }
        let sockets = entry.link.sockets.clone();
        let mut redis = entry.connection.clone();
        let ran = race(&sockets, cmd.query_async::<Value>(&mut redis)).await;
        let answer = match ran {
            Raced::Done(Ok(value)) => {
                let mut replies = Vec::new();
                flatten(value, &mut replies).map(|()| replies)
            }
            Raced::Done(Err(error)) => {
                if error.is_io_error()
                    || error.is_connection_dropped()
                    || error.is_unrecoverable_error()
                {
                    Err(entry.link.lost(error.to_string()))
                } else {
                    Err(Error::QueryFailed(error.to_string()))
                }
            }
            Raced::Cancelled => Err(entry.link.cancelled()),
        };
        CallSpan::end_with(span, &answer);
        Ok(answer)
    }

    async fn drop(&mut self, connection: Resource<Connection>) -> wasmtime::Result<()> {
        self.table
            .delete(Resource::<RedisConnection>::new_own(connection.rep()))?;
        Ok(())
    }
}

/// Appends `value` to `out` in prefix order: an array as `array(n)`, then
/// its `n` elements.
fn flatten(value: Value, out: &mut Vec<Reply>) -> Result<(), Error> {
    let array = |out: &mut Vec<Reply>, n: usize| -> Result<(), Error> {
        let n = u32::try_from(n)
            .map_err(|_| Error::ConversionFailed("an array of over 2^32 elements".into()))?;
        out.push(Reply::Array(n));
        Ok(())
    };
    match value {
        Value::Nil => out.push(Reply::Nil),
        Value::Int(n) => out.push(Reply::Int64(n)),
        Value::BulkString(bytes) => out.push(match String::from_utf8(bytes) {
            Ok(text) => Reply::Text(text),
            Err(error) => Reply::Binary(error.into_bytes()),
        }),
        Value::SimpleString(status) => out.push(Reply::Status(status)),
        Value::Okay => out.push(Reply::Status("OK".into())),
        Value::Double(f) => out.push(Reply::Float64(f)),
        Value::Boolean(b) => out.push(Reply::Boolean(b)),
        Value::VerbatimString { text, .. } => out.push(Reply::Text(text)),
        Value::BigNumber(n) => out.push(Reply::Text(format!("{n:?}"))),
        Value::Array(items) | Value::Set(items) => {
            array(out, items.len())?;
            for item in items {
                flatten(item, out)?;
            }
        }
        // A map as an array of its keys and values, in turn.
        Value::Map(pairs) => {
            array(out, pairs.len() * 2)?;
            for (key, value) in pairs {
                flatten(key, out)?;
                flatten(value, out)?;
            }
        }
        Value::Attribute { data, .. } => flatten(*data, out)?,
        Value::ServerError(error) => return Err(Error::QueryFailed(error.to_string())),
        other => {
            return Err(Error::ConversionFailed(format!(
                "a reply taskhost does not convert: {other:?}"
            )));
        }
    }
    Ok(())
}
