//! The `capture` binary: `capture serve` (the default), `capture migrate`,
//! `capture create-api-key` or `capture rotate-keys`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    leadflow_platform::host::run_with_commands(
        &leadflow_capture::SPEC,
        leadflow_capture::Config::from_env,
        leadflow_capture::build,
        leadflow_capture::commands::run,
    )
    .await
}
