//! Key-value state for guests, through the standard `wasi:keyvalue`
//! interfaces (`store`, `atomics`, `batch` of 0.2.0-draft2, as Spin
//! implements them), so any language's bindings of them work.
//!
//! A bucket a task opens is its plugin's own (`PLUGIN/NAME` in the storage,
//! see [`crate::storage::BucketId`]): no other plugin can name it, so isolation
//! needs no check at all. A name the plugin's `[plugins.NAME.grants] kv`
//! lists opens that shared bucket instead. Over a `[limits] kv_*` bound a
//! call fails with `other("limit: ...")`, naming the setting.
//!
//! Calls keep working while the task is being cancelled: cleanup code may
//! need to save where it stopped, and no call waits on anything but the
//! storage. The interface has no state but a count of open handles: a
//! view borrows what the store already holds (the task's identity, its
//! plugin's grants, the app's storage and the resource table), so a task
//! that never opens a bucket costs nothing more.

use crate::bindings::wasi::keyvalue::{atomics, batch, store};
use crate::config::PluginPolicy;
use crate::journal::JournalError;
use crate::storage::kv::{EncodeAnswer, KvWrite, KvWritten};
use crate::storage::{BucketId, KvError, KvStore, Swap};
use crate::task::TaskIdent;
use crate::telemetry::{Attr, CallSpan, SpanKind, Telemetry};
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

/// Keys one `list-keys` call returns at most; the cursor gives the rest.
const KEYS_PER_PAGE: usize = 1000;

/// Bucket and CAS handles one task may hold at once: each costs host
/// memory outside the task's own, so a loop of `open` must end.
pub(crate) const MAX_HANDLES: u32 = 1024;

/// What one call works with, borrowed from the task's store.
pub(crate) struct KvView<'a> {
    pub ident: &'a TaskIdent,
    pub policy: &'a PluginPolicy,
    /// The host's key-value store; none in the throw-away instances that
    /// list factories and check arguments at load, which have no worker.
    pub storage: Option<&'a Arc<dyn KvStore>>,
    pub table: &'a mut ResourceTable,
    /// Bucket and CAS handles the task holds now.
    pub handles: &'a mut u32,
    /// Where each call's span goes (`[telemetry]`).
    pub telemetry: Option<&'a Arc<Telemetry>>,
    /// A resuming task's journal: its calls are answered from it while it
    /// replays, and recorded after.
    pub journal: Option<&'a Arc<crate::journal::Journal>>,
}

/// What a guest's `bucket` handle stands for (kept in the table; the
/// generated `store::Bucket` is only its name in signatures).
struct BucketHandle {
    id: BucketId,
}

/// What a guest's `cas` handle stands for: the key's version when it was
/// read (not its value: `current` reads that, so a held handle costs the
/// host a few bytes, whatever the value's size).
struct CasHandle {
    bucket: BucketId,
    key: String,
    /// `None`: the key was absent.
    version: Option<u64>,
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

/// Links `wasi:keyvalue/store`, `atomics` and `batch` (async) for stores
/// whose data gives a [`KvView`] through `view`.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> anyhow::Result<()> {
    store::add_to_linker::<T, HasKv>(linker, view)
        .and_then(|()| atomics::add_to_linker::<T, HasKv>(linker, view))
        .and_then(|()| batch::add_to_linker::<T, HasKv>(linker, view))
        .map_err(|e| anyhow::anyhow!("cannot add wasi:keyvalue to the linker: {e:#}"))
}

type KvResult<T> = wasmtime::Result<Result<T, store::Error>>;

impl<'a> KvView<'a> {
    fn storage(&self) -> Result<Arc<dyn KvStore>, store::Error> {
        self.storage.cloned().ok_or_else(|| {
            store::Error::Other(
                "key-value storage is not open here: an instance made at load (to list \
                 factories or check arguments) runs no task"
                    .into(),
            )
        })
    }

    fn bucket(&self, bucket: &Resource<store::Bucket>) -> wasmtime::Result<BucketId> {
        let handle: Resource<BucketHandle> = Resource::new_borrow(bucket.rep());
        Ok(self.table.get(&handle)?.id.clone())
    }

    /// Counts a new handle, or says why not.
    fn take_handle(&mut self) -> Result<(), store::Error> {
        if *self.handles >= MAX_HANDLES {
            return Err(store::Error::Other(format!(
                "limit: a task may hold at most {MAX_HANDLES} buckets and CAS handles at once; \
                 drop some"
            )));
        }
        *self.handles += 1;
        Ok(())
    }

    fn release_handle(&mut self) {
        *self.handles = self.handles.saturating_sub(1);
    }

    fn push_cas(
        &mut self,
        cas: CasHandle,
    ) -> wasmtime::Result<Result<Resource<atomics::Cas>, store::Error>> {
        if let Err(error) = self.take_handle() {
            return Ok(Err(error));
        }
        Ok(Ok(Resource::new_own(self.table.push(cas)?.rep())))
    }

    /// A read of `key` as a CAS handle.
    async fn read_cas(
        &mut self,
        bucket: BucketId,
        key: String,
    ) -> wasmtime::Result<Result<Resource<atomics::Cas>, store::Error>> {
        let storage = match self.storage() {
            Ok(storage) => storage,
            Err(error) => return Ok(Err(error)),
        };
        let ctx = self.ctx();
        let span = ctx.span("kv get", &bucket);
        let read = storage.get_versioned(&bucket, &key).await;
        CallSpan::end_with(span, &read);
        let read = match read {
            Ok(read) => read,
            Err(error) => return Ok(Err(ctx.error(error))),
        };
        self.push_cas(CasHandle {
            bucket,
            key,
            version: read.map(|read| read.version),
        })
    }

    /// What a call's future needs of the view: `Sync` parts only, so the
    /// future is `Send` while the view (which holds the resource table)
    /// is not `Sync`.
    fn ctx(&self) -> Ctx<'a> {
        Ctx {
            ident: self.ident,
            telemetry: self.telemetry,
            journal: self.journal,
        }
    }
}

/// The parts of a [`KvView`] a call's future uses.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    ident: &'a TaskIdent,
    telemetry: Option<&'a Arc<Telemetry>>,
    journal: Option<&'a Arc<crate::journal::Journal>>,
}

impl Ctx<'_> {
    /// `live` (the call `call` names) for a resuming task: answered from
    /// its journal while it replays, else performed and recorded; for any
    /// other task, performed. A journal that stops traps the task.
    async fn journaled<T>(
        &self,
        read: bool,
        call: impl FnOnce() -> String,
        live: impl std::future::Future<Output = Result<T, store::Error>>,
    ) -> KvResult<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let Some(journal) = self.journal else {
            return Ok(live.await);
        };
        let text = |error: &store::Error| match error {
            store::Error::Other(message) => message.clone(),
            other => format!("{other:?}"),
        };
        let encode = |answer: &Result<T, store::Error>| {
            serde_json::to_vec(&answer.as_ref().map_err(text)).unwrap_or_default()
        };
        // A read is committed with the next call that waits; a write
        // before its answer is given.
        let answer = match read {
            true => crate::journal::journaled_read(journal, call(), live, encode, decode).await,
            false => crate::journal::journaled(journal, call(), live, encode, decode).await,
        };
        match answer {
            Err(JournalError::Cancelled) => Ok(Err(cancelled())),
            answer => Ok(answer?),
        }
    }

    /// A write (`write()`, which `live` makes) for a resuming task: on a
    /// store that journals writes ([`KvStore::write_journaled`]) the write
    /// and its step commit in one transaction, so a resumed task never
    /// makes it twice; elsewhere as [`Ctx::journaled`]. `project` makes
    /// the guest's answer of the store's.
    #[allow(clippy::too_many_arguments)]
    async fn journaled_write<T>(
        &self,
        storage: &Arc<dyn KvStore>,
        bucket: &BucketId,
        op: &'static str,
        call: impl FnOnce() -> String,
        write: impl FnOnce() -> KvWrite,
        project: fn(KvWritten) -> T,
        live: impl std::future::Future<Output = Result<T, store::Error>>,
    ) -> KvResult<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + 'static,
    {
        let Some(journal) = self.journal else {
            return Ok(live.await);
        };
        if !storage.journals_writes() {
            return self.journaled(false, call, live).await;
        }
        let call = call();
        if let Some(answer) = crate::journal::replayed(journal, &call, decode::<T>)? {
            return Ok(answer);
        }
        let span = self.span(op, bucket);
        let encode: EncodeAnswer = Box::new(move |answer| {
            let answer = answer.as_ref().map(|written| project(*written));
            serde_json::to_vec(&answer.map_err(guest_text)).unwrap_or_default()
        });
        let answer = match journal
            .record_within(call, |steps| {
                let written = storage.write_journaled(bucket, write(), steps, encode);
                async move {
                    written
                        .await
                        .map(|journaled| (journaled.answer, journaled.outcome_bytes))
                        .map_err(|error| error.to_string())
                }
            })
            .await
        {
            Err(JournalError::Cancelled) => return Ok(Err(cancelled())),
            answer => answer?,
        };
        CallSpan::end_with(span, &answer);
        Ok(answer.map(project).map_err(|error| self.error(error)))
    }

    /// A call's span (`[telemetry]`): `kv OP`, naming its bucket.
    fn span(&self, op: &'static str, bucket: &BucketId) -> Option<CallSpan> {
        CallSpan::start(self.telemetry, self.ident, SpanKind::Client, op).map(|span| {
            span.with("db.system.name", Attr::Text("taskhost.kv".into()))
                .with("db.namespace", Attr::Text(bucket.to_string()))
        })
    }

    /// The guest's error for a storage error; a limit is logged too, since
    /// the operator is the one who can raise it.
    fn error(&self, error: KvError) -> store::Error {
        let text = guest_text(&error);
        match error {
            KvError::Limit(limit) => {
                tracing::warn!(
                    task = %self.ident.label(),
                    task_id = self.ident.id,
                    plugin = %self.ident.plugin,
                    "task {} of plugin {}: key-value write refused: {limit}",
                    self.ident.label(),
                    self.ident.plugin,
                );
                store::Error::Other(text)
            }
            KvError::Storage(message) => {
                // The details (the database's path among them) are the
                // operator's, not the sandboxed guest's.
                tracing::error!(
                    task = %self.ident.label(),
                    task_id = self.ident.id,
                    plugin = %self.ident.plugin,
                    "task {} of plugin {}: key-value storage failed: {message}",
                    self.ident.label(),
                    self.ident.plugin,
                );
                store::Error::Other(text)
            }
            _ => store::Error::Other(text),
        }
    }
}

/// A resuming task's write after its cancel: refused, not made.
fn cancelled() -> store::Error {
    store::Error::Other(JournalError::Cancelled.to_string())
}

/// What the guest is told of a storage error: the details of a failed
/// store (the database's path among them) are the operator's, not the
/// sandboxed guest's.
fn guest_text(error: &KvError) -> String {
    match error {
        KvError::Limit(limit) => format!("limit: {limit}"),
        KvError::Storage(_) => "the key-value storage failed (the host log says why)".into(),
        other => other.to_string(),
    }
}

/// A journaled answer as [`Ctx::journaled`] encodes it: JSON of the
/// answer or the guest's error text.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<Result<T, store::Error>> {
    serde_json::from_slice::<Result<T, String>>(bytes)
        .ok()
        .map(|answer| answer.map_err(store::Error::Other))
}

/// The storage, or the guest's error from the enclosing call when there is
/// none.
macro_rules! storage {
    ($view:expr) => {
        match $view.storage() {
            Ok(storage) => storage,
            Err(error) => return Ok(Err(error)),
        }
    };
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> KvResult<Resource<store::Bucket>> {
        let granted = self.policy.grants.kv.contains(&identifier);
        let id = if granted {
            BucketId::shared(&identifier)
        } else {
            BucketId::private(&self.ident.plugin, &identifier)
        };
        let id = match id {
            Ok(id) => id,
            Err(error) => return Ok(Err(store::Error::Other(error.to_string()))),
        };
        if let Err(error) = self.storage() {
            return Ok(Err(error));
        }
        if let Err(error) = self.take_handle() {
            return Ok(Err(error));
        }
        let handle = self.table.push(BucketHandle { id })?;
        Ok(Ok(Resource::new_own(handle.rep())))
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<store::Bucket>,
        key: String,
    ) -> KvResult<Option<Vec<u8>>> {
        let id = self.bucket(&bucket)?;
        let storage = storage!(self);
        let ctx = self.ctx();
        ctx.journaled(true, || format!("kv get {id} {key}"), async {
            let span = ctx.span("kv get", &id);
            let got = storage.get(&id, &key).await;
            CallSpan::end_with(span, &got);
            got.map_err(|e| ctx.error(e))
        })
        .await
    }

    async fn set(
        &mut self,
        bucket: Resource<store::Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> KvResult<()> {
        let id = self.bucket(&bucket)?;
        let storage = storage!(self);
        let ctx = self.ctx();
        ctx.journaled_write(
            &storage,
            &id,
            "kv set",
            || format!("kv set {id} {key} {}", crate::journal::digest(&value)),
            || KvWrite::Set {
                key: key.clone(),
                value: value.clone(),
            },
            |_| (),
            async {
                let span = ctx.span("kv set", &id);
                let set = storage.set(&id, &key, &value).await;
                CallSpan::end_with(span, &set);
                set.map_err(|e| ctx.error(e))
            },
        )
        .await
    }

    async fn delete(&mut self, bucket: Resource<store::Bucket>, key: String) -> KvResult<()> {
        let id = self.bucket(&bucket)?;
        let storage = storage!(self);
        let ctx = self.ctx();
        ctx.journaled_write(
            &storage,
            &id,
            "kv delete",
            || format!("kv delete {id} {key}"),
            || KvWrite::Delete { key: key.clone() },
            |_| (),
            async {
                let span = ctx.span("kv delete", &id);
                let deleted = storage.delete(&id, &key).await;
                CallSpan::end_with(span, &deleted);
                deleted.map(drop).map_err(|e| ctx.error(e))
            },
        )
        .await
    }

    async fn exists(&mut self, bucket: Resource<store::Bucket>, key: String) -> KvResult<bool> {
        let id = self.bucket(&bucket)?;
        let storage = storage!(self);
        let ctx = self.ctx();
        ctx.journaled(true, || format!("kv exists {id} {key}"), async {
            let span = ctx.span("kv exists", &id);
            let got = storage.get(&id, &key).await;
            CallSpan::end_with(span, &got);
            got.map(|v| v.is_some()).map_err(|e| ctx.error(e))
        })
        .await
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<store::Bucket>,
        cursor: Option<String>,
    ) -> KvResult<store::KeyResponse> {
        let id = self.bucket(&bucket)?;
        let storage = storage!(self);
        let ctx = self.ctx();
        let call = || format!("kv list_keys {id} {}", cursor.as_deref().unwrap_or(""));
        let page = ctx
            .journaled(true, call, async {
                let span = ctx.span("kv list_keys", &id);
                let page = storage
                    .list_keys(&id, cursor.as_deref(), KEYS_PER_PAGE)
                    .await;
                CallSpan::end_with(span, &page);
                page.map(|page| (page.keys, page.next))
                    .map_err(|e| ctx.error(e))
            })
            .await?;
        Ok(page.map(|(keys, cursor)| store::KeyResponse { keys, cursor }))
    }

    async fn drop(&mut self, bucket: Resource<store::Bucket>) -> wasmtime::Result<()> {
        self.table
            .delete(Resource::<BucketHandle>::new_own(bucket.rep()))?;
        self.release_handle();
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<store::Bucket>,
        key: String,
        delta: i64,
    ) -> KvResult<i64> {
        let id = self.bucket(&bucket)?;
        let storage = storage!(self);
        let ctx = self.ctx();
        ctx.journaled_write(
            &storage,
            &id,
            "kv increment",
            || format!("kv increment {id} {key} {delta}"),
            || KvWrite::Increment {
                key: key.clone(),
                delta,
            },
            |written| match written {
                KvWritten::Sum(sum) => sum,
                KvWritten::Done => 0,
            },
            async {
                let span = ctx.span("kv increment", &id);
                let sum = storage.increment(&id, &key, delta).await;
                CallSpan::end_with(span, &sum);
                sum.map_err(|e| ctx.error(e))
            },
        )
        .await
    }

    async fn swap(
        &mut self,
        cas: Resource<atomics::Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let cas = self
            .table
            .delete(Resource::<CasHandle>::new_own(cas.rep()))?;
        self.release_handle();
        let storage = match self.storage() {
            Ok(storage) => storage,
            Err(error) => return Ok(Err(atomics::CasError::StoreError(error))),
        };
        let ctx = self.ctx();
        let span = ctx.span("kv swap", &cas.bucket);
        let swapped = storage
            .swap(&cas.bucket, &cas.key, cas.version, &value)
            .await
            .map_err(|e| ctx.error(e));
        if let Some(mut span) = span {
            let changed = matches!(swapped, Ok(Swap::Changed(_)));
            span.set("taskhost.kv.swapped", Attr::Text((!changed).to_string()));
            span.end(swapped.as_ref().err().map(|e| format!("{e:?}")));
        }
        Ok(match swapped {
            Ok(Swap::Done) => Ok(()),
            // The spec asks for a handle at the latest version, so the
            // guest can retry at once.
            Ok(Swap::Changed(_)) => match self.read_cas(cas.bucket, cas.key).await? {
                Ok(fresh) => Err(atomics::CasError::CasFailed(fresh)),
                Err(error) => Err(atomics::CasError::StoreError(error)),
            },
            Err(error) => Err(atomics::CasError::StoreError(error)),
        })
    }
}

impl atomics::HostCas for KvView<'_> {
    async fn new(
        &mut self,
        bucket: Resource<store::Bucket>,
        key: String,
    ) -> KvResult<Resource<atomics::Cas>> {
        let id = self.bucket(&bucket)?;
        self.read_cas(id, key).await
    }

    /// The key's value now. If it changed since the handle was made, a
    /// swap with this handle fails and hands back a fresh one.
    async fn current(&mut self, cas: Resource<atomics::Cas>) -> KvResult<Option<Vec<u8>>> {
        let handle: Resource<CasHandle> = Resource::new_borrow(cas.rep());
        let handle = self.table.get(&handle)?;
        let (bucket, key) = (handle.bucket.clone(), handle.key.clone());
        let storage = storage!(self);
        let ctx = self.ctx();
        let span = ctx.span("kv get", &bucket);
        let value = storage.get(&bucket, &key).await;
        CallSpan::end_with(span, &value);
        Ok(value.map_err(|e| ctx.error(e)))
    }

    async fn drop(&mut self, cas: Resource<atomics::Cas>) -> wasmtime::Result<()> {
        self.table
            .delete(Resource::<CasHandle>::new_own(cas.rep()))?;
        self.release_handle();
        Ok(())
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<store::Bucket>,
        keys: Vec<String>,
    ) -> KvResult<Vec<Option<(String, Vec<u8>)>>> {
        let id = self.bucket(&bucket)?;
        let storage = storage!(self);
        let ctx = self.ctx();
        ctx.journaled(
            true,
            || format!("kv get_many {id} {}", keys.join(",")),
            async {
                let span = ctx.span("kv get_many", &id);
                let values = storage.get_many(&id, &keys).await;
                CallSpan::end_with(span, &values);
                values.map_err(|e| ctx.error(e)).map(|values| {
                    keys.iter()
                        .cloned()
                        .zip(values)
                        .map(|(key, value)| value.map(|value| (key, value)))
                        .collect()
                })
            },
        )
        .await
    }

    async fn set_many(
        &mut self,
        bucket: Resource<store::Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> KvResult<()> {
        let id = self.bucket(&bucket)?;
        let storage = storage!(self);
        let ctx = self.ctx();
        let call = || {
            let pairs: Vec<String> = key_values
                .iter()
                .map(|(key, value)| format!("{key}={}", crate::journal::digest(value)))
                .collect();
            format!("kv set_many {id} {}", pairs.join(","))
        };
        ctx.journaled_write(
            &storage,
            &id,
            "kv set_many",
            call,
            || KvWrite::SetMany(key_values.clone()),
            |_| (),
            async {
                let span = ctx.span("kv set_many", &id);
                let set = storage.set_many(&id, &key_values).await;
                CallSpan::end_with(span, &set);
                set.map_err(|e| ctx.error(e))
            },
        )
        .await
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<store::Bucket>,
        keys: Vec<String>,
    ) -> KvResult<()> {
        let id = self.bucket(&bucket)?;
        let storage = storage!(self);
        let ctx = self.ctx();
        ctx.journaled_write(
            &storage,
            &id,
            "kv delete_many",
            || format!("kv delete_many {id} {}", keys.join(",")),
            || KvWrite::DeleteMany(keys.clone()),
            |_| (),
            async {
                let span = ctx.span("kv delete_many", &id);
                let deleted = storage.delete_many(&id, &keys).await;
                CallSpan::end_with(span, &deleted);
                deleted.map_err(|e| ctx.error(e))
            },
        )
        .await
    }
}
