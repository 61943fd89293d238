//! The `capture` binary: `capture serve` (the default) or `capture migrate`.

use leadflow_capture::{Application, Config};
use leadflow_platform::config::EXIT_CONFIG;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = leadflow_platform::host::Command::from_args();
    let config = Config::from_env().unwrap_or_else(|err| {
        eprintln!("capture: configuration error: {err}");
        std::process::exit(EXIT_CONFIG);
    });
    let telemetry = leadflow_platform::telemetry::init("capture")?;
    match command {
        leadflow_platform::host::Command::Migrate => Application::migrate(config).await?,
        leadflow_platform::host::Command::Serve => {
            let app = Application::build(config).await?;
            app.run_until(leadflow_platform::shutdown_signal()).await?;
        }
    }
    telemetry.shutdown().await
}
