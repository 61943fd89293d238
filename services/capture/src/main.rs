//! The `capture` binary: `capture serve` (the default) or `capture migrate`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    leadflow_platform::host::run(
        &leadflow_capture::SPEC,
        leadflow_capture::Config::from_env,
        leadflow_capture::build,
    )
    .await
}
