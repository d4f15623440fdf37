//! `[[queues]]`: where submitted tasks wait until their queue lets them
//! start, instead of being refused, and the [`Placement`] a submission asks
//! for in one.
//!
//! A queue bounds how many of its tasks wait (`max_waiting`: past it a
//! submission is refused with `limit`, naming the queue) and decides which
//! waiting task starts next under its flow control: `concurrency` (running
//! at once, across the workers), `per_key` (running at once per key),
//! `rate` and `key_rate` (starts per period, as a cell rate with a burst),
//! priorities with ageing, round-robin between keys, delayed starts and
//! `dedupe`. The queue `default` always exists (no bounds but
//! `max_waiting` unless app.toml lists it); a task goes to a queue only
//! when its submission names one or asks for a key, priority or delay.

use super::MAX_NAME_BYTES;
use anyhow::{Result, bail};
use serde::Deserialize;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// The queue that exists whether app.toml lists it or not.
pub const DEFAULT_QUEUE: &str = "default";

/// `max_waiting` when not given: enough for a burst, bounded because each
/// waiting task holds its arguments and a registry entry.
pub const DEFAULT_MAX_WAITING: u64 = 10_000;

/// The largest `max_waiting` (and `concurrency`) accepted: beyond it a
/// queue is a typo, not a plan.
pub const MAX_QUEUE_BOUND: u64 = 1_000_000;

/// Priorities run from this...
pub const MIN_PRIORITY: i32 = -100;
/// ...to this; higher starts first. A submission without one has 0.
pub const MAX_PRIORITY: i32 = 100;

/// `ageing` when not given: each minute a task waits raises its priority
/// by one, so a priority-0 task waits behind later priority-5 work for at
/// most about five minutes of it.
pub const DEFAULT_AGEING: Duration = Duration::from_secs(60);

/// The longest `delay` (or the farthest `run_at`): a delayed task holds a
/// waiting place, so a far date is a mistake more often than a plan.
pub const MAX_DELAY: Duration = Duration::from_secs(366 * 24 * 3600);

/// `max_dead` when not given: each letter holds a task's arguments (up to
/// `args_bytes`), so the list is bounded like the waiting tasks.
pub const DEFAULT_MAX_DEAD: u64 = 10_000;

/// The longest key, in bytes (a customer id, a tenant, a URL's host).
pub const MAX_KEY_BYTES: usize = 256;

/// One `[[queues]]` entry, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// What submissions name it by (`queue = "emails"`).
    pub name: String,
    /// At most this many of its tasks run at once, across the workers;
    /// none: no bound of the queue's own.
    pub concurrency: Option<u32>,
    /// At most this many of its tasks wait (delayed ones included); a
    /// submission past it is refused with `limit`.
    pub max_waiting: u64,
    /// At most this many of one key's tasks run at once.
    pub per_key: Option<u32>,
    /// Where in a task's arguments its key is (`customer` or
    /// `customer.id`): a submission's own `key` wins over it.
    pub key_arg: Option<Vec<String>>,
    /// The queue's starts per period.
    pub rate: Option<Rate>,
    /// Each key's starts per period.
    pub key_rate: Option<Rate>,
    /// Each `ageing` a task waits raises its priority by one (up to
    /// [`MAX_PRIORITY`]); none: priorities are strict.
    pub ageing: Option<Duration>,
    /// A submission whose key already has a task waiting answers with
    /// that task and starts nothing.
    pub dedupe: bool,
    /// At most this many dead letters kept (the oldest go first).
    pub max_dead: u64,
}

impl QueueConfig {
    /// The queue `name` with no flow control of its own: `default` when
    /// app.toml does not list it.
    pub fn unbounded(name: &str) -> QueueConfig {
        QueueConfig {
            name: name.to_string(),
            concurrency: None,
            max_waiting: DEFAULT_MAX_WAITING,
            per_key: None,
            key_arg: None,
            rate: None,
            key_rate: None,
            ageing: Some(DEFAULT_AGEING),
            dedupe: false,
            max_dead: DEFAULT_MAX_DEAD,
        }
    }

    /// Whether it bounds its tasks' starts (concurrency, per key, rates):
    /// in a cluster, such a queue's tasks take a share of its limits
    /// across the hosts before they run.
    pub fn limits_starts(&self) -> bool {
        self.concurrency.is_some()
            || self.per_key.is_some()
            || self.rate.is_some()
            || self.key_rate.is_some()
    }

    /// Whether every task of it needs a key: its per-key bounds and its
    /// dedupe are by key.
    pub fn needs_key(&self) -> Option<&'static str> {
        if self.per_key.is_some() {
            Some("per_key")
        } else if self.key_rate.is_some() {
            Some("key_rate")
        } else if self.dedupe {
            Some("dedupe")
        } else {
            None
        }
    }
}

/// Starts per period, with a burst: `rate = "10/s"` and `burst = 5` let 5
/// start at once after a quiet spell, then one each 100 ms. Kept as a
/// generic cell rate: a start is allowed when the queue is no more than
/// `burst - 1` intervals ahead of its schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Starts per `per`.
    pub count: u32,
    /// The period.
    pub per: Duration,
    /// Starts allowed at once after a quiet spell (default 1: evenly
    /// spaced).
    pub burst: u32,
}

impl Rate {
    /// The time between two starts at the steady rate.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }

    /// Reads `COUNT/PERIOD`: `"10/s"`, `"600/m"`, `"5/10s"`, `"1/h"`.
    pub fn parse(text: &str, burst: u32) -> Result<Rate, String> {
        let form = "write COUNT/PERIOD, such as \"10/s\", \"600/m\", \"1/h\" or \"5/10s\"";
        let Some((count, per)) = text.split_once('/') else {
            return Err(format!("{text:?} is not a rate: {form}"));
        };
        let count: u32 = match count.trim().parse() {
            Ok(count) if (1..=MAX_QUEUE_BOUND as u32).contains(&count) => count,
            _ => {
                return Err(format!(
                    "{text:?} is not a rate: its count must be a whole number from 1 to \
                     {MAX_QUEUE_BOUND}; {form}"
                ));
            }
        };
        let per = per.trim();
        let period = match per {
            "s" => Ok(Duration::from_secs(1)),
            "m" => Ok(Duration::from_secs(60)),
            "h" => Ok(Duration::from_secs(3600)),
            "d" => Ok(Duration::from_secs(86_400)),
            other => humantime::parse_duration(other),
        };
        let per = match period {
            Ok(per) if per >= Duration::from_millis(1) && per <= Duration::from_secs(86_400) => per,
            _ => {
                return Err(format!(
                    "{text:?} is not a rate: its period must be s, m, h, d or a duration from \
                     1ms to 1d; {form}"
                ));
            }
        };
        if per / count < Duration::from_micros(1) {
            return Err(format!(
                "{text:?} is more than one start per microsecond: no queue starts tasks that fast"
            ));
        }
        Ok(Rate { count, per, burst })
    }
}

impl std::fmt::Display for Rate {
    /// As app.toml writes it (`10/s`, `5/10s`); the burst is apart.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/", self.count)?;
        match self.per.as_secs() {
            1 if self.per.subsec_nanos() == 0 => write!(f, "s"),
            60 if self.per.subsec_nanos() == 0 => write!(f, "m"),
            3600 if self.per.subsec_nanos() == 0 => write!(f, "h"),
            86_400 if self.per.subsec_nanos() == 0 => write!(f, "d"),
            _ => write!(f, "{}", humantime::format_duration(self.per)),
        }
    }
}

/// Where a submitted task waits and how it is ordered there: one field of
/// a [`super::TaskSpec`], made the same way from every surface (app.toml's
/// `[[tasks]]`, the API, the CLI, routes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The queue's name.
    pub queue: String,
    /// The key its per-key bounds, fairness and dedupe go by; none: the
    /// queue's `key_arg` names it, or the task has the empty key.
    pub key: Option<String>,
    /// From [`MIN_PRIORITY`] to [`MAX_PRIORITY`]; higher starts first.
    pub priority: i32,
    /// When it may start; none: as soon as its queue lets it.
    pub start: Option<StartAt>,
}

/// When a delayed task may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// This long after it is submitted (`delay = "10m"`).
    After(Duration),
    /// At this time (`run_at`, RFC 3339).
    At(SystemTime),
}

impl StartAt {
    /// The time it may start, for a task submitted now.
    pub fn resolve(&self) -> SystemTime {
        match self {
            StartAt::After(delay) => SystemTime::now() + *delay,
            StartAt::At(at) => *at,
        }
    }
}

/// A submission's queue options as written: strings as they came, checked
/// by [`QueueOptions::placement`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueOptions<'a> {
    /// `queue`.
    pub queue: Option<&'a str>,
    /// `key`.
    pub key: Option<&'a str>,
    /// `priority`.
    pub priority: Option<i64>,
    /// `delay`, humantime text.
    pub delay: Option<&'a str>,
    /// `run_at`, RFC 3339.
    pub run_at: Option<&'a str>,
}

impl QueueOptions<'_> {
    /// The placement they ask for: none without any of them; `default`
    /// when a key, priority or delay comes without a queue. Errors name
    /// the field and the form it takes.
    pub fn placement(&self) -> Result<Option<Placement>, String> {
        if self.queue.is_none()
            && self.key.is_none()
            && self.priority.is_none()
            && self.delay.is_none()
            && self.run_at.is_none()
        {
            return Ok(None);
        }
        let priority = match self.priority {
            None => 0,
            Some(p) if (i64::from(MIN_PRIORITY)..=i64::from(MAX_PRIORITY)).contains(&p) => p as i32,
            Some(p) => {
                return Err(format!(
                    "`priority` {p} is out of range: from {MIN_PRIORITY} to {MAX_PRIORITY}, \
                     higher starts first"
                ));
            }
        };
        if let Some(key) = self.key {
            check_key(key).map_err(|e| format!("`key`: {e}"))?;
        }
        let start = match (self.delay, self.run_at) {
            (Some(_), Some(_)) => {
                return Err("`delay` and `run_at` both say when to start: give one".into());
            }
            (Some(delay), None) => {
                let delay = humantime::parse_duration(delay).map_err(|_| {
                    format!(
                        "`delay` {delay:?} is not a duration such as \"30s\", \"10m\" or \"2h\""
                    )
                })?;
                if delay > MAX_DELAY {
                    return Err(format!(
                        "`delay` is longer than {}",
                        humantime::format_duration(MAX_DELAY)
                    ));
                }
                Some(StartAt::After(delay))
            }
            (None, Some(at)) => {
                let parsed = chrono::DateTime::parse_from_rfc3339(at).map_err(|_| {
                    format!(
                        "`run_at` {at:?} is not an RFC 3339 time such as \
                         \"2026-12-05T14:30:00Z\" or \"2026-12-05T15:30:00+01:00\""
                    )
                })?;
                let at = SystemTime::from(parsed.with_timezone(&chrono::Utc));
                if at.duration_since(SystemTime::now()).unwrap_or_default() > MAX_DELAY {
                    return Err(format!(
                        "`run_at` is more than {} away",
                        humantime::format_duration(MAX_DELAY)
                    ));
                }
                Some(StartAt::At(at))
            }
            (None, None) => None,
        };
        Ok(Some(Placement {
            queue: self.queue.unwrap_or(DEFAULT_QUEUE).to_string(),
            key: self.key.map(str::to_string),
            priority,
            start,
        }))
    }
}

/// A change of a queue's limits at run time (`taskhost queue set`,
/// `POST /v1/queues/{name}/limits`): each field given replaces the
/// queue's; `0` (or `"off"` for a rate) removes a bound. Changes add up
/// until reset, and are kept across restarts as one such value.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsChange {
    /// At most this many running; 0: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// At most this many waiting (1 or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_waiting: Option<u64>,
    /// At most this many running per key; 0: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_key: Option<u32>,
    /// Starts per period (`"10/s"`); `"off"`: no rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// The rate's burst (1 or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Each key's starts per period; `"off"`: no rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_rate: Option<String>,
    /// The key rate's burst (1 or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_burst: Option<u32>,
}

impl LimitsChange {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == LimitsChange::default()
    }

    /// This change followed by `later`: `later`'s fields win.
    pub fn then(&self, later: &LimitsChange) -> LimitsChange {
        LimitsChange {
            concurrency: later.concurrency.or(self.concurrency),
            max_waiting: later.max_waiting.or(self.max_waiting),
            per_key: later.per_key.or(self.per_key),
            rate: later.rate.clone().or_else(|| self.rate.clone()),
            // A new rate comes with its own burst (or app.toml's), not an
            // older rate's.
            burst: match later.rate {
                Some(_) => later.burst,
                None => later.burst.or(self.burst),
            },
            key_rate: later.key_rate.clone().or_else(|| self.key_rate.clone()),
            key_burst: match later.key_rate {
                Some(_) => later.key_burst,
                None => later.key_burst.or(self.key_burst),
            },
        }
    }

    /// `config` with this change made, or why it cannot be, naming the
    /// field.
    pub fn applied(&self, config: &QueueConfig) -> Result<QueueConfig, String> {
        let mut changed = config.clone();
        let bound = |field: &str, value: u64| -> Result<u64, String> {
            if value > MAX_QUEUE_BOUND {
                return Err(format!(
                    "`{field}` must be at most {MAX_QUEUE_BOUND} (0 removes the bound), got {value}"
                ));
            }
            Ok(value)
        };
        if let Some(n) = self.concurrency {
            changed.concurrency = (bound("concurrency", n.into())? > 0).then_some(n);
        }
        if let Some(n) = self.per_key {
            changed.per_key = (bound("per_key", n.into())? > 0).then_some(n);
        }
        if let Some(n) = self.max_waiting {
            if n == 0 {
                return Err(format!(
                    "`max_waiting` must be from 1 to {MAX_QUEUE_BOUND}, got 0"
                ));
            }
            changed.max_waiting = bound("max_waiting", n)?;
        }
        let rate = |field: &str,
                    text: &Option<String>,
                    burst_field: &str,
                    burst: Option<u32>,
                    current: Option<Rate>|
         -> Result<Option<Rate>, String> {
            if burst == Some(0) || burst.is_some_and(|b| u64::from(b) > MAX_QUEUE_BOUND) {
                return Err(format!(
                    "`{burst_field}` must be from 1 to {MAX_QUEUE_BOUND}"
                ));
            }
            let keep = current.map_or(1, |rate| rate.burst);
            match (text.as_deref(), burst) {
                (Some("off"), _) => Ok(None),
                (Some(text), burst) => Rate::parse(text, burst.unwrap_or(keep))
                    .map(Some)
                    .map_err(|e| format!("`{field}`: {e}")),
                (None, Some(burst)) => match current {
                    Some(rate) => Ok(Some(Rate { burst, ..rate })),
                    None => Err(format!(
                        "`{burst_field}` is the burst of `{field}`, which the queue does not have"
                    )),
                },
                (None, None) => Ok(current),
            }
        };
        if config.key_arg.is_none()
            && config.needs_key().is_none()
            && (self.per_key.is_some_and(|n| n > 0)
                || self.key_rate.as_deref().is_some_and(|rate| rate != "off"))
        {
            return Err(format!(
                "queue `{}` takes tasks without a key (app.toml gives it no `key_arg`, \
                 `per_key`, `key_rate` or `dedupe`): a per-key limit set now would refuse every \
                 submission without a `key`; give the queue a `key_arg` in app.toml first",
                config.name
            ));
        }
        changed.rate = rate("rate", &self.rate, "burst", self.burst, config.rate)?;
        changed.key_rate = rate(
            "key_rate",
            &self.key_rate,
            "key_burst",
            self.key_burst,
            config.key_rate,
        )?;
        Ok(changed)
    }
}

/// Refuses a key that is empty, longer than [`MAX_KEY_BYTES`] or has
/// control characters (it is shown in lists and logs).
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
        return Err(format!(
            "{:?} is not a key: 1 to {MAX_KEY_BYTES} bytes without control characters",
            key.chars().take(40).collect::<String>()
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    name: String,
    concurrency: Option<i64>,
    max_waiting: Option<i64>,
    per_key: Option<i64>,
    key_arg: Option<String>,
    rate: Option<String>,
    burst: Option<i64>,
    key_rate: Option<String>,
    key_burst: Option<i64>,
    ageing: Option<String>,
    #[serde(default)]
    dedupe: bool,
    max_dead: Option<i64>,
}

/// Checks the `[[queues]]` of `file` and adds `default` if it is not
/// among them.
pub(super) fn checked(raw: Vec<RawQueue>, file: &str) -> Result<Vec<QueueConfig>> {
    let mut queues = Vec::new();
    let mut names = HashSet::new();
    for (index, queue) in raw.into_iter().enumerate() {
        let at = format!("{file}: queues[{index}]");
        let name = queue.name;
        if name.is_empty()
            || name.len() > MAX_NAME_BYTES
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            bail!(
                "{at}: `name` {name:?} is not a queue name (1 to {MAX_NAME_BYTES} bytes, no \
                 spaces or control characters)"
            );
        }
        if !names.insert(name.clone()) {
            bail!("{at}: a queue named `{name}` is listed twice");
        }
        let at = format!("{at} (`{name}`)");
        let bound = |field: &str, value: i64| -> Result<u64> {
            match u64::try_from(value) {
                Ok(value) if (1..=MAX_QUEUE_BOUND).contains(&value) => Ok(value),
                _ => bail!("{at}: `{field}` must be from 1 to {MAX_QUEUE_BOUND}, got {value}"),
            }
        };
        let small = |field: &str, value: Option<i64>| -> Result<Option<u32>> {
            value
                .map(|value| bound(field, value).map(|value| value as u32))
                .transpose()
        };
        let concurrency = small("concurrency", queue.concurrency)?;
        let max_waiting = queue
            .max_waiting
            .map(|value| bound("max_waiting", value))
            .transpose()?
            .unwrap_or(DEFAULT_MAX_WAITING);
        let per_key = small("per_key", queue.per_key)?;
        let rate = |field: &str, text: Option<String>, burst_field: &str, burst: Option<i64>| {
            let burst = small(burst_field, burst)?;
            match (text, burst) {
                (None, None) => Ok(None),
                (None, Some(_)) => {
                    bail!("{at}: `{burst_field}` is the burst of `{field}`, which is not set")
                }
                (Some(text), burst) => Rate::parse(&text, burst.unwrap_or(1))
                    .map(Some)
                    .map_err(|e| anyhow::anyhow!("{at}: `{field}`: {e}")),
            }
        };
        let key_rate = rate("key_rate", queue.key_rate, "key_burst", queue.key_burst)?;
        let rate = rate("rate", queue.rate, "burst", queue.burst)?;
        let key_arg = queue
            .key_arg
            .map(|path| {
                let parts: Vec<String> = path.split('.').map(str::to_string).collect();
                if parts.iter().any(|part| part.trim().is_empty()) {
                    bail!(
                        "{at}: `key_arg` {path:?} is not a path into the arguments: name an \
                         object field, such as \"customer\" or \"customer.id\""
                    );
                }
                Ok(parts)
            })
            .transpose()?;
        let ageing = match queue.ageing.as_deref() {
            None => Some(DEFAULT_AGEING),
            Some("off") => None,
            Some(text) => match humantime::parse_duration(text) {
                Ok(every) if every >= Duration::from_millis(1) && every <= MAX_DELAY => Some(every),
                _ => bail!(
                    "{at}: `ageing` {text:?} is not a duration from 1ms to 366 days such as \
                     \"30s\" or \"5m\", nor \"off\" (strict priorities)"
                ),
            },
        };
        let max_dead = queue
            .max_dead
            .map(|value| bound("max_dead", value))
            .transpose()?
            .unwrap_or(DEFAULT_MAX_DEAD);
        let config = QueueConfig {
            max_dead,
            name,
            concurrency,
            max_waiting,
            per_key,
            key_arg,
            rate,
            key_rate,
            ageing,
            dedupe: queue.dedupe,
        };
        queues.push(config);
    }
    if !names.contains(DEFAULT_QUEUE) {
        queues.push(QueueConfig::unbounded(DEFAULT_QUEUE));
    }
    Ok(queues)
}

/// Refuses a reference to a queue `queues` does not have, listing those
/// it has (a `[[tasks]]` entry's or a route's `queue`).
pub(super) fn check_named(queues: &[QueueConfig], queue: &str) -> Result<()> {
    if !queues.iter().any(|q| q.name == queue) {
        let known: Vec<_> = queues.iter().map(|q| q.name.as_str()).collect();
        bail!(
            "no queue named `{queue}` (queues: {}; add a [[queues]] entry to make one)",
            known.join(", ")
        );
    }
    Ok(())
}

/// Refuses a placement its queue would refuse at every submission of a
/// task with `args`: no such queue, or no key where the queue needs one.
pub(super) fn check_placement(
    queues: &[QueueConfig],
    placement: &Placement,
    args: &str,
) -> Result<()> {
    check_named(queues, &placement.queue)?;
    if let Some(queue) = queues.iter().find(|q| q.name == placement.queue) {
        key_of(queue, placement.key.as_deref(), args).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// The key a task of `config` waits under: its submission's `key`, else
/// the value at the queue's `key_arg` in its arguments (a string, or a
/// number or boolean as its text). Errors name the queue and the field.
pub fn key_of(
    config: &QueueConfig,
    key: Option<&str>,
    args: &str,
) -> Result<Option<String>, String> {
    if let Some(key) = key {
        return Ok(Some(key.to_string()));
    }
    let Some(path) = &config.key_arg else {
        return match config.needs_key() {
            Some(field) => Err(format!(
                "queue `{}` goes by key (`{field}`): give the task a `key`, or give the queue \
                 a `key_arg` naming the argument that holds it",
                config.name
            )),
            None => Ok(None),
        };
    };
    let dotted = path.join(".");
    let missing = || {
        format!(
            "queue `{}` takes each task's key from its argument `{dotted}` (`key_arg`), which \
             these arguments do not have: add it, or give a `key`",
            config.name
        )
    };
    let args: serde_json::Value = serde_json::from_str(args).map_err(|_| missing())?;
    let mut value = &args;
    for part in path {
        value = value.get(part).ok_or_else(missing)?;
    }
    let key = match value {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Number(number) => number.to_string(),
        serde_json::Value::Bool(flag) => flag.to_string(),
        _ => {
            return Err(format!(
                "queue `{}`: the argument `{dotted}` (`key_arg`) must be a string, number or \
                 boolean to be a key",
                config.name
            ));
        }
    };
    check_key(&key)
        .map_err(|e| format!("queue `{}`: the argument `{dotted}`: {e}", config.name))?;
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Vec<QueueConfig>> {
        #[derive(Deserialize)]
        struct File {
            queues: Vec<RawQueue>,
        }
        let file: File = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        checked(file.queues, "app.toml")
    }

    #[test]
    fn a_queue_gets_the_default_bound_and_default_is_always_there() {
        let queues = check("[[queues]]\nname = \"emails\"\nconcurrency = 4").unwrap();
        assert_eq!(
            queues,
            vec![
                QueueConfig {
                    concurrency: Some(4),
                    ..QueueConfig::unbounded("emails")
                },
                QueueConfig::unbounded(DEFAULT_QUEUE),
            ]
        );
    }

    #[test]
    fn flow_control_fields_are_read() {
        let queues = check(
            "[[queues]]\nname = \"api\"\nper_key = 2\nkey_arg = \"customer.id\"\n\
             rate = \"10/s\"\nburst = 5\nkey_rate = \"3/10s\"\nageing = \"off\"\ndedupe = true",
        )
        .unwrap();
        let api = &queues[0];
        assert_eq!(api.per_key, Some(2));
        assert_eq!(api.key_arg, Some(vec!["customer".into(), "id".into()]));
        assert_eq!(api.rate.unwrap().interval(), Duration::from_millis(100));
        assert_eq!(api.rate.unwrap().burst, 5);
        let key_rate = api.key_rate.unwrap();
        assert_eq!(
            (key_rate.count, key_rate.per, key_rate.burst),
            (3, Duration::from_secs(10), 1)
        );
        assert_eq!(api.ageing, None);
        assert!(api.dedupe);
    }

    #[test]
    fn bad_rates_name_the_field_and_the_form() {
        let error = check("[[queues]]\nname = \"q\"\nrate = \"10 per s\"").unwrap_err();
        assert_eq!(
            error.to_string(),
            "app.toml: queues[0] (`q`): `rate`: \"10 per s\" is not a rate: write COUNT/PERIOD, \
             such as \"10/s\", \"600/m\", \"1/h\" or \"5/10s\""
        );
        for bad in ["0/s", "10/fortnight", "x/s", "10/0s", "2000000/s"] {
            let error = check(&format!("[[queues]]\nname = \"q\"\nrate = \"{bad}\"")).unwrap_err();
            assert!(error.to_string().contains("`rate`"), "{bad}: {error}");
        }
        let error = check("[[queues]]\nname = \"q\"\nkey_burst = 3").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("`key_burst` is the burst of `key_rate`"),
            "{error}"
        );
        let error = check("[[queues]]\nname = \"q\"\nkey_arg = \"a..b\"").unwrap_err();
        assert!(error.to_string().contains("`key_arg`"), "{error}");
        let error = check("[[queues]]\nname = \"q\"\nageing = \"soon\"").unwrap_err();
        assert!(error.to_string().contains("`ageing`"), "{error}");
    }

    /// Review of 4cc60c0: `ageing = "500000000000y"` passed check, then
    /// overflowed an instant and panicked under the queue's lock.
    #[test]
    fn ageing_is_bounded() {
        let error = check("[[queues]]\nname = \"q\"\nageing = \"500000000000y\"").unwrap_err();
        assert!(
            error.to_string().contains("from 1ms to 366 days"),
            "{error}"
        );
    }

    #[test]
    fn limits_changed_at_run_time_add_up_and_a_new_rate_brings_its_own_burst() {
        let base = QueueConfig {
            rate: Some(Rate::parse("10/s", 2).unwrap()),
            ..QueueConfig::unbounded("q")
        };
        let change = |text: &str| serde_json::from_str::<LimitsChange>(text).unwrap();
        let all = change(r#"{"rate": "20/s", "burst": 5}"#)
            .then(&change(r#"{"concurrency": 3}"#))
            .then(&change(r#"{"rate": "30/s"}"#));
        let applied = all.applied(&base).unwrap();
        assert_eq!(applied.concurrency, Some(3));
        assert_eq!(applied.rate.unwrap().to_string(), "30/s");
        assert_eq!(
            applied.rate.unwrap().burst,
            2,
            "app.toml's burst, not the older 5"
        );
        let off = change(r#"{"concurrency": 0, "rate": "off"}"#)
            .applied(&base)
            .unwrap();
        assert_eq!((off.concurrency, off.rate), (None, None));
        let keyed = change(r#"{"per_key": 2}"#).applied(&base).unwrap_err();
        assert!(keyed.contains("takes tasks without a key"), "{keyed}");
        let keyed_base = QueueConfig {
            key_arg: Some(vec!["customer".into()]),
            ..base.clone()
        };
        assert_eq!(
            change(r#"{"per_key": 2}"#)
                .applied(&keyed_base)
                .unwrap()
                .per_key,
            Some(2)
        );
    }

    #[test]
    fn placements_are_checked_naming_the_field() {
        let none = QueueOptions::default().placement().unwrap();
        assert_eq!(none, None);
        let delayed = QueueOptions {
            delay: Some("10m"),
            ..QueueOptions::default()
        }
        .placement()
        .unwrap()
        .unwrap();
        assert_eq!(delayed.queue, DEFAULT_QUEUE);
        assert_eq!(
            delayed.start,
            Some(StartAt::After(Duration::from_secs(600)))
        );
        let at = QueueOptions {
            queue: Some("q"),
            run_at: Some("2026-12-05T14:30:00+01:00"),
            priority: Some(-100),
            ..QueueOptions::default()
        }
        .placement()
        .unwrap()
        .unwrap();
        assert_eq!(
            at.start,
            Some(StartAt::At(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_477_400)
            ))
        );
        let error = |options: QueueOptions<'_>| options.placement().unwrap_err();
        assert!(
            error(QueueOptions {
                priority: Some(101),
                ..Default::default()
            })
            .contains("`priority` 101 is out of range: from -100 to 100")
        );
        assert!(
            error(QueueOptions {
                run_at: Some("tomorrow"),
                ..Default::default()
            })
            .contains("`run_at` \"tomorrow\" is not an RFC 3339 time")
        );
        assert!(
            error(QueueOptions {
                delay: Some("soon"),
                ..Default::default()
            })
            .contains("`delay` \"soon\" is not a duration")
        );
        assert!(
            error(QueueOptions {
                delay: Some("1s"),
                run_at: Some("x"),
                ..Default::default()
            })
            .contains("give one")
        );
        assert!(
            error(QueueOptions {
                delay: Some("400days"),
                ..Default::default()
            })
            .contains("longer than")
        );
        assert!(
            error(QueueOptions {
                key: Some(""),
                ..Default::default()
            })
            .contains("`key`")
        );
    }

    #[test]
    fn a_key_comes_from_the_submission_or_the_key_arg() {
        let queue = QueueConfig {
            per_key: Some(1),
            key_arg: Some(vec!["customer".into(), "id".into()]),
            ..QueueConfig::unbounded("q")
        };
        assert_eq!(key_of(&queue, Some("k"), "null"), Ok(Some("k".into())));
        assert_eq!(
            key_of(&queue, None, r#"{"customer":{"id":"acme"}}"#),
            Ok(Some("acme".into()))
        );
        assert_eq!(
            key_of(&queue, None, r#"{"customer":{"id":7}}"#),
            Ok(Some("7".into()))
        );
        let missing = key_of(&queue, None, r#"{"customer":{}}"#).unwrap_err();
        assert!(
            missing.contains("argument `customer.id` (`key_arg`)"),
            "{missing}"
        );
        let keyless = QueueConfig {
            key_arg: None,
            ..queue.clone()
        };
        let needs = key_of(&keyless, None, "null").unwrap_err();
        assert!(needs.contains("goes by key (`per_key`)"), "{needs}");
        assert_eq!(key_of(&QueueConfig::unbounded("d"), None, "null"), Ok(None));
    }

    #[test]
    fn bad_bounds_and_names_are_refused_naming_the_queue_and_the_field() {
        let error = check("[[queues]]\nname = \"q\"\nconcurrency = 0").unwrap_err();
        assert_eq!(
            error.to_string(),
            "app.toml: queues[0] (`q`): `concurrency` must be from 1 to 1000000, got 0"
        );
        let error = check("[[queues]]\nname = \"q\"\nmax_waiting = -1").unwrap_err();
        assert!(
            error.to_string().contains("`max_waiting` must be from 1"),
            "{error}"
        );
        let error = check("[[queues]]\nname = \"a b\"").unwrap_err();
        assert!(error.to_string().contains("is not a queue name"), "{error}");
        let error = check("[[queues]]\nname = \"q\"\n[[queues]]\nname = \"q\"").unwrap_err();
        assert!(error.to_string().contains("listed twice"), "{error}");
        let error = check("[[queues]]\nname = \"q\"\nrates = \"10/s\"").unwrap_err();
        assert!(
            error.to_string().contains("unknown field `rates`"),
            "{error}"
        );
    }
}
