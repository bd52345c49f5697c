//! `walle`: the Walle command line for task authors and release managers (see `walle_sdk::cli`).

use std::process::ExitCode;

// `walle task test` runs tasks: charge their allocations to their budgets (walle_vm::TaskAllocator).
#[global_allocator]
static ALLOCATOR: walle_vm::TaskAllocator = walle_vm::TaskAllocator;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    walle_sdk::cli::main().await
}
