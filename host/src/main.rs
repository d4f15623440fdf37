fn main() -> std::process::ExitCode {
    taskhost::cli::main()
}
