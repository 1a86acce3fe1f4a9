/// See Cargo.toml: glibc's allocator was a measured share of every request's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(kybctl::cli::main())
}
