fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(kybctl::cli::main())
}
