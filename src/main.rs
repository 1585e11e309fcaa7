use std::process::ExitCode;

use clap::Parser;

/// glibc malloc keeps what large requests freed: a 1,000-item batch (~9 MB of
/// JSON, parsed) left RSS near 150 MiB for good. Allocations of 1 MiB and up
/// are always mmapped, so they go back to the system when freed (by default the
/// threshold grows to the largest block freed, up to 32 MiB), and two arenas
/// instead of 8 per core bound what fragmentation can hold.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    tune_malloc();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(run())
}

async fn run() -> ExitCode {
    context_api::cli::run(context_api::cli::Cli::parse()).await
}
