//! `pixelmesh <role>`: see [`pixelmesh::cli`].

// Image buffers are tens of megabytes; mimalloc keeps them mapped between tasks instead of
// returning them to the OS and faulting them in again on every image.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pixelmesh::cli::main()
}
