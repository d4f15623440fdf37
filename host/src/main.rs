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
