//! The `analytics` binary: `analytics serve` (the default) or `analytics migrate`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    leadflow_platform::host::run(
        &leadflow_analytics::SPEC,
        leadflow_analytics::Config::from_env,
        leadflow_analytics::build,
    )
    .await
}
