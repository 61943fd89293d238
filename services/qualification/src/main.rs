//! The `qualification` binary: `qualification serve` (the default) or `qualification migrate`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    leadflow_platform::host::run(
        &leadflow_qualification::SPEC,
        leadflow_qualification::Config::from_env,
        leadflow_qualification::build,
    )
    .await
}
