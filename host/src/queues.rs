//! The app's queues (`[[queues]]`) at run time: how many of each queue's
//! tasks wait, and the permits that bound how many run.
//!
//! A task submitted to a queue is registered at once (state `queued`: it
//! can be got, listed and cancelled, and keeps its name) but holds no
//! instance. It takes a waiting place ([`Queue::enter`], refused past
//! `max_waiting`), then waits for its turn ([`Waiting::turn`]: a permit of
//! the queue's `concurrency`, shared by every worker, first come first
//! served), and runs holding that permit until it ends.

use crate::config::{DEFAULT_QUEUE, Limit, LimitUnit, QueueConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Every queue of the app, by name.
pub(crate) struct Queues {
    by_name: HashMap<String, Arc<Queue>>,
    /// Names in app.toml's order, for error messages.
    names: Vec<String>,
    /// Tasks waiting in any queue, kept as one count (every queue's places
    /// add to it) because each task start reads it.
    waiting: Arc<AtomicU64>,
}

impl Queues {
    /// The queues app.toml lists (which always include `default`).
    pub(crate) fn new(configs: &[QueueConfig]) -> Queues {
        let mut queues = Queues {
            by_name: HashMap::new(),
            names: Vec::new(),
            waiting: Arc::default(),
        };
        let default = QueueConfig {
            name: DEFAULT_QUEUE.to_string(),
            concurrency: None,
            max_waiting: crate::config::DEFAULT_MAX_WAITING,
        };
        let listed = configs.iter().any(|config| config.name == DEFAULT_QUEUE);
        for config in configs.iter().chain((!listed).then_some(&default)) {
            queues.names.push(config.name.clone());
            queues.by_name.insert(
                config.name.clone(),
                Arc::new(Queue {
                    name: config.name.as_str().into(),
                    running: config
                        .concurrency
                        .map(|n| Arc::new(Semaphore::new(n as usize))),
                    max_waiting: config.max_waiting,
                    waiting: AtomicU64::new(0),
                    all_waiting: queues.waiting.clone(),
                }),
            );
        }
        queues
    }

    /// The queue `name`, or an error that lists the queues there are.
    pub(crate) fn get(&self, name: &str) -> Result<&Arc<Queue>, String> {
        self.by_name.get(name).ok_or_else(|| {
            format!(
                "no queue named `{name}` (queues: {}; app.toml's [[queues]] makes one)",
                self.names.join(", ")
            )
        })
    }

    /// Tasks waiting in any queue: they hold no instance, so they do not
    /// count against `tasks_per_app`.
    pub(crate) fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// One queue.
pub(crate) struct Queue {
    name: Arc<str>,
    /// Permits for `concurrency`; none: no bound of the queue's own.
    running: Option<Arc<Semaphore>>,
    max_waiting: u64,
    waiting: AtomicU64,
    /// [`Queues`]'s count of every queue's waiting tasks.
    all_waiting: Arc<AtomicU64>,
}

impl Queue {
    /// The queue's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Takes a waiting place, or refuses past `max_waiting`.
    pub(crate) fn enter(self: &Arc<Self>) -> Result<Waiting, Limit> {
        let taken = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < self.max_waiting).then_some(waiting + 1)
            });
        match taken {
            Ok(_) => {
                self.all_waiting.fetch_add(1, Ordering::AcqRel);
                Ok(Waiting {
                    queue: self.clone(),
                })
            }
            Err(_) => Err(Limit {
                what: format!(
                    "the waiting tasks of queue `{}` ([[queues]] max_waiting)",
                    self.name
                ),
                max: self.max_waiting,
                got: self.max_waiting + 1,
                unit: LimitUnit::Tasks,
                setting: None,
            }),
        }
    }
}

/// A task's place in its queue, given back when it is dropped (the task
/// got its turn, or was cancelled while waiting).
pub(crate) struct Waiting {
    queue: Arc<Queue>,
}

impl Waiting {
    /// Waits for the queue to let the task run: a permit of its
    /// `concurrency`, in the order tasks asked for one. The task holds
    /// the [`Turn`] until it ends.
    pub(crate) async fn turn(self) -> Turn {
        let permit = match &self.queue.running {
            Some(permits) => Some(
                permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("a queue's semaphore is never closed"),
            ),
            None => None,
        };
        Turn { _permit: permit }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
        self.queue.all_waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running task's share of its queue's `concurrency`, given back when
/// the task has ended.
pub(crate) struct Turn {
    _permit: Option<OwnedSemaphorePermit>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(concurrency: Option<u32>, max_waiting: u64) -> Queues {
        Queues::new(&[QueueConfig {
            name: "q".into(),
            concurrency,
            max_waiting,
        }])
    }

    #[test]
    fn waiting_places_are_bounded_and_given_back() {
        let queues = queues(None, 2);
        let queue = queues.get("q").unwrap();
        let first = queue.enter().unwrap();
        let _second = queue.enter().unwrap();
        let Err(refused) = queue.enter() else {
            panic!("a third waiting place past max_waiting 2");
        };
        assert_eq!(refused.max, 2);
        assert!(refused.what.contains("queue `q`"), "{}", refused.what);
        assert_eq!(queues.waiting(), 2);
        drop(first);
        assert_eq!(queues.waiting(), 1);
        queue.enter().unwrap();
        assert!(
            queues
                .get("nope")
                .err()
                .unwrap()
                .contains("queues: q, default")
        );
    }

    #[tokio::test]
    async fn turns_are_bounded_by_concurrency_in_arrival_order() {
        let queues = queues(Some(1), 10);
        let queue = queues.get("q").unwrap();
        let first = queue.enter().unwrap().turn().await;
        let second = tokio::spawn(queue.enter().unwrap().turn());
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        drop(first);
        second.await.unwrap();
    }
}
