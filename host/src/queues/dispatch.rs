//! Which waiting task of a queue starts next: the queue's flow control as
//! a state machine over explicit instants, so its order is tested without
//! clocks.
//!
//! The order, from the outside in:
//! - nothing starts while the queue is paused, runs `concurrency` tasks,
//!   or is past its `rate`;
//! - a key whose tasks run `per_key` at once, or that is past its
//!   `key_rate`, is skipped until one ends or its rate allows;
//! - among the other keys, the one whose next task has the highest
//!   priority goes first (a waiting task gains one level each `ageing`);
//! - between keys of equal priority, turns go round: each key keeps a
//!   pass, raised by one each time it starts a task, and the lowest pass
//!   goes first; a key that was idle comes back at the pass of the last
//!   start (start-time fair queueing), so it neither waits behind a busy
//!   key's backlog nor takes a run of turns for the time it was idle;
//! - within a key: highest priority, then first submitted.
//!
//! Rates are generic cell rates: one instant per rate (when the next start
//! is due at the steady rate) instead of a bucket of tokens, exact in
//! integer time.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{MAX_PRIORITY, Rate};

/// A queue's flow control, as [`Dispatch`] applies it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rules {
    pub(crate) concurrency: Option<u32>,
    pub(crate) per_key: Option<u32>,
    pub(crate) rate: Option<Rate>,
    pub(crate) key_rate: Option<Rate>,
    pub(crate) ageing: Option<Duration>,
    /// At most this many idle keys are remembered for their `key_rate`
    /// (a client sending new keys must not grow the queue without end);
    /// past it, the one whose rate frees soonest is forgotten early. None:
    /// no bound (tests).
    pub(crate) cooling_keys: Option<usize>,
}

/// A cell rate: `due` is when the next start is due at the steady rate; a
/// start is allowed up to `burst - 1` intervals before it.
#[derive(Debug, Clone)]
struct Cells {
    interval: Duration,
    tolerance: Duration,
    due: Instant,
}

impl Cells {
    fn new(rate: &Rate, now: Instant) -> Cells {
        let interval = rate.interval();
        Cells {
            interval,
            tolerance: interval * rate.burst.saturating_sub(1),
            due: now,
        }
    }

    /// When the next start is allowed; none: now.
    fn blocked_until(&self, now: Instant) -> Option<Instant> {
        let earliest = self.due.checked_sub(self.tolerance)?;
        (now < earliest).then_some(earliest)
    }

    /// Counts a start at `now`. A start a little late (within an
    /// interval: the timer wakes on whole milliseconds) keeps the schedule,
    /// so lateness does not add up (the `-- queues` bench saw 877 starts
    /// in 10 s at `100/s` before); one later than that starts it afresh.
    fn take(&mut self, now: Instant) {
        self.due = if now < self.due + self.interval {
            self.due + self.interval
        } else {
            now + self.interval
        };
    }

    /// Whether it remembers nothing a fresh rate would not: then a key's
    /// state may go.
    fn idle(&self, now: Instant) -> bool {
        self.due <= now
    }
}

/// Where a key is in the dispatcher's sets.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// In `ready`, under this entry.
    Ready(ReadyKey),
    /// In `blocked`, until its rate allows a start.
    Blocked(Instant),
    /// In `cooling`: nothing waits or runs, but its rate remembers starts.
    Cooling(Instant),
    /// In no set: nothing waits (its tasks run or are delayed), or it
    /// runs `per_key` tasks.
    Aside,
}

/// `ready`'s order: highest head priority, then lowest pass.
type ReadyKey = (Reverse<i32>, u64, Arc<str>);

#[derive(Debug)]
struct Key {
    /// Its tasks that may start, by (priority, submission).
    waiting: BTreeSet<(Reverse<i32>, u64)>,
    /// Its delayed tasks' tickets.
    delayed: BTreeSet<u64>,
    running: u32,
    rate: Option<Cells>,
    pass: u64,
    place: Place,
}

#[derive(Debug)]
struct Entry<T> {
    key: Arc<str>,
    level: i32,
    /// Since when it may start (its submission, or its delay's end): its
    /// wait is counted from here.
    since: Instant,
    /// Its wait did not start at its push (it was delayed, or put back
    /// by a restart with its earlier wait): it is in `came_due`, not
    /// `arrived`.
    by_instant: bool,
    /// When it may start, while it may not yet.
    due: Option<Instant>,
    /// When it next gains a level.
    promote: Option<Instant>,
    item: T,
}

/// A queue's waiting tasks (each an item `T` under a ticket) and what
/// runs, deciding which start next.
#[derive(Debug)]
pub(crate) struct Dispatch<T> {
    rules: Rules,
    next_ticket: u64,
    entries: HashMap<u64, Entry<T>>,
    keys: HashMap<Arc<str>, Key>,
    ready: BTreeSet<ReadyKey>,
    blocked: BTreeSet<(Instant, Arc<str>)>,
    cooling: BTreeSet<(Instant, Arc<str>)>,
    delayed: BTreeSet<(Instant, u64)>,
    ageing: BTreeSet<(Instant, u64)>,
    running: u32,
    rate: Option<Cells>,
    /// The pass of the last start: where an idle key comes back.
    pass: u64,
    paused: bool,
    /// Startable tasks that were never delayed, by ticket: their order is
    /// that of their waits' starts (a ticket's `since`), and a ticket
    /// takes a third of the room an instant and a ticket would.
    arrived: BTreeSet<u64>,
    /// Startable tasks that were delayed (or put back with an earlier
    /// wait), by since when they wait. With `arrived`: the oldest wait.
    came_due: BTreeSet<(Instant, u64)>,
    /// Times a start was held back by a rate (the queue's or a key's).
    throttled: u64,
    /// The instant the queue's rate held starts back until, last counted.
    throttled_until: Option<Instant>,
}

/// What [`Dispatch::poll`] found: the tasks to start now (each with its
/// key and how long it waited), and when to poll again if nothing else
/// happens first.
#[derive(Debug)]
pub(crate) struct Polled<T> {
    pub(crate) start: Vec<Started<T>>,
    pub(crate) wake: Option<Instant>,
}

/// A task [`Dispatch::poll`] lets start.
#[derive(Debug)]
pub(crate) struct Started<T> {
    pub(crate) ticket: u64,
    pub(crate) key: Arc<str>,
    pub(crate) item: T,
    /// From when it could start (submission or delay's end) to now.
    pub(crate) waited: Duration,
}

/// A key's share of the queue, for `taskhost queues`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyLoad {
    pub(crate) key: Arc<str>,
    pub(crate) waiting: usize,
    pub(crate) running: u32,
}

impl<T> Dispatch<T> {
    pub(crate) fn new(rules: Rules, now: Instant) -> Dispatch<T> {
        let rate = rules.rate.as_ref().map(|rate| Cells::new(rate, now));
        Dispatch {
            rules,
            next_ticket: 0,
            entries: HashMap::new(),
            keys: HashMap::new(),
            ready: BTreeSet::new(),
            blocked: BTreeSet::new(),
            cooling: BTreeSet::new(),
            delayed: BTreeSet::new(),
            ageing: BTreeSet::new(),
            running: 0,
            rate,
            pass: 0,
            paused: false,
            arrived: BTreeSet::new(),
            came_due: BTreeSet::new(),
            throttled: 0,
            throttled_until: None,
        }
    }

    /// Applies new limits: each key is placed again under them. A rate
    /// that changed starts afresh (as after a quiet spell).
    pub(crate) fn set_rules(&mut self, rules: Rules, now: Instant) {
        if rules.rate != self.rules.rate {
            self.rate = rules.rate.as_ref().map(|rate| Cells::new(rate, now));
        }
        let key_rate_changed = rules.key_rate != self.rules.key_rate;
        self.rules = rules;
        let keys: Vec<Arc<str>> = self.keys.keys().cloned().collect();
        for key in keys {
            if key_rate_changed && let Some(state) = self.keys.get_mut(&key) {
                state.rate = self
                    .rules
                    .key_rate
                    .as_ref()
                    .map(|rate| Cells::new(rate, now));
            }
            self.settle(&key, now);
        }
    }

    /// Delayed tasks not yet due.
    pub(crate) fn delayed(&self) -> usize {
        self.delayed.len()
    }

    /// How long the task that may start and has waited longest has waited.
    pub(crate) fn oldest_wait(&self, now: Instant) -> Option<Duration> {
        let arrived = self
            .arrived
            .first()
            .map(|ticket| self.entries[ticket].since);
        let came_due = self.came_due.first().map(|(since, _)| *since);
        let oldest = match (arrived, came_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        oldest.map(|since| now.saturating_duration_since(since))
    }

    /// Times a start was held back by a rate, since the queue was made.
    pub(crate) fn throttled(&self) -> u64 {
        self.throttled
    }

    /// The `n` keys with the most tasks waiting (then running), most first.
    pub(crate) fn top_keys(&self, n: usize) -> Vec<KeyLoad> {
        let mut loads: Vec<KeyLoad> = self
            .keys
            .iter()
            .map(|(key, state)| KeyLoad {
                key: key.clone(),
                waiting: state.waiting.len() + state.delayed.len(),
                running: state.running,
            })
            .filter(|load| load.waiting > 0 || load.running > 0)
            .collect();
        // Under the queue's lock: the top n in linear time, not a sort of
        // every key.
        let most_first = |a: &KeyLoad, b: &KeyLoad| {
            (b.waiting, b.running, &a.key).cmp(&(a.waiting, a.running, &b.key))
        };
        if loads.len() > n && n > 0 {
            loads.select_nth_unstable_by(n - 1, most_first);
        }
        loads.truncate(n);
        loads.sort_by(most_first);
        loads
    }

    /// Tasks waiting, delayed ones included.
    pub(crate) fn waiting(&self) -> usize {
        self.entries.len()
    }

    /// Tasks started and not yet [`finished`](Self::finished).
    pub(crate) fn running(&self) -> u32 {
        self.running
    }

    /// Keys the queue remembers (waiting, running, or within a rate).
    pub(crate) fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Stops (or lets again) any start.
    pub(crate) fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// A task of `key` waiting (delayed or not), if any: the answer to a
    /// second submission of a `dedupe` queue.
    pub(crate) fn waiting_of(&self, key: &str) -> Option<&T> {
        let state = self.keys.get(key)?;
        let ticket = match state.waiting.first() {
            Some((_, ticket)) => ticket,
            None => state.delayed.first()?,
        };
        self.entries.get(ticket).map(|entry| &entry.item)
    }

    /// Takes a startable task's entry out of the sets of waits.
    fn unlist_startable(&mut self, entry: &Entry<T>, ticket: u64) {
        if entry.by_instant {
            self.came_due.remove(&(entry.since, ticket));
        } else {
            self.arrived.remove(&ticket);
        }
    }

    /// Takes out every task that has not started.
    pub(crate) fn remove_all(&mut self, now: Instant) -> Vec<T> {
        let tickets: Vec<u64> = self.entries.keys().copied().collect();
        tickets
            .into_iter()
            .filter_map(|ticket| self.remove(ticket, now))
            .collect()
    }

    /// The item of the waiting task `ticket`, to change it.
    pub(crate) fn item_mut(&mut self, ticket: u64) -> Option<&mut T> {
        self.entries.get_mut(&ticket).map(|entry| &mut entry.item)
    }

    /// Adds a task under `key` at `priority`, startable from `due` (or
    /// now); its ticket is how it is [`remove`](Self::remove)d.
    #[cfg(test)]
    pub(crate) fn push(
        &mut self,
        key: &str,
        priority: i32,
        due: Option<Instant>,
        item: T,
        now: Instant,
    ) -> u64 {
        self.push_waited(key, priority, due, None, item, now)
    }

    /// [`Dispatch::push`] for a task that has waited since `since` (before
    /// `now`: put back by a restart), so its priority has aged meanwhile
    /// and its wait counts from then.
    pub(crate) fn push_waited(
        &mut self,
        key: &str,
        priority: i32,
        due: Option<Instant>,
        since: Option<Instant>,
        item: T,
        now: Instant,
    ) -> u64 {
        // A key's tasks share its one copy.
        let key: Arc<str> = match self.keys.get_key_value(key) {
            Some((known, _)) => known.clone(),
            None => key.into(),
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let pass = self.pass;
        let key_rate = self.rules.key_rate;
        let state = self.keys.entry(key.clone()).or_insert_with(|| Key {
            waiting: BTreeSet::new(),
            delayed: BTreeSet::new(),
            running: 0,
            rate: key_rate.as_ref().map(|rate| Cells::new(rate, now)),
            pass,
            place: Place::Aside,
        });
        let due = due.filter(|due| *due > now);
        let since = since.filter(|since| *since < now);
        let mut entry = Entry {
            key: key.clone(),
            level: priority,
            since: due.or(since).unwrap_or(now),
            by_instant: since.is_some(),
            due,
            promote: None,
            item,
        };
        match due {
            Some(due) => {
                state.delayed.insert(ticket);
                self.delayed.insert((due, ticket));
            }
            None => {
                state.waiting.insert((Reverse(priority), ticket));
                match since {
                    Some(since) => self.came_due.insert((since, ticket)),
                    None => self.arrived.insert(ticket),
                };
                // From an earlier wait, the levels it gained meanwhile
                // are caught up at the next poll.
                entry.promote = promotion(self.rules.ageing, priority, entry.since);
                if let Some(at) = entry.promote {
                    self.ageing.insert((at, ticket));
                }
            }
        }
        self.entries.insert(ticket, entry);
        self.settle(&key, now);
        ticket
    }

    /// Whether a task entering now would start at once
    /// ([`Self::start_at_once`]): the queue bounds nothing (no
    /// concurrency, per-key bound or rate), is not paused, and has no task
    /// that may start waiting (delayed ones do not count).
    pub(crate) fn starts_at_once(&self) -> bool {
        matches!(
            self.rules,
            Rules {
                concurrency: None,
                per_key: None,
                rate: None,
                key_rate: None,
                ..
            }
        ) && !self.paused
            && self.arrived.is_empty()
            && self.came_due.is_empty()
    }

    /// Starts a task of `key` at once if [`Self::starts_at_once`]: counted
    /// as running as [`Self::poll`] would count it, without taking a place
    /// first. Its key, to end it with ([`Self::finished`]); none if it has
    /// to wait (push it then).
    pub(crate) fn start_at_once(&mut self, key: &str) -> Option<Arc<str>> {
        if !self.starts_at_once() {
            return None;
        }
        let key: Arc<str> = match self.keys.get_key_value(key) {
            Some((known, _)) => known.clone(),
            None => key.into(),
        };
        let pass = self.pass;
        let state = self.keys.entry(key.clone()).or_insert_with(|| Key {
            waiting: BTreeSet::new(),
            delayed: BTreeSet::new(),
            running: 0,
            rate: None,
            pass,
            place: Place::Aside,
        });
        state.running += 1;
        self.running += 1;
        // None of the key waits to start: it stays where it was (aside,
        // or nowhere yet), and `finished` settles it.
        Some(key)
    }

    /// Takes out a task that has not started (it was cancelled); none if
    /// it has started or was never here.
    pub(crate) fn remove(&mut self, ticket: u64, now: Instant) -> Option<T> {
        let entry = self.entries.remove(&ticket)?;
        let key = self
            .keys
            .get_mut(&entry.key)
            .expect("an entry's key is kept");
        match entry.due {
            Some(due) => {
                key.delayed.remove(&ticket);
                self.delayed.remove(&(due, ticket));
            }
            None => {
                key.waiting.remove(&(Reverse(entry.level), ticket));
                self.unlist_startable(&entry, ticket);
            }
        }
        if let Some(at) = entry.promote {
            self.ageing.remove(&(at, ticket));
        }
        self.settle(&entry.key, now);
        Some(entry.item)
    }

    /// A started task of `key` has ended: its share of the bounds is free.
    pub(crate) fn finished(&mut self, key: &Arc<str>, now: Instant) {
        self.running -= 1;
        if let Some(state) = self.keys.get_mut(key) {
            state.running -= 1;
        }
        self.settle(key, now);
    }

    /// The tasks that start now, in order, and when to poll next.
    pub(crate) fn poll(&mut self, now: Instant) -> Polled<T> {
        self.release(now);
        let mut start = Vec::new();
        let mut wake = None;
        while !self.paused && !self.ready.is_empty() {
            if self
                .rules
                .concurrency
                .is_some_and(|max| self.running >= max)
            {
                break;
            }
            if let Some(until) = self.rate.as_ref().and_then(|r| r.blocked_until(now)) {
                // Once per held-back start, however often it is polled.
                if self.throttled_until != Some(until) {
                    self.throttled_until = Some(until);
                    self.throttled += 1;
                }
                wake = Some(until);
                break;
            }
            let (_, pass, key) = self.ready.pop_first().expect("not empty");
            let state = self.keys.get_mut(&key).expect("a ready key is kept");
            state.place = Place::Aside;
            let (_, ticket) = state.waiting.pop_first().expect("a ready key has waiting");
            state.running += 1;
            state.pass = pass + 1;
            if let Some(rate) = &mut state.rate {
                rate.take(now);
            }
            if let Some(rate) = &mut self.rate {
                rate.take(now);
            }
            self.running += 1;
            self.pass = self.pass.max(pass);
            let entry = self
                .entries
                .remove(&ticket)
                .expect("a waiting ticket has its entry");
            if let Some(at) = entry.promote {
                self.ageing.remove(&(at, ticket));
            }
            self.unlist_startable(&entry, ticket);
            self.settle(&key, now);
            start.push(Started {
                ticket,
                key,
                item: entry.item,
                waited: now.saturating_duration_since(entry.since),
            });
        }
        let next = [
            self.delayed.first().map(|(at, _)| *at),
            self.blocked.first().map(|(at, _)| *at),
        ];
        for at in next.into_iter().flatten() {
            wake = Some(wake.map_or(at, |wake: Instant| wake.min(at)));
        }
        Polled { start, wake }
    }

    /// Moves what `now` reached: delayed tasks that may start, priorities
    /// that aged, keys whose rate allows a start, idle keys forgotten.
    fn release(&mut self, now: Instant) {
        while let Some(&(due, ticket)) = self.delayed.first() {
            if due > now {
                break;
            }
            self.delayed.pop_first();
            let entry = self
                .entries
                .get_mut(&ticket)
                .expect("a delayed ticket has its entry");
            entry.due = None;
            entry.since = due;
            entry.by_instant = true;
            self.came_due.insert((due, ticket));
            entry.promote = promotion(self.rules.ageing, entry.level, due);
            if let Some(at) = entry.promote {
                self.ageing.insert((at, ticket));
            }
            let key = entry.key.clone();
            let state = self.keys.get_mut(&key).expect("an entry's key is kept");
            state.delayed.remove(&ticket);
            state.waiting.insert((Reverse(entry.level), ticket));
            self.settle(&key, now);
        }
        while let Some(&(at, ticket)) = self.ageing.first() {
            if at > now {
                break;
            }
            self.ageing.pop_first();
            let entry = self
                .entries
                .get_mut(&ticket)
                .expect("an ageing ticket has its entry");
            let state = self
                .keys
                .get_mut(&entry.key)
                .expect("an entry's key is kept");
            state.waiting.remove(&(Reverse(entry.level), ticket));
            entry.level += 1;
            state.waiting.insert((Reverse(entry.level), ticket));
            entry.promote = promotion(self.rules.ageing, entry.level, at);
            if let Some(next) = entry.promote {
                self.ageing.insert((next, ticket));
            }
            let key = entry.key.clone();
            self.settle(&key, now);
        }
        let mut due = Vec::new();
        for set in [&mut self.blocked, &mut self.cooling] {
            while let Some((at, _)) = set.first() {
                if *at > now {
                    break;
                }
                due.push(set.pop_first().expect("not empty").1);
            }
        }
        for key in due {
            if let Some(state) = self.keys.get_mut(&key) {
                state.place = Place::Aside;
            }
            self.settle(&key, now);
        }
    }

    /// Puts `key` where its state says: ready, blocked by its rate, aside,
    /// cooling, or gone.
    fn settle(&mut self, key: &Arc<str>, now: Instant) {
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        let was_blocked = matches!(state.place, Place::Blocked(_));
        match std::mem::replace(&mut state.place, Place::Aside) {
            Place::Ready(entry) => {
                self.ready.remove(&entry);
            }
            Place::Blocked(at) => {
                self.blocked.remove(&(at, key.clone()));
            }
            Place::Cooling(at) => {
                self.cooling.remove(&(at, key.clone()));
            }
            Place::Aside => {}
        }
        let full = self.rules.per_key.is_some_and(|max| state.running >= max);
        let place = if let Some(&(Reverse(level), _)) = state.waiting.first() {
            if full {
                Place::Aside
            } else if let Some(until) = state.rate.as_ref().and_then(|r| r.blocked_until(now)) {
                // Once as the key is held back, not at each re-placing.
                if !was_blocked {
                    self.throttled += 1;
                }
                Place::Blocked(until)
            } else {
                state.pass = state.pass.max(self.pass);
                Place::Ready((Reverse(level), state.pass, key.clone()))
            }
        } else if state.running > 0 || !state.delayed.is_empty() {
            Place::Aside
        } else {
            match &state.rate {
                Some(rate) if !rate.idle(now) => Place::Cooling(rate.due),
                _ => {
                    self.keys.remove(key);
                    return;
                }
            }
        };
        match &place {
            Place::Ready(entry) => {
                self.ready.insert(entry.clone());
            }
            Place::Blocked(at) => {
                self.blocked.insert((*at, key.clone()));
            }
            Place::Cooling(at) => {
                self.cooling.insert((*at, key.clone()));
            }
            Place::Aside => {}
        }
        state.place = place;
        if self
            .rules
            .cooling_keys
            .is_some_and(|most| self.cooling.len() > most)
            && let Some((_, soonest)) = self.cooling.pop_first()
        {
            self.keys.remove(&soonest);
        }
    }
}

/// When a task at `level` waiting since `from` next gains a level: one
/// `ageing` on, unless it is at the top (or ages not at all).
fn promotion(ageing: Option<Duration>, level: i32, from: Instant) -> Option<Instant> {
    ageing
        .filter(|_| level < MAX_PRIORITY)
        .and_then(|every| from.checked_add(every))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str, burst: u32) -> Option<Rate> {
        Some(Rate::parse(text, burst).unwrap())
    }

    /// Polls at `now` and ends every started task at once, returning the
    /// items in start order.
    fn run_all(dispatch: &mut Dispatch<u32>, now: Instant) -> Vec<u32> {
        let polled = dispatch.poll(now);
        let mut items = Vec::new();
        for started in polled.start {
            dispatch.finished(&started.key, now);
            items.push(started.item);
        }
        items
    }

    #[test]
    fn one_key_backlog_does_not_hold_back_another_key() {
        let now = Instant::now();
        let mut dispatch = Dispatch::new(
            Rules {
                per_key: Some(1),
                ..Rules::default()
            },
            now,
        );
        for i in 0..10_000 {
            dispatch.push("a", 0, None, i, now);
        }
        // One of a's starts before b's arrive.
        let first = dispatch.poll(now).start;
        assert_eq!(first.len(), 1);
        for i in 0..10 {
            dispatch.push("b", 0, None, 100_000 + i, now);
        }
        dispatch.finished(&first[0].key, now);
        let mut order = Vec::new();
        while order.len() < 20 {
            let started = run_all(&mut dispatch, now);
            assert!(started.len() <= 2, "per_key 1 and two keys: {started:?}");
            order.extend(started);
        }
        let b = order.iter().filter(|&&item| item >= 100_000).count();
        assert_eq!(b, 10, "b's ten start within the first 20 starts: {order:?}");
        // And a new key after a long run comes back at once, not after a
        // backlog of turns.
        for _ in 0..100 {
            run_all(&mut dispatch, now);
        }
        dispatch.push("c", 0, None, 200_000, now);
        let next = dispatch.poll(now).start;
        assert_eq!(next[0].item, 200_000, "the new key goes first: {next:?}");
    }

    #[test]
    fn concurrency_and_per_key_bound_what_runs() {
        let now = Instant::now();
        let mut dispatch = Dispatch::new(
            Rules {
                concurrency: Some(3),
                per_key: Some(2),
                ..Rules::default()
            },
            now,
        );
        for i in 0..5 {
            dispatch.push("a", 0, None, i, now);
            dispatch.push("b", 0, None, 10 + i, now);
        }
        let started = dispatch.poll(now).start;
        assert_eq!(started.len(), 3);
        assert_eq!(dispatch.running(), 3);
        assert!(dispatch.poll(now).start.is_empty());
        // a ran two of them (a, b, a by turns): ending a b lets the next b
        // start, not an a.
        let b = started.iter().find(|s| &*s.key == "b").unwrap().key.clone();
        dispatch.finished(&b, now);
        let next = dispatch.poll(now).start;
        assert_eq!(next.len(), 1);
        assert_eq!(&*next[0].key, "b");
        assert_eq!(dispatch.waiting(), 6);
    }

    #[test]
    fn higher_priority_first_and_ageing_lifts_the_low() {
        let t0 = Instant::now();
        let mut strict = Dispatch::new(
            Rules {
                concurrency: Some(1),
                ..Rules::default()
            },
            t0,
        );
        strict.push("", 0, None, 1, t0);
        strict.push("", 5, None, 2, t0);
        strict.push("", 5, None, 3, t0);
        strict.push("", -1, None, 4, t0);
        let mut order = Vec::new();
        for _ in 0..4 {
            order.extend(run_all(&mut strict, t0));
        }
        assert_eq!(order, [2, 3, 1, 4]);

        let mut aged = Dispatch::new(
            Rules {
                concurrency: Some(1),
                ageing: Some(Duration::from_secs(1)),
                ..Rules::default()
            },
            t0,
        );
        let running = {
            aged.push("", 0, None, 0, t0);
            aged.poll(t0).start
        };
        aged.push("", 0, None, 1, t0);
        let later = t0 + Duration::from_secs(3);
        aged.push("", 2, None, 2, later);
        aged.push("", 4, None, 3, later);
        aged.finished(&running[0].key, later);
        let mut order = Vec::new();
        for _ in 0..3 {
            order.extend(run_all(&mut aged, later));
        }
        // 1 waited 3 s: level 3, above 2's level 2, below 3's level 4.
        assert_eq!(order, [3, 1, 2]);
    }

    #[test]
    fn a_rate_spaces_starts_and_a_burst_lets_some_at_once() {
        let t0 = Instant::now();
        let mut dispatch = Dispatch::new(
            Rules {
                rate: rate("10/s", 1),
                ..Rules::default()
            },
            t0,
        );
        for i in 0..100 {
            dispatch.push("", 0, None, i, t0);
        }
        // Poll at each wake for 1 s: 10 starts, one each 100 ms.
        let mut now = t0;
        let mut starts = Vec::new();
        loop {
            let polled = dispatch.poll(now);
            for started in &polled.start {
                starts.push(now - t0);
                dispatch.finished(&started.key, now);
            }
            now = polled.wake.expect("waiting tasks wake the rate");
            if now - t0 >= Duration::from_secs(1) {
                break;
            }
        }
        assert_eq!(starts.len(), 10, "{starts:?}");
        assert_eq!(starts[9], Duration::from_millis(900));

        let mut burst = Dispatch::new(
            Rules {
                rate: rate("1/s", 5),
                ..Rules::default()
            },
            t0,
        );
        for i in 0..10 {
            burst.push("", 0, None, i, t0);
        }
        let polled = burst.poll(t0);
        assert_eq!(polled.start.len(), 5);
        assert_eq!(polled.wake, Some(t0 + Duration::from_secs(1)));
    }

    /// Review of 4cc60c0: each push and poll under a blocking rate counted
    /// as a throttled start (101 for 100 pushes); now one per start held
    /// back.
    #[test]
    fn throttled_counts_held_back_starts_not_polls() {
        let t0 = Instant::now();
        let mut dispatch = Dispatch::new(
            Rules {
                rate: rate("1/s", 1),
                key_rate: rate("1/s", 1),
                ..Rules::default()
            },
            t0,
        );
        dispatch.push("a", 0, None, 0, t0);
        run_all(&mut dispatch, t0);
        for i in 0..100 {
            dispatch.push("a", 0, None, i, t0);
            dispatch.poll(t0);
        }
        assert_eq!(dispatch.throttled(), 1, "key a was held back once");
        dispatch.push("b", 0, None, 0, t0);
        for _ in 0..100 {
            dispatch.poll(t0);
        }
        assert_eq!(
            dispatch.throttled(),
            2,
            "then the queue's rate held b back once"
        );
    }

    #[test]
    fn waking_a_little_late_each_time_keeps_the_rate() {
        let t0 = Instant::now();
        let mut dispatch = Dispatch::new(
            Rules {
                rate: rate("100/s", 1),
                ..Rules::default()
            },
            t0,
        );
        for i in 0..2_000 {
            dispatch.push("", 0, None, i, t0);
        }
        // Each wake 1.5 ms after the instant asked for, as a coarse timer.
        let (mut now, mut starts) = (t0, 0);
        while now < t0 + Duration::from_secs(10) {
            let polled = dispatch.poll(now);
            for started in &polled.start {
                dispatch.finished(&started.key, now);
            }
            starts += polled.start.len();
            now = polled.wake.expect("more wait") + Duration::from_micros(1_500);
        }
        assert!(
            (999..=1_001).contains(&starts),
            "{starts} starts in 10 s at 100/s"
        );
    }

    #[test]
    fn a_key_rate_blocks_only_its_key() {
        let t0 = Instant::now();
        let mut dispatch = Dispatch::new(
            Rules {
                key_rate: rate("1/s", 1),
                ..Rules::default()
            },
            t0,
        );
        for i in 0..3 {
            dispatch.push("a", 0, None, i, t0);
            dispatch.push("b", 0, None, 10 + i, t0);
        }
        assert_eq!(run_all(&mut dispatch, t0), [0, 10]);
        let polled = dispatch.poll(t0 + Duration::from_millis(999));
        assert!(polled.start.is_empty());
        assert_eq!(polled.wake, Some(t0 + Duration::from_secs(1)));
        assert_eq!(run_all(&mut dispatch, t0 + Duration::from_secs(1)), [1, 11]);
        // A key whose tasks all ran is remembered until its rate would
        // allow a start anyway, so a new task cannot skip the rate.
        run_all(&mut dispatch, t0 + Duration::from_secs(2));
        assert_eq!(dispatch.keys(), 2);
        dispatch.push("a", 0, None, 3, t0 + Duration::from_millis(2500));
        assert!(
            dispatch
                .poll(t0 + Duration::from_millis(2500))
                .start
                .is_empty()
        );
        assert_eq!(run_all(&mut dispatch, t0 + Duration::from_secs(3)), [3]);
        dispatch.poll(t0 + Duration::from_secs(10));
        assert_eq!(dispatch.keys(), 0, "idle keys are forgotten");
    }

    /// Review of 4cc60c0: with `key_rate = "1/d"` every key that started
    /// was remembered for a day, so a client sending new keys grew the
    /// queue without end.
    #[test]
    fn idle_keys_remembered_for_their_rate_are_bounded() {
        let t0 = Instant::now();
        let mut dispatch = Dispatch::new(
            Rules {
                key_rate: rate("1/d", 1),
                cooling_keys: Some(100),
                ..Rules::default()
            },
            t0,
        );
        for i in 0..1_000 {
            dispatch.push(&format!("k{i}"), 0, None, i, t0);
            run_all(&mut dispatch, t0);
        }
        assert_eq!(dispatch.keys(), 100);
    }

    #[test]
    fn a_delayed_task_starts_at_its_time_and_a_removed_one_never() {
        let t0 = Instant::now();
        let mut dispatch = Dispatch::new(Rules::default(), t0);
        let at = t0 + Duration::from_secs(600);
        dispatch.push("k", 0, Some(at), 1, t0);
        let cancelled = dispatch.push("k", 0, None, 2, t0);
        assert_eq!(dispatch.waiting_of("k"), Some(&2));
        assert_eq!(dispatch.remove(cancelled, t0), Some(2));
        assert_eq!(dispatch.remove(cancelled, t0), None);
        assert_eq!(
            dispatch.waiting_of("k"),
            Some(&1),
            "a delayed task waits too"
        );
        let polled = dispatch.poll(t0 + Duration::from_secs(599));
        assert!(polled.start.is_empty());
        assert_eq!(polled.wake, Some(at));
        assert_eq!(run_all(&mut dispatch, at), [1]);
        assert_eq!((dispatch.waiting(), dispatch.keys()), (0, 0));
    }

    #[test]
    fn the_oldest_wait_counts_a_delayed_task_from_when_it_came_due() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let rules = Rules {
            concurrency: Some(1),
            ..Rules::default()
        };
        let mut dispatch = Dispatch::new(rules, t0);
        dispatch.push("", 0, None, 0, t0);
        assert_eq!(dispatch.poll(t0).start.len(), 1);
        assert_eq!(
            dispatch.oldest_wait(t0),
            None,
            "the running one waits no more"
        );
        dispatch.push("", 0, Some(t0 + secs(10)), 1, t0);
        let later = dispatch.push("", 0, None, 2, t0 + secs(20));
        // Due at 10 s: it has waited longer than the one that came at 20.
        assert!(dispatch.poll(t0 + secs(30)).start.is_empty());
        assert_eq!(dispatch.oldest_wait(t0 + secs(30)), Some(secs(20)));
        dispatch.finished(&Arc::from(""), t0 + secs(30));
        let started = dispatch.poll(t0 + secs(30)).start;
        assert_eq!(started[0].item, 1, "the delayed one came due first");
        assert_eq!(dispatch.oldest_wait(t0 + secs(30)), Some(secs(10)));
        assert_eq!(dispatch.remove(later, t0 + secs(30)), Some(2));
        assert_eq!(dispatch.oldest_wait(t0 + secs(30)), None);
    }

    #[test]
    fn a_task_put_back_with_its_earlier_wait_has_aged_and_waited_since_then() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let rules = Rules {
            concurrency: Some(1),
            ageing: Some(secs(1)),
            ..Rules::default()
        };
        let mut dispatch = Dispatch::new(rules, t0);
        let now = t0 + secs(100);
        dispatch.push("", 0, None, 0, now);
        let high = dispatch.push("", 5, None, 1, now);
        // Submitted 50 s before the restart: 50 levels gained meanwhile.
        dispatch.push_waited("", 0, None, Some(t0 + secs(50)), 2, now);
        assert_eq!(dispatch.oldest_wait(now), Some(secs(50)));
        let first = dispatch.poll(now).start;
        assert_eq!(first[0].item, 2, "its priority aged while it was down");
        assert_eq!(first[0].waited, secs(50));
        assert_eq!(dispatch.remove(high, now), Some(1));
    }

    #[test]
    fn top_keys_are_the_most_waiting_first() {
        let t0 = Instant::now();
        let mut dispatch = Dispatch::new(Rules::default(), t0);
        dispatch.set_paused(true);
        for (key, n) in [("one", 1), ("three", 3), ("two", 2), ("four", 4)] {
            for i in 0..n {
                dispatch.push(key, 0, None, i, t0);
            }
        }
        let top: Vec<(String, usize)> = dispatch
            .top_keys(2)
            .into_iter()
            .map(|load| (load.key.to_string(), load.waiting))
            .collect();
        assert_eq!(top, [("four".to_string(), 4), ("three".to_string(), 3)]);
    }

    #[test]
    fn nothing_starts_while_paused() {
        let t0 = Instant::now();
        let mut dispatch = Dispatch::new(Rules::default(), t0);
        dispatch.push("", 0, None, 1, t0);
        dispatch.set_paused(true);
        assert!(dispatch.poll(t0).start.is_empty());
        dispatch.set_paused(false);
        assert_eq!(run_all(&mut dispatch, t0), [1]);
    }

    #[test]
    fn a_queue_that_bounds_nothing_starts_a_task_at_once_unless_one_waits() {
        let t0 = Instant::now();
        let mut dispatch: Dispatch<u32> = Dispatch::new(Rules::default(), t0);
        let a = dispatch
            .start_at_once("a")
            .expect("nothing bounds or waits");
        let again = dispatch.start_at_once("a").expect("still nothing waits");
        assert!(Arc::ptr_eq(&a, &again), "a key's tasks share its copy");
        assert_eq!(dispatch.running(), 2);
        assert_eq!(dispatch.top_keys(1)[0].running, 2, "counted by its key");
        // A limit set meanwhile counts what started at once.
        dispatch.set_rules(
            Rules {
                per_key: Some(2),
                ..Rules::default()
            },
            t0,
        );
        assert!(
            dispatch.start_at_once("a").is_none(),
            "the queue bounds now"
        );
        dispatch.push("a", 0, None, 1, t0);
        assert!(run_all(&mut dispatch, t0).is_empty(), "key a runs 2 of 2");
        dispatch.finished(&a, t0);
        // (run_all ends what it starts.)
        assert_eq!(run_all(&mut dispatch, t0), [1]);
        dispatch.finished(&again, t0);
        assert_eq!((dispatch.running(), dispatch.keys()), (0, 0), "all ended");

        // A task that may start waits (paused): the next takes its turn
        // after it, not at once; a delayed one does not hold it back.
        let mut dispatch: Dispatch<u32> = Dispatch::new(Rules::default(), t0);
        dispatch.push("", 0, Some(t0 + Duration::from_secs(60)), 1, t0);
        // What a durable submission asks first (to count its attempt in
        // its record) says what entering then does.
        assert!(dispatch.starts_at_once(), "only a delayed one waits");
        assert!(dispatch.start_at_once("").is_some(), "only a delayed one");
        dispatch.set_paused(true);
        assert!(!dispatch.starts_at_once(), "paused");
        assert!(dispatch.start_at_once("").is_none(), "paused");
        dispatch.set_paused(false);
        dispatch.set_paused(true);
        dispatch.push("", 0, None, 2, t0);
        dispatch.set_paused(false);
        assert!(dispatch.start_at_once("").is_none(), "task 2 waits first");
        assert_eq!(run_all(&mut dispatch, t0), [2]);
    }
}
