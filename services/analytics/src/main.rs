//! The `analytics` binary: `analytics serve` (the default) or `analytics migrate`.

use leadflow_analytics::{Application, Config, SERVICE, config::PREFIX};
use leadflow_platform::config::{load, or_exit};
use leadflow_platform::host::Command;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Command::from_args();
    // `migrate` needs only the shared settings: the Kubernetes Job carries no service secrets.
    let common = or_exit(SERVICE, load(PREFIX));
    let telemetry = leadflow_platform::telemetry::init(SERVICE)?;
    match command {
        Command::Migrate => Application::migrate(&common).await?,
        Command::Serve => {
            let config = or_exit(SERVICE, Config::from_env());
            let app = Application::build(config).await?;
            app.run_until(leadflow_platform::shutdown_signal()).await?;
        }
    }
    telemetry.shutdown().await
}
