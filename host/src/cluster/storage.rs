//! The host's storage in a cluster: durable tasks on the cluster's
//! JetStream queue ([`super::durable`]), so they outlive their host, and
//! key-value state in JetStream KV ([`super::kv`]), so every host sees it;
//! schedules' progress stays in the host's own database, since each tick
//! is claimed in the cluster anyway (`super::ticks`).

use super::durable::DurableQueue;
use super::kv::ClusterKv;
use crate::storage::{
    BucketId, BucketStats, KeyPage, KvFuture, KvStore, NewTask, ScheduleMark, ScheduleStore,
    Storage, Submitted, Swap, TaskRecord, TaskStore, TaskStoreFuture, Versioned,
};
use crate::task::Outcome;
use std::sync::Arc;

/// Durable tasks and key-value state in the cluster, schedules' progress
/// in `local`.
pub struct ClusterStorage {
    local: Arc<dyn Storage>,
    tasks: Arc<DurableQueue>,
    kv: Arc<ClusterKv>,
}

impl ClusterStorage {
    pub fn new(
        local: Arc<dyn Storage>,
        tasks: Arc<DurableQueue>,
        kv: Arc<ClusterKv>,
    ) -> ClusterStorage {
        ClusterStorage { local, tasks, kv }
    }
}

impl TaskStore for ClusterStorage {
    fn submit<'a>(&'a self, task: &'a NewTask) -> TaskStoreFuture<'a, Submitted> {
        self.tasks.submit(task)
    }
    fn forget(&self, seq: u64) -> TaskStoreFuture<'_, ()> {
        self.tasks.forget(seq)
    }
    fn attempt_started(&self, seq: u64, attempt: u32) -> TaskStoreFuture<'_, ()> {
        self.tasks.attempt_started(seq, attempt)
    }
    fn cancel_requested(&self, seq: u64) -> TaskStoreFuture<'_, ()> {
        self.tasks.cancel_requested(seq)
    }
    fn ended<'a>(
        &'a self,
        seq: u64,
        outcome: &'a Outcome,
        stopped: bool,
    ) -> TaskStoreFuture<'a, bool> {
        self.tasks.ended(seq, outcome, stopped)
    }
    fn unfinished(&self) -> TaskStoreFuture<'_, Vec<TaskRecord>> {
        self.tasks.unfinished()
    }
    fn recently_ended(&self, limit: usize) -> TaskStoreFuture<'_, Vec<TaskRecord>> {
        self.tasks.recently_ended(limit)
    }
    fn purge_ended(&self) -> TaskStoreFuture<'_, u64> {
        self.tasks.purge_ended()
    }
    fn lease(&self, seq: u64) -> Option<std::sync::Arc<crate::task::Lease>> {
        self.tasks.lease(seq)
    }
}

impl KvStore for ClusterStorage {
    fn get<'a>(&'a self, bucket: &'a BucketId, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        self.kv.get(bucket, key)
    }
    fn get_versioned<'a>(
        &'a self,
        bucket: &'a BucketId,
        key: &'a str,
    ) -> KvFuture<'a, Option<Versioned>> {
        self.kv.get_versioned(bucket, key)
    }
    fn set<'a>(&'a self, bucket: &'a BucketId, key: &'a str, value: &'a [u8]) -> KvFuture<'a, ()> {
        self.kv.set(bucket, key, value)
    }
    fn delete<'a>(&'a self, bucket: &'a BucketId, key: &'a str) -> KvFuture<'a, bool> {
        self.kv.delete(bucket, key)
    }
    fn list_keys<'a>(
        &'a self,
        bucket: &'a BucketId,
        after: Option<&'a str>,
        limit: usize,
    ) -> KvFuture<'a, KeyPage> {
        self.kv.list_keys(bucket, after, limit)
    }
    fn increment<'a>(
        &'a self,
        bucket: &'a BucketId,
        key: &'a str,
        delta: i64,
    ) -> KvFuture<'a, i64> {
        self.kv.increment(bucket, key, delta)
    }
    fn swap<'a>(
        &'a self,
        bucket: &'a BucketId,
        key: &'a str,
        expected: Option<u64>,
        value: &'a [u8],
    ) -> KvFuture<'a, Swap> {
        self.kv.swap(bucket, key, expected, value)
    }
    fn get_many<'a>(
        &'a self,
        bucket: &'a BucketId,
        keys: &'a [String],
    ) -> KvFuture<'a, Vec<Option<Vec<u8>>>> {
        self.kv.get_many(bucket, keys)
    }
    fn set_many<'a>(
        &'a self,
        bucket: &'a BucketId,
        entries: &'a [(String, Vec<u8>)],
    ) -> KvFuture<'a, ()> {
        self.kv.set_many(bucket, entries)
    }
    fn delete_many<'a>(&'a self, bucket: &'a BucketId, keys: &'a [String]) -> KvFuture<'a, ()> {
        self.kv.delete_many(bucket, keys)
    }
    fn buckets(&self) -> KvFuture<'_, Vec<BucketStats>> {
        self.kv.buckets()
    }
}

impl ScheduleStore for ClusterStorage {
    fn schedule_mark<'a>(&'a self, name: &'a str) -> TaskStoreFuture<'a, Option<ScheduleMark>> {
        self.local.schedule_mark(name)
    }
    fn set_schedule_mark<'a>(
        &'a self,
        name: &'a str,
        mark: ScheduleMark,
    ) -> TaskStoreFuture<'a, ()> {
        self.local.set_schedule_mark(name, mark)
    }
    fn added_schedules(&self) -> TaskStoreFuture<'_, Vec<(String, String)>> {
        self.local.added_schedules()
    }
    fn add_schedule<'a>(&'a self, name: &'a str, spec: &'a str) -> TaskStoreFuture<'a, ()> {
        self.local.add_schedule(name, spec)
    }
    fn remove_schedule<'a>(&'a self, name: &'a str) -> TaskStoreFuture<'a, bool> {
        self.local.remove_schedule(name)
    }
}
