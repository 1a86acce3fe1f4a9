/// See Cargo.toml: glibc's allocator was a measured share of every request's CPU.
#[global_allocator]
static ALLOCATOR: kybctl::allocator::MiMalloc = kybctl::allocator::MiMalloc;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(kybctl::cli::main())
}
