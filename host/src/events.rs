//! Named events: Sanic's `app.dispatch("x")` / `await app.event("x")`,
//! across every worker of a host.
//!
//! A waiter is registered before its task blocks, so a dispatch that
//! happens after `wait-event` was called is never missed; a dispatch wakes
//! exactly the waiters registered at that moment (like Sanic, an event is
//! not remembered for later waiters).

use crate::config::{Limit, LimitUnit, Limits};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, watch};

/// Every waiter of a host, by pattern.
pub struct EventHub {
    inner: Mutex<Waiters>,
    /// How many waiters are registered, for whoever needs to know that a
    /// dispatch will be heard (tests, the control API).
    waiting: watch::Sender<usize>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            inner: Mutex::default(),
            waiting: watch::Sender::new(0),
        }
    }
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

    /// Hands `payload` to every current waiter whose pattern matches
    /// `event`; returns how many were woken. The waiters share one copy of
    /// the payload, so a large payload and many waiters do not multiply.
    pub fn dispatch(&self, event: &str, payload: &str) -> u32 {
        let payload: Arc<str> = payload.into();
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
}
