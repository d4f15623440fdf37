//! The floor: the same component on the same engine configuration, driven by
//! plain wasmtime with nothing of taskhost (no registry, no workers, no
//! limits, no logging). The `app` imports do the least they can; WASI state
//! is created only if the guest touches it, as taskhost does, so the two
//! differ only in taskhost's own machinery.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use taskhost::bench::bindings::taskhost::plugin::{app, connections, types};
use taskhost::bench::bindings::{Plugin, PluginPre};
use tokio::sync::Notify;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub struct RawData {
    wasi: Option<WasiCtx>,
    /// Built on first use, as taskhost does.
    http: Option<WasiHttpCtx>,
    table: ResourceTable,
    stop: Stopper,
    /// Counts the guest's entries into `sleep`, to know idle tasks are idle.
    asleep: Option<Arc<AtomicUsize>>,
}

impl RawData {
    pub fn stopper(&self) -> Stopper {
        self.stop.clone()
    }

    /// Counts in `asleep` each time the guest enters `sleep`.
    pub fn count_sleeps(&mut self, asleep: &Arc<AtomicUsize>) {
        self.asleep = Some(asleep.clone());
    }
}

/// The least a host needs to stop a task: a wake-up that makes a guest
/// blocked in `sleep` return `cancelled` (cooperative), and a flag the epoch
/// callback reads to interrupt a guest computing (forced).
#[derive(Clone, Default)]
pub struct Stopper {
    cancelled: Arc<AtomicBool>,
    wake: Arc<Notify>,
    forced: Arc<AtomicBool>,
}

impl Stopper {
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.wake.notify_waiters();
    }

    pub fn force(&self) {
        self.forced.store(true, Ordering::Relaxed);
    }
}

impl WasiView for RawData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(WasiCtx::default),
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RawData {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: self.http.get_or_insert_with(WasiHttpCtx::new),
            hooks: wasmtime_wasi_http::default_hooks(),
            table: &mut self.table,
        }
    }
}

/// Defines the component's `wasi:keyvalue` imports as functions that trap
/// and resources of no use (wasmtime's `define_unknown_imports_as_traps`
/// would also shadow WASI's newer-versioned names).
fn stub_keyvalue(linker: &mut Linker<RawData>, component: &Component) {
    use wasmtime::component::ResourceType;
    use wasmtime::component::types::ComponentItem;
    let engine = linker.engine().clone();
    for (name, item) in component.component_type().imports(&engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        if !name.starts_with("wasi:keyvalue/") {
            continue;
        }
        let mut stubs = linker.instance(name).expect("keyvalue instance");
        for (export, item) in instance.exports(&engine) {
            match item.ty {
                ComponentItem::Resource(_) => stubs
                    .resource(export, ResourceType::host::<()>(), |_, _| Ok(()))
                    .expect("resource stub"),
                ComponentItem::ComponentFunc(_) => stubs
                    .func_new(export, |_, _, _, _| {
                        wasmtime::bail!("wasi:keyvalue is a stub in the raw floor")
                    })
                    .expect("function stub"),
                _ => {}
            }
        }
    }
}

impl types::Host for RawData {}

/// The bench plugin imports `connections` (its websocket task); the raw
/// floor has no connections, so each call says so.
impl connections::Host for RawData {
    async fn recv(&mut self, id: u64) -> Answer<Option<connections::Message>> {
        Ok(Err(types::Error::NotFound(format!("connection {id}"))))
    }
    async fn send(&mut self, id: u64, _message: connections::Message) -> Answer<()> {
        Ok(Err(types::Error::NotFound(format!("connection {id}"))))
    }
    async fn close(&mut self, id: u64, _code: u16, _reason: String) -> Answer<()> {
        Ok(Err(types::Error::NotFound(format!("connection {id}"))))
    }
}

type Answer<T> = wasmtime::Result<Result<T, types::Error>>;

impl app::Host for RawData {
    async fn name(&mut self) -> wasmtime::Result<String> {
        Ok("raw".into())
    }
    async fn worker(&mut self) -> wasmtime::Result<Option<u32>> {
        Ok(Some(0))
    }
    async fn task_id(&mut self) -> wasmtime::Result<u64> {
        Ok(1)
    }
    async fn attempt(&mut self) -> wasmtime::Result<u32> {
        Ok(1)
    }
    async fn stop_retrying(&mut self) -> wasmtime::Result<()> {
        Ok(())
    }
    async fn idempotency_key(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(None)
    }
    async fn config(&mut self, _key: String) -> wasmtime::Result<Option<String>> {
        Ok(None)
    }
    async fn log(&mut self, _level: types::Level, _message: String) -> wasmtime::Result<()> {
        Ok(())
    }
    async fn sleep(&mut self, ms: u64) -> Answer<()> {
        if let Some(asleep) = &self.asleep {
            asleep.fetch_add(1, Ordering::Relaxed);
        }
        let woken = self.stop.wake.notified();
        if self.stop.cancelled.load(Ordering::Relaxed) {
            return Ok(Err(types::Error::Cancelled));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms.min(u32::MAX.into()))) => Ok(Ok(())),
            _ = woken => Ok(Err(types::Error::Cancelled)),
        }
    }
    async fn add_task(
        &mut self,
        _plugin: Option<String>,
        _factory: String,
        _args: String,
        _name: Option<String>,
    ) -> Answer<u64> {
        Ok(Err(types::Error::Failed("raw".into())))
    }
    async fn start_task(
        &mut self,
        _plugin: Option<String>,
        _factory: String,
        _args: String,
        _options: app::TaskOptions,
    ) -> Answer<u64> {
        Ok(Err(types::Error::Failed("raw".into())))
    }
    async fn start_task_on(
        &mut self,
        _host: String,
        _plugin: Option<String>,
        _factory: String,
        _args: String,
        _options: app::TaskOptions,
        _cluster_name: bool,
    ) -> Answer<Vec<app::PlacedTask>> {
        Ok(Err(types::Error::Failed("raw".into())))
    }
    async fn add_schedule(&mut self, _spec: String) -> Answer<()> {
        Ok(Err(types::Error::Failed("raw".into())))
    }
    async fn remove_schedule(&mut self, _name: String) -> Answer<bool> {
        Ok(Err(types::Error::Failed("raw".into())))
    }
    async fn get_task(&mut self, name: String) -> Answer<types::TaskInfo> {
        Ok(Err(types::Error::NotFound(name)))
    }
    async fn cancel_task(&mut self, name: String) -> Answer<types::TaskInfo> {
        Ok(Err(types::Error::NotFound(name)))
    }
    async fn tasks(&mut self) -> wasmtime::Result<Vec<types::TaskInfo>> {
        Ok(Vec::new())
    }
    async fn purge_tasks(&mut self) -> wasmtime::Result<u32> {
        Ok(0)
    }
    async fn dispatch(&mut self, _event: String, _payload: String) -> Answer<u32> {
        Ok(Ok(0))
    }
    async fn wait_event(
        &mut self,
        _event: String,
        _timeout: Option<u64>,
    ) -> Answer<Option<String>> {
        Ok(Ok(None))
    }
    async fn join(
        &mut self,
        _task: app::TaskRef,
        _timeout: Option<u64>,
    ) -> Answer<Option<types::TaskInfo>> {
        Ok(Err(types::Error::Failed("raw".into())))
    }
    async fn join_all(
        &mut self,
        _tasks: Vec<app::TaskRef>,
        _timeout: Option<u64>,
    ) -> Answer<Option<Vec<types::TaskInfo>>> {
        Ok(Err(types::Error::Failed("raw".into())))
    }
    async fn join_any(
        &mut self,
        _tasks: Vec<app::TaskRef>,
        _timeout: Option<u64>,
    ) -> Answer<Option<(u32, types::TaskInfo)>> {
        Ok(Err(types::Error::Failed("raw".into())))
    }
}

/// A component, compiled and pre-instantiated on `engine`.
pub struct RawPlugin {
    engine: Engine,
    pre: PluginPre<RawData>,
}

impl RawPlugin {
    pub fn new(engine: &Engine, component: &std::path::Path) -> RawPlugin {
        let component = Component::from_file(engine, component).expect("component");
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
        // `app` and `connections`: the bench plugin imports nothing else of
        // the world.
        types::add_to_linker::<RawData, HasSelf<RawData>>(&mut linker, |d| d).expect("types");
        app::add_to_linker::<RawData, HasSelf<RawData>>(&mut linker, |d| d).expect("app");
        connections::add_to_linker::<RawData, HasSelf<RawData>>(&mut linker, |d| d)
            .expect("connections");
        // wasi:http for real (no request is sent: only its linking counts);
        // wasi:keyvalue as stubs that trap if called. The floor for a
        // component with those imports that calls none of them.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).expect("http");
        stub_keyvalue(&mut linker, &component);
        let pre = PluginPre::new(linker.instantiate_pre(&component).expect("pre")).expect("pre");
        RawPlugin {
            engine: engine.clone(),
            pre,
        }
    }

    /// A store as a task would have one: with epoch interruption on, the
    /// guest yields every tick and stops once `stop` is set.
    pub fn store(&self) -> Store<RawData> {
        let mut store = Store::new(
            &self.engine,
            RawData {
                wasi: None,
                http: None,
                table: ResourceTable::new(),
                stop: Stopper::default(),
                asleep: None,
            },
        );
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|cx| {
            if cx.data().stop.forced.load(Ordering::Relaxed) {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        store
    }

    pub async fn instantiate(&self, store: &mut Store<RawData>) -> Plugin {
        self.pre
            .instantiate_async(store)
            .await
            .expect("instantiate")
    }

    /// New store, instance, one call of `factory`, dropped: a whole task.
    pub async fn run(&self, factory: &str, args: &str) -> wasmtime::Result<()> {
        self.run_store(self.store(), factory, args).await
    }

    /// `run`, counting in `asleep` each time the guest enters `sleep`.
    pub async fn run_counting(
        &self,
        factory: &str,
        args: &str,
        asleep: &Arc<AtomicUsize>,
    ) -> wasmtime::Result<()> {
        let mut store = self.store();
        store.data_mut().count_sleeps(asleep);
        self.run_store(store, factory, args).await
    }

    /// `run` in a store made beforehand.
    pub async fn run_store(
        &self,
        mut store: Store<RawData>,
        factory: &str,
        args: &str,
    ) -> wasmtime::Result<()> {
        let plugin = self.instantiate(&mut store).await;
        plugin
            .taskhost_plugin_factories()
            .call_run(&mut store, factory, args)
            .await?
            .map(drop)
            .map_err(|e| wasmtime::Error::msg(format!("{e:?}")))
    }
}
