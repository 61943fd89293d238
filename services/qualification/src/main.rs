//! The `qualification` binary: `qualification serve` (the default) or `qualification migrate`.

/// mimalloc, not the system allocator: a call allocates and frees hundreds of small buffers
/// across both worker threads, and glibc's malloc was 14 % of capture's CPU under load.
/// Built without transparent huge pages (`no_thp`): with them its arenas grew capture's idle
/// RSS from 21 to 41 MB (B13's limit is 30).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    leadflow_platform::host::run(
        &leadflow_qualification::SPEC,
        leadflow_qualification::Config::from_env,
        leadflow_qualification::build,
    )
    .await
}
