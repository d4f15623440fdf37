//! Named events: Sanic's `app.dispatch("x")` / `await app.event("x")`,
//! across every worker of a host.
//!
//! A waiter is registered before its task blocks, so a dispatch that
//! happens after `wait-event` was called is never missed; a dispatch wakes
//! exactly the waiters registered at that moment (like Sanic, an event is
//! not remembered for later waiters).

use crate::config::{Limit, LimitUnit, Limits};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{mpsc, oneshot, watch};

/// Every waiter of a host, by pattern.
pub struct EventHub {
    inner: Mutex<Waiters>,
    /// How many waiters are registered, for whoever needs to know that a
    /// dispatch will be heard (tests, the control API).
    waiting: watch::Sender<usize>,
    /// Where this host's own dispatches go besides its waiters: the
    /// cluster's other hosts (set once the host joined one).
    relay: OnceLock<Relay>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            inner: Mutex::default(),
            waiting: watch::Sender::new(0),
            relay: OnceLock::new(),
        }
    }
}

/// The cluster's side of the hub.
struct Relay {
    cluster: String,
    sender: mpsc::Sender<Relayed>,
    /// Dispatches the other hosts missed because the queue was full.
    dropped: AtomicU64,
}

/// A dispatch made on this host, on its way to the others.
#[derive(Debug, Clone)]
pub struct Relayed {
    /// The event's name, as dispatched.
    pub event: String,
    /// What the waiters get; shared with this host's waiters, not copied.
    pub payload: Arc<str>,
}

/// Where one waiter's payload goes; shared by every waiter of a dispatch.
type PayloadSender = oneshot::Sender<Arc<str>>;

#[derive(Default)]
struct Waiters {
    next_id: u64,
    /// The sum of the lists' lengths, kept so that counting costs nothing
    /// with thousands of waiters.
    count: usize,
    /// pattern -> (waiter id, where to send the payload)
    by_pattern: HashMap<String, Vec<(u64, PayloadSender)>>,
}

/// A registered wait. Dropping it (timeout, cancellation) unregisters it.
pub struct EventWait<'a> {
    hub: &'a EventHub,
    pattern: String,
    id: u64,
    payload: Option<oneshot::Receiver<Arc<str>>>,
}

impl EventHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        // Every update is a single push or removal: a panic cannot leave the
        // map half-changed, so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a waiter for `pattern`: an event name, or a prefix ending in
    /// `*` (`jobs.*` matches `jobs.done`).
    pub fn subscribe(&self, pattern: &str) -> EventWait<'_> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = self.lock();
        waiters.next_id += 1;
        let id = waiters.next_id;
        waiters
            .by_pattern
            .entry(pattern.to_string())
            .or_default()
            .push((id, tx));
        waiters.count += 1;
        self.waiting.send_replace(waiters.count);
        EventWait {
            hub: self,
            pattern: pattern.to_string(),
            id,
            payload: Some(rx),
        }
    }

    /// Sends this host's dispatches to the cluster from now on, through a
    /// queue of `capacity`; the receiver is the cluster's. Once only.
    pub fn relay_to(&self, cluster: &str, capacity: usize) -> Option<mpsc::Receiver<Relayed>> {
        let (sender, receiver) = mpsc::channel(capacity);
        self.relay
            .set(Relay {
                cluster: cluster.to_string(),
                sender,
                dropped: AtomicU64::new(0),
            })
            .ok()?;
        Some(receiver)
    }

    /// Checks that an event name (or, with `pattern`, a wait pattern) can
    /// travel as a NATS subject when the host is in a cluster: dot-separated
    /// tokens, none empty, without spaces, `*` or `>` (a pattern may end in
    /// one `*`, which keeps its meaning: a prefix). Anything goes for a host
    /// alone.
    pub fn check_travels(&self, name: &str, pattern: bool) -> Result<(), String> {
        let Some(relay) = self.relay.get() else {
            return Ok(());
        };
        let (body, open_end) = match name.strip_suffix('*') {
            Some(prefix) if pattern => (prefix, true),
            _ => (name, false),
        };
        let tokens: Vec<&str> = body.split('.').collect();
        let last = tokens.len() - 1;
        let fits = (!body.is_empty() || open_end)
            && tokens.iter().enumerate().all(|(i, token)| {
                (!token.is_empty() || (open_end && i == last))
                    && !token
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
            });
        if fits {
            return Ok(());
        }
        Err(format!(
            "event {what} {name:?} cannot travel between the hosts of cluster `{}`: a NATS \
             subject is dot-separated tokens, none empty, without spaces, `*` or `>`{}",
            relay.cluster,
            if pattern {
                " (a pattern may end in one `*`)"
            } else {
                ""
            },
            what = if pattern { "pattern" } else { "name" },
        ))
    }

    /// Hands `payload` to every current waiter whose pattern matches
    /// `event`, on this host and, in a cluster, on the others; returns how
    /// many were woken here. The waiters share one copy of the payload, so
    /// a large payload and many waiters do not multiply.
    pub fn dispatch(&self, event: &str, payload: &str) -> u32 {
        let payload: Arc<str> = payload.into();
        if let Some(relay) = self.relay.get() {
            let relayed = Relayed {
                event: event.to_string(),
                payload: payload.clone(),
            };
            if relay.sender.try_send(relayed).is_err() {
                // At most once, as documented: NATS is slower than the
                // dispatches, or the cluster is gone.
                let dropped = relay.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        event,
                        dropped,
                        "event {event:?} did not reach the other hosts of cluster `{}`: its \
                         queue to NATS is full ({dropped} missed so far)",
                        relay.cluster
                    );
                }
            }
        }
        self.wake(event, payload)
    }

    /// Dispatches the other hosts of the cluster missed because the queue
    /// to NATS was full.
    pub fn relay_dropped(&self) -> u64 {
        self.relay
            .get()
            .map_or(0, |relay| relay.dropped.load(Ordering::Relaxed))
    }

    /// Hands `payload` to this host's waiters only: a dispatch that came
    /// from another host of the cluster.
    pub fn deliver(&self, event: &str, payload: Arc<str>) -> u32 {
        self.wake(event, payload)
    }

    fn wake(&self, event: &str, payload: Arc<str>) -> u32 {
        let woken: Vec<PayloadSender> = {
            let mut waiters = self.lock();
            let patterns: Vec<String> = waiters
                .by_pattern
                .keys()
                .filter(|pattern| matches(pattern, event))
                .cloned()
                .collect();
            let woken = patterns
                .iter()
                .filter_map(|pattern| waiters.by_pattern.remove(pattern))
                .flatten()
                .map(|(_, tx)| tx)
                .collect::<Vec<_>>();
            waiters.count -= woken.len();
            self.waiting.send_replace(waiters.count);
            woken
        };
        woken
            .into_iter()
            .filter(|tx| !tx.is_closed())
            .map(|tx| tx.send(payload.clone()).is_ok())
            .filter(|sent| *sent)
            .count() as u32
    }

    /// How many waiters are registered.
    pub fn waiting(&self) -> usize {
        *self.waiting.borrow()
    }

    /// Resolves once at least `count` waiters are registered.
    pub async fn until_waiting(&self, count: usize) {
        let mut waiting = self.waiting.subscribe();
        let _ = waiting.wait_for(|n| *n >= count).await;
    }
}

/// Checks a dispatch against the limits: the event name's length and the
/// payload's size.
pub fn check_dispatch(event: &str, payload: &str, limits: &Limits) -> Result<(), Limit> {
    check_name(event)?;
    if payload.len() > limits.event_payload_bytes {
        return Err(Limit {
            what: format!("the payload of event {event:?}"),
            max: limits.event_payload_bytes as u64,
            got: payload.len() as u64,
            unit: LimitUnit::Bytes,
            setting: Some("event_payload_bytes"),
        });
    }
    Ok(())
}

/// Checks an event name or pattern: waiters are keyed by it.
pub fn check_name(event: &str) -> Result<(), Limit> {
    Limit::check_name("an event name", event)
}

fn matches(pattern: &str, event: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event.starts_with(prefix),
        None => pattern == event,
    }
}

impl EventWait<'_> {
    /// Resolves with the payload of the next matching dispatch.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the wait stays registered until the `EventWait` itself
    /// is dropped, so a payload dispatched meanwhile is returned by the
    /// next call.
    pub async fn payload(&mut self) -> Arc<str> {
        match self.payload.as_mut() {
            Some(rx) => match rx.await {
                Ok(payload) => {
                    self.payload = None;
                    payload
                }
                // The hub never drops a sender without sending, except with
                // the hub itself: then no event will ever come.
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}

impl Drop for EventWait<'_> {
    fn drop(&mut self) {
        if self.payload.is_none() {
            return;
        }
        let mut waiters = self.hub.lock();
        let Waiters {
            by_pattern, count, ..
        } = &mut *waiters;
        if let Some(list) = by_pattern.get_mut(&self.pattern) {
            let before = list.len();
            list.retain(|(id, _)| *id != self.id);
            *count -= before - list.len();
            if list.is_empty() {
                by_pattern.remove(&self.pattern);
            }
        }
        self.hub.waiting.send_replace(*count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dispatch_wakes_every_matching_waiter_once() {
        let hub = EventHub::default();
        let mut a = hub.subscribe("jobs.done");
        let mut b = hub.subscribe("jobs.*");
        let _other = hub.subscribe("mail.sent");
        assert_eq!(hub.dispatch("jobs.done", "42"), 2);
        assert_eq!(&*a.payload().await, "42");
        assert_eq!(&*b.payload().await, "42");
        assert_eq!(hub.waiting(), 1, "only the unrelated waiter is left");
        assert_eq!(
            hub.dispatch("jobs.done", "43"),
            0,
            "events are not remembered"
        );
    }

    #[test]
    fn a_dropped_wait_unregisters() {
        let hub = EventHub::default();
        drop(hub.subscribe("x"));
        assert_eq!(hub.waiting(), 0);
        assert_eq!(hub.dispatch("x", ""), 0);
    }

    #[tokio::test]
    async fn in_a_cluster_names_must_be_subject_tokens_and_dispatches_are_relayed() {
        let hub = EventHub::default();
        // Alone, anything goes.
        assert!(hub.check_travels("a b", false).is_ok());
        let mut relayed = hub.relay_to("prod", 1).unwrap();
        assert!(hub.relay_to("prod", 1).is_none(), "once only");
        for good in ["jobs.done", "x", "a-b_c.1"] {
            assert!(hub.check_travels(good, false).is_ok(), "{good}");
        }
        for good in ["jobs.*", "*", "job*"] {
            assert!(hub.check_travels(good, true).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a b",
            "jobs.",
            ".jobs",
            "a..b",
            "a.>",
            "a.*",
            "tab\there",
        ] {
            let error = hub.check_travels(bad, false).unwrap_err();
            assert!(error.contains("cluster `prod`"), "{error}");
        }
        for bad in ["a b*", "a.*.b", ">", "a..*"] {
            assert!(hub.check_travels(bad, true).is_err(), "{bad}");
        }

        // A dispatch wakes the local waiter and is queued for the others;
        // past the queue's room it is dropped and counted.
        let mut waiter = hub.subscribe("jobs.*");
        assert_eq!(hub.dispatch("jobs.done", "1"), 1);
        assert_eq!(&*waiter.payload().await, "1");
        assert_eq!(hub.dispatch("jobs.done", "2"), 0);
        assert_eq!(hub.relay_dropped(), 1);
        let first = relayed.recv().await.unwrap();
        assert_eq!((first.event.as_str(), &*first.payload), ("jobs.done", "1"));
        // What came from another host is not relayed again.
        let mut waiter = hub.subscribe("jobs.*");
        assert_eq!(hub.deliver("jobs.more", "3".into()), 1);
        assert_eq!(&*waiter.payload().await, "3");
        assert!(relayed.try_recv().is_err());
    }
}
