/// mimalloc, not glibc's malloc: a durable task's writes are allocated on
/// its worker's thread and freed on the store's, and glibc's per-thread
/// arenas then take a lock on each such free, contended by the worker
/// allocating in the same arena. In the queues bench's durable rows the
/// store's thread blocked on that lock in 12% of its context switches
/// (`perf sched`), and 1,024 durable queued tasks in flight per worker
/// ran at 29,000-33,000 tasks/s with glibc and 37,000-39,000 with mimalloc
/// (one build, same run conditions). The speed bench uses the same.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Errors made by the host's libraries (anyhow, wasmtime's) capture a
    // backtrace when RUST_BACKTRACE is set, and their debug text reaches
    // guests (a stream error's `to-debug-string`: an HTTP body over its
    // limit showed the host's frames to the guest, issue 24). Only panics
    // keep RUST_BACKTRACE's meaning unless the operator asks for more.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the first thing the process does, before any thread.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    taskhost::cli::main()
}
