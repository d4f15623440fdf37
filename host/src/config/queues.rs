//! `[[queues]]`: where submitted tasks wait until their queue lets them
//! start, instead of being refused.
//!
//! A queue bounds how many of its tasks run at once across the workers
//! (`concurrency`) and how many may wait (`max_waiting`): past that bound a
//! submission is refused with `limit`, naming the queue. The queue
//! `default` always exists (no `concurrency` bound unless app.toml gives
//! one); a task goes to a queue only when its submission names one.

use super::MAX_NAME_BYTES;
use anyhow::{Result, bail};
use serde::Deserialize;
use std::collections::HashSet;

/// The queue that exists whether app.toml lists it or not.
pub const DEFAULT_QUEUE: &str = "default";

/// `max_waiting` when not given: enough for a burst, bounded because each
/// waiting task holds its arguments and a registry entry.
pub const DEFAULT_MAX_WAITING: u64 = 10_000;

/// The largest `max_waiting` (and `concurrency`) accepted: beyond it a
/// queue is a typo, not a plan.
pub const MAX_QUEUE_BOUND: u64 = 1_000_000;

/// One `[[queues]]` entry, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// What submissions name it by (`queue = "emails"`).
    pub name: String,
    /// At most this many of its tasks run at once, across the workers;
    /// none: no bound of the queue's own.
    pub concurrency: Option<u32>,
    /// At most this many of its tasks wait; a submission past it is
    /// refused with `limit`.
    pub max_waiting: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    name: String,
    concurrency: Option<i64>,
    max_waiting: Option<i64>,
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
        let bound = |field: &str, value: i64| -> Result<u64> {
            match u64::try_from(value) {
                Ok(value) if (1..=MAX_QUEUE_BOUND).contains(&value) => Ok(value),
                _ => bail!(
                    "{at} (`{name}`): `{field}` must be from 1 to {MAX_QUEUE_BOUND}, got {value}"
                ),
            }
        };
        let concurrency = queue
            .concurrency
            .map(|value| bound("concurrency", value))
            .transpose()?
            .map(|value| value as u32);
        let max_waiting = queue
            .max_waiting
            .map(|value| bound("max_waiting", value))
            .transpose()?
            .unwrap_or(DEFAULT_MAX_WAITING);
        queues.push(QueueConfig {
            name,
            concurrency,
            max_waiting,
        });
    }
    if !names.contains(DEFAULT_QUEUE) {
        queues.push(QueueConfig {
            name: DEFAULT_QUEUE.to_string(),
            concurrency: None,
            max_waiting: DEFAULT_MAX_WAITING,
        });
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
                    name: "emails".into(),
                    concurrency: Some(4),
                    max_waiting: DEFAULT_MAX_WAITING
                },
                QueueConfig {
                    name: DEFAULT_QUEUE.into(),
                    concurrency: None,
                    max_waiting: DEFAULT_MAX_WAITING
                },
            ]
        );
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
        let error = check("[[queues]]\nname = \"q\"\nrate = \"10/s\"").unwrap_err();
        assert!(
            error.to_string().contains("unknown field `rate`"),
            "{error}"
        );
    }
}
