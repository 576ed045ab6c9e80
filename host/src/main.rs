//! The `sluice` binary: parses the command line and hands over to the library.

/// mimalloc: the host allocates small, short-lived buffers per request and per event from many
/// threads; glibc's arenas spent measurable time (and `mprotect` calls) on that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
