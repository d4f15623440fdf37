//! `taskhost:db/postgres`: tokio-postgres over a connection the host made
//! for the task (see the module above).
//!
//! Parameters are sent in Postgres's text form ([`Param`]), so a value
//! fits any column type the server can parse it as; columns come back in
//! the binary form and are converted by type ([`Cell`]).

use super::{DbState, Link, Raced, race};
use crate::bindings::taskhost::db::postgres::{
    Column, Connection, Host, HostConnection, RowSet, Value,
};
use crate::bindings::taskhost::db::types::Error;
use crate::telemetry::CallSpan;
use bytes::{BufMut, BytesMut};
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::types::{Format, FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use wasmtime::component::Resource;

/// How long a cancel request (sent when the task is cancelled during a
/// call) may take before the host gives up on it.
const CANCEL_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a guest's `connection` handle stands for.
struct PgConnection {
    client: Client,
    link: Link,
}

type DbResult<T> = wasmtime::Result<Result<T, Error>>;

fn handle(connection: &Resource<Connection>) -> Resource<PgConnection> {
    Resource::new_borrow(connection.rep())
}

impl Host for DbState {}

impl HostConnection for DbState {
    async fn open(&mut self, url: String) -> DbResult<Resource<Connection>> {
        let config = match tokio_postgres::Config::from_str(&url) {
            Ok(config) => config,
            Err(error) => {
                return Ok(Err(Error::BadUrl(format!(
                    "not a Postgres URL ({error}); write \
                     postgres://USER:PASSWORD@HOST:PORT/DATABASE"
                ))));
            }
        };
        let host = match config.get_hosts() {
            [tokio_postgres::config::Host::Tcp(host)] => host.clone(),
            [] => {
                return Ok(Err(Error::BadUrl(
                    "the Postgres URL names no host; write postgres://USER:PASSWORD@HOST:PORT/DATABASE"
                        .into(),
                )));
            }
            [_] => {
                return Ok(Err(Error::BadUrl(
                    "a Unix socket is not reachable from a task: name a TCP HOST:PORT the \
                     plugin's tcp grant lists"
                        .into(),
                )));
            }
            _ => {
                return Ok(Err(Error::BadUrl(
                    "the Postgres URL names several hosts: name one".into(),
                )));
            }
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let connected = match self.connect("Postgres", &host, port).await {
            Ok(connected) => connected,
            Err(error) => return Ok(Err(error)),
        };
        let sockets = connected.link.sockets.clone();
        let mut link = connected.link;
        let handshake = race(&sockets, config.connect_raw(connected.stream, NoTls)).await;
        let (client, driver) = match handshake {
            Raced::Done(Ok(pair)) => pair,
            Raced::Done(Err(error)) => {
                return Ok(Err(Error::ConnectionFailed(format!(
                    "Postgres at {host}:{port}: {}",
                    describe(&error)
                ))));
            }
            Raced::Cancelled => return Ok(Err(link.cancelled())),
        };
        link.drive(async move {
            let _ = driver.await;
        });
        let handle = self.table.push(PgConnection { client, link })?;
        Ok(Ok(Resource::new_own(handle.rep())))
    }

    async fn query(
        &mut self,
        connection: Resource<Connection>,
        statement: String,
        params: Vec<Value>,
    ) -> DbResult<RowSet> {
        let span = self.span("postgresql", "query", Some(&statement));
        let connection = self.table.get_mut(&handle(&connection))?;
        if let Err(error) = connection.link.begin() {
            return Ok(Err(error));
        }
        let sockets = connection.link.sockets.clone();
        let ran = race(&sockets, query(&connection.client, &statement, params)).await;
        let answer = connection.finish(ran);
        CallSpan::end_with(span, &answer);
        Ok(answer)
    }

    async fn execute(
        &mut self,
        connection: Resource<Connection>,
        statement: String,
        params: Vec<Value>,
    ) -> DbResult<u64> {
        let span = self.span("postgresql", "execute", Some(&statement));
        let connection = self.table.get_mut(&handle(&connection))?;
        if let Err(error) = connection.link.begin() {
            return Ok(Err(error));
        }
        let sockets = connection.link.sockets.clone();
        let ran = race(&sockets, execute(&connection.client, &statement, params)).await;
        let answer = connection.finish(ran);
        CallSpan::end_with(span, &answer);
        Ok(answer)
    }

    async fn drop(&mut self, connection: Resource<Connection>) -> wasmtime::Result<()> {
        self.table
            .delete(Resource::<PgConnection>::new_own(connection.rep()))?;
        Ok(())
    }
}

/// How a call on a connection failed.
enum Failure {
    /// The server answered with an error; the connection stays usable.
    Server(Error),
    /// The connection itself failed (lost, or over the answer's limit).
    Lost(String),
}

impl PgConnection {
    /// A call's answer, closing the connection if the call broke it or
    /// the task's cancel ended it (then the server is asked to cancel
    /// the statement too).
    fn finish<T>(&mut self, ran: Raced<Result<T, Failure>>) -> Result<T, Error> {
        match ran {
            Raced::Done(Ok(answer)) => Ok(answer),
            Raced::Done(Err(Failure::Server(error))) => Err(error),
            Raced::Done(Err(Failure::Lost(message))) => Err(self.link.lost(message)),
            Raced::Cancelled => {
                self.cancel_on_server();
                Err(self.link.cancelled())
            }
        }
    }

    /// Asks the server to cancel what the connection runs (a query the
    /// task no longer waits for would otherwise run on), over a socket of
    /// its own, counted like the others while it lasts.
    fn cancel_on_server(&self) {
        let Some(peer) = self.link.peer else { return };
        let Ok(claim) = self.link.sockets.claim() else {
            return;
        };
        let token = self.client.cancel_token();
        tokio::spawn(async move {
            let _claim = claim;
            let request = async {
                let stream = tokio::net::TcpStream::connect(peer).await.ok()?;
                token.cancel_query_raw(stream, NoTls).await.ok()
            };
            let _ = tokio::time::timeout(CANCEL_REQUEST_TIMEOUT, request).await;
        });
    }
}

/// A tokio-postgres error as one line: the server's message with its
/// code, detail and hint, or the client's.
fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut line = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            let _ = write!(line, " (detail: {detail})");
        }
        if let Some(hint) = db.hint() {
            let _ = write!(line, " (hint: {hint})");
        }
        return line;
    }
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(line, ": {cause}");
        source = cause.source();
    }
    line
}

/// Whether `error` broke the connection rather than the statement.
fn failure(error: tokio_postgres::Error) -> Failure {
    if error.as_db_error().is_some() {
        Failure::Server(Error::QueryFailed(describe(&error)))
    } else if error.is_closed()
        || error
            .source()
            .is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some())
    {
        Failure::Lost(describe(&error))
    } else {
        Failure::Server(Error::QueryFailed(describe(&error)))
    }
}

async fn query(client: &Client, statement: &str, params: Vec<Value>) -> Result<RowSet, Failure> {
    let prepared = client.prepare(statement).await.map_err(failure)?;
    let params = bind(prepared.params().len(), params)?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
    let rows = client.query(&prepared, &refs).await.map_err(failure)?;
    let columns: Vec<Column> = prepared
        .columns()
        .iter()
        .map(|column| Column {
            name: column.name().to_string(),
            type_name: column.type_().name().to_string(),
        })
        .collect();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut values = Vec::with_capacity(columns.len());
        for (index, column) in columns.iter().enumerate() {
            let cell: Cell = row.try_get(index).map_err(|error| {
                let why = error
                    .source()
                    .map_or_else(|| error.to_string(), |s| s.to_string());
                Failure::Server(Error::ConversionFailed(format!(
                    "column `{}`: {why}",
                    column.name
                )))
            })?;
            values.push(cell.0);
        }
        out.push(values);
    }
    Ok(RowSet { columns, rows: out })
}

async fn execute(client: &Client, statement: &str, params: Vec<Value>) -> Result<u64, Failure> {
    if params.is_empty() {
        // No parameters: sent as a simple query, which may hold several
        // statements (a schema script); the counts add up.
        let messages = client.simple_query(statement).await.map_err(failure)?;
        return Ok(messages
            .iter()
            .map(|message| match message {
                SimpleQueryMessage::CommandComplete(rows) => *rows,
                _ => 0,
            })
            .sum());
    }
    let prepared = client.prepare(statement).await.map_err(failure)?;
    let params = bind(prepared.params().len(), params)?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
    client.execute(&prepared, &refs).await.map_err(failure)
}

/// The guest's parameters, checked against what the statement takes.
fn bind(wanted: usize, params: Vec<Value>) -> Result<Vec<Param>, Failure> {
    if params.len() != wanted {
        return Err(Failure::Server(Error::ConversionFailed(format!(
            "the statement takes {wanted} parameter(s) ($1...), {} given",
            params.len()
        ))));
    }
    Ok(params.into_iter().map(Param).collect())
}

/// A parameter, sent in Postgres's text form: the server parses it as the
/// type the statement gives its place.
#[derive(Debug)]
struct Param(Value);

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.0 {
            Value::Null => return Ok(IsNull::Yes),
            Value::Boolean(b) => out.put_slice(if *b { b"t" } else { b"f" }),
            Value::Int64(n) => out.put_slice(n.to_string().as_bytes()),
            Value::Float64(f) => {
                let text = if f.is_nan() {
                    "NaN".to_string()
                } else if f.is_infinite() {
                    if *f > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
                } else {
                    f.to_string()
                };
                out.put_slice(text.as_bytes());
            }
            Value::Text(text) => out.put_slice(text.as_bytes()),
            Value::Binary(bytes) => {
                if *ty != Type::BYTEA {
                    return Err(format!(
                        "binary given for a parameter of type {}; binary is for bytea",
                        ty.name()
                    )
                    .into());
                }
                out.put_slice(b"\\x");
                for byte in bytes {
                    let _ = write!(Hex(out), "{byte:02x}");
                }
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// Writes formatted text into a `BytesMut`.
struct Hex<'a>(&'a mut BytesMut);

impl std::fmt::Write for Hex<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

/// A column's value, converted from its binary form by type.
struct Cell(Value);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Cell, Box<dyn StdError + Sync + Send>> {
        convert(ty, raw).map(Cell)
    }

    fn from_sql_null(_: &Type) -> Result<Cell, Box<dyn StdError + Sync + Send>> {
        Ok(Cell(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn text(raw: &[u8]) -> Result<Value, Box<dyn StdError + Sync + Send>> {
    Ok(Value::Text(std::str::from_utf8(raw)?.to_string()))
}

fn convert(ty: &Type, raw: &[u8]) -> Result<Value, Box<dyn StdError + Sync + Send>> {
    Ok(match *ty {
        Type::BOOL => Value::Boolean(bool::from_sql(ty, raw)?),
        Type::INT2 => Value::Int64(i16::from_sql(ty, raw)?.into()),
        Type::INT4 => Value::Int64(i32::from_sql(ty, raw)?.into()),
        Type::INT8 => Value::Int64(i64::from_sql(ty, raw)?),
        Type::OID => Value::Int64(u32::from_sql(ty, raw)?.into()),
        Type::FLOAT4 => Value::Float64(f32::from_sql(ty, raw)?.into()),
        Type::FLOAT8 => Value::Float64(f64::from_sql(ty, raw)?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            text(raw)?
        }
        // jsonb's binary form is a version byte, then the text.
        Type::JSONB => match raw.split_first() {
            Some((1, rest)) => text(rest)?,
            _ => return Err("a jsonb value of an unknown version".into()),
        },
        Type::BYTEA => Value::Binary(raw.to_vec()),
        Type::NUMERIC => Value::Text(numeric_text(raw)?),
        Type::UUID => {
            let bytes: [u8; 16] = raw.try_into().map_err(|_| "a uuid not 16 bytes long")?;
            let mut out = String::with_capacity(36);
            for (i, byte) in bytes.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push('-');
                }
                let _ = write!(out, "{byte:02x}");
            }
            Value::Text(out)
        }
        Type::DATE => Value::Text(chrono::NaiveDate::from_sql(ty, raw)?.to_string()),
        Type::TIME => Value::Text(chrono::NaiveTime::from_sql(ty, raw)?.to_string()),
        Type::TIMESTAMP => Value::Text(
            chrono::NaiveDateTime::from_sql(ty, raw)?
                .format("%Y-%m-%dT%H:%M:%S%.f")
                .to_string(),
        ),
        Type::TIMESTAMPTZ => Value::Text(
            chrono::DateTime::<chrono::Utc>::from_sql(ty, raw)?
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        ),
        _ => match ty.kind() {
            // An enum's value is its label; a domain's, its base type's.
            Kind::Enum(_) => text(raw)?,
            Kind::Domain(base) => convert(base, raw)?,
            _ if ty.name() == "citext" => text(raw)?,
            _ => {
                return Err(format!(
                    "type {} is not converted; cast it in the statement (`::text`, or a \
                     number type)",
                    ty.name()
                )
                .into());
            }
        },
    })
}

/// A `numeric` in its binary form (digits in base 10,000) as the exact
/// decimal text Postgres itself would print.
fn numeric_text(raw: &[u8]) -> Result<String, Box<dyn StdError + Sync + Send>> {
    let word = |at: usize| -> Result<u16, Box<dyn StdError + Sync + Send>> {
        raw.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a numeric value cut short".into())
    };
    let count = usize::from(word(0)?);
    let weight = word(2)? as i16;
    let sign = word(4)?;
    let scale = usize::from(word(6)?);
    let digits = (0..count)
        .map(|i| word(8 + 2 * i))
        .collect::<Result<Vec<u16>, _>>()?;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => return Err("a numeric value with an unknown sign".into()),
    }
    // digits[k] counts 10,000^(weight - k).
    let digit = |k: i32| -> u16 {
        usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k))
            .copied()
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for k in 0..=i32::from(weight) {
            if k == 0 {
                let _ = write!(out, "{}", digit(k));
            } else {
                let _ = write!(out, "{:04}", digit(k));
            }
        }
    }
    if scale > 0 {
        let mut fraction = String::with_capacity(scale + 4);
        let mut k = i32::from(weight) + 1;
        while fraction.len() < scale {
            let _ = write!(fraction, "{:04}", digit(k));
            k += 1;
        }
        fraction.truncate(scale);
        out.push('.');
        out.push_str(&fraction);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::numeric_text;

    fn numeric(weight: i16, negative: bool, scale: u16, digits: &[u16]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend((digits.len() as u16).to_be_bytes());
        raw.extend(weight.to_be_bytes());
        raw.extend(if negative { 0x4000u16 } else { 0 }.to_be_bytes());
        raw.extend(scale.to_be_bytes());
        for d in digits {
            raw.extend(d.to_be_bytes());
        }
        raw
    }

    #[test]
    fn numerics_print_as_postgres_prints_them() {
        // 12345678.9 = 1234|5678.9000
        assert_eq!(
            numeric_text(&numeric(1, false, 1, &[1234, 5678, 9000])).unwrap(),
            "12345678.9"
        );
        assert_eq!(
            numeric_text(&numeric(0, true, 2, &[42, 5000])).unwrap(),
            "-42.50"
        );
        // 0.0001234 = 0.|0001|2340
        assert_eq!(
            numeric_text(&numeric(-1, false, 7, &[1, 2340])).unwrap(),
            "0.0001234"
        );
        // 0.00000001 = 0.|0000|0001
        assert_eq!(
            numeric_text(&numeric(-2, false, 8, &[1])).unwrap(),
            "0.00000001"
        );
        assert_eq!(numeric_text(&numeric(0, false, 0, &[])).unwrap(), "0");
        // 10000 = 1|0000, trailing zero groups not stored
        assert_eq!(numeric_text(&numeric(1, false, 0, &[1])).unwrap(), "10000");
        assert_eq!(numeric_text(&numeric(0, false, 3, &[7])).unwrap(), "7.000");
        assert!(numeric_text(&[0, 1]).is_err());
    }
}
