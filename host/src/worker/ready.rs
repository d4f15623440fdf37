//! Instances prepared ahead of demand, per worker.
//!
//! Once a task of a plugin has started on a worker, the worker makes the
//! next instance of that plugin as soon as the tasks queued before have had
//! their turn, so the plugin's next task on that worker starts without
//! instantiating. What it saves and what it costs are in docs/speed.md:
//! a spawn's instantiation moves off the spawn's path, and each worker holds
//! at most one idle instance (one warm slot, a few pages) per plugin it ran
//! recently.
//!
//! A prepared instance belongs to one build of its plugin: a hot-load drops
//! the old build's ([`ReadyInstances::forget`]), so a replaced build still
//! goes once its last task has ended.

use crate::plugin::Plugin;
use crate::runner::Prepared;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Plugins a worker keeps a prepared instance of, at most: each holds a
/// warm slot, which tasks need more.
const MAX_PLUGINS: usize = 8;

/// One worker's prepared instances, by plugin name.
pub(crate) struct ReadyInstances {
    entries: Mutex<HashMap<Arc<str>, Entry>>,
    /// `taskhost_prepared_instances`: the ready ones of every worker.
    gauge: Gauge,
}

enum Entry {
    Ready(Prepared),
    /// Being made: no second one is started meanwhile.
    Preparing,
}

impl ReadyInstances {
    pub(crate) fn new(gauge: Gauge) -> ReadyInstances {
        ReadyInstances {
            entries: Mutex::default(),
            gauge,
        }
    }

    /// Takes the entry of `plugin` out; a ready one leaves the gauge.
    fn remove(&self, entries: &mut HashMap<Arc<str>, Entry>, plugin: &str) -> Option<Entry> {
        let entry = entries.remove(plugin);
        if let Some(Entry::Ready(_)) = entry {
            self.gauge.dec();
        }
        entry
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The prepared instance of `plugin`'s build, if one is ready. One of
    /// another build is dropped (outside the lock).
    pub(crate) fn take(&self, plugin: &Arc<Plugin>) -> Option<Prepared> {
        let prepared = {
            let mut entries = self.entries();
            match self.remove(&mut entries, &plugin.name)? {
                Entry::Ready(prepared) => prepared,
                preparing => {
                    entries.insert(plugin.name.clone(), preparing);
                    return None;
                }
            }
        };
        Arc::ptr_eq(&prepared.plugin, plugin).then_some(prepared)
    }

    /// Whether to make an instance of `plugin` now: not if one is ready or
    /// being made, nor if the worker keeps as many plugins' as it may.
    /// A yes is recorded: the caller must [`ReadyInstances::finish`].
    pub(crate) fn begin(&self, plugin: &Arc<str>) -> bool {
        let mut entries = self.entries();
        if entries.contains_key(plugin) || entries.len() >= MAX_PLUGINS {
            return false;
        }
        entries.insert(plugin.clone(), Entry::Preparing);
        true
    }

    /// Ends what [`ReadyInstances::begin`] started: keeps `prepared` if it
    /// is of `serving`, the build that serves the plugin now.
    pub(crate) fn finish(
        &self,
        plugin: &Arc<str>,
        prepared: Option<Prepared>,
        serving: Option<Arc<Plugin>>,
    ) {
        let mut entries = self.entries();
        let current =
            prepared.filter(|p| serving.is_some_and(|serving| Arc::ptr_eq(&serving, &p.plugin)));
        let dropped = self.remove(&mut entries, plugin);
        if let Some(prepared) = current {
            entries.insert(plugin.clone(), Entry::Ready(prepared));
            self.gauge.inc();
        }
        drop(entries);
        drop(dropped);
    }

    /// Drops the prepared instance of `plugin`, if any: a new build
    /// replaced it.
    pub(crate) fn forget(&self, plugin: &str) {
        let mut entries = self.entries();
        let dropped = match entries.get(plugin) {
            Some(Entry::Ready(_)) => self.remove(&mut entries, plugin),
            // One being made is checked against the serving build when done.
            _ => None,
        };
        drop(entries);
        drop(dropped);
    }
}

impl Drop for ReadyInstances {
    /// The worker is gone: its ready instances leave the gauge.
    fn drop(&mut self) {
        let entries = self.entries.get_mut().unwrap_or_else(|e| e.into_inner());
        for entry in entries.values() {
            if let Entry::Ready(_) = entry {
                self.gauge.dec();
            }
        }
    }
}
