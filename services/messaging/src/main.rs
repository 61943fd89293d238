//! The `messaging` binary: `messaging serve` (the default) or `messaging migrate`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    leadflow_platform::host::run(
        &leadflow_messaging::SPEC,
        leadflow_messaging::Config::from_env,
        leadflow_messaging::build,
    )
    .await
}
