//! capture's own commands, beside the platform's `serve`, `migrate` and `create-api-key`.

use anyhow::Context;

use crate::Config;
use crate::rotation::{self, Options};
use crate::store::{DataKeyStore, WRAPPED_KEY_COLUMNS};

/// Connections `rotate-keys` opens: it works one batch at a time.
const ROTATION_CONNECTIONS: u32 = 2;

/// What the `capture` binary can do beyond serving.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum CaptureCommand {
    /// Re-wrap every data key under CAPTURE_PII_KEY (after a key rotation)
    ///
    /// Afterwards the keys in CAPTURE_PII_PREVIOUS_KEYS can be dropped. Safe beside a serving
    /// capture, and to interrupt and run again. Exits non-zero when a data key cannot be
    /// unwrapped with the configured keys. With --dry-run, prints how many data keys each key
    /// wrapped.
    RotateKeys {
        /// Only count the data keys each key wrapped; change nothing
        #[arg(long)]
        dry_run: bool,
        /// Data keys re-wrapped per transaction
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        batch_size: u32,
    },
}

/// Runs `command` with capture's configuration.
pub async fn run(command: CaptureCommand, config: Config) -> anyhow::Result<()> {
    match command {
        CaptureCommand::RotateKeys {
            dry_run,
            batch_size,
        } => {
            rotate_keys(
                config,
                Options {
                    dry_run,
                    batch_size,
                },
            )
            .await
        }
    }
}

async fn rotate_keys(config: Config, options: Options) -> anyhow::Result<()> {
    let keyring = config.settings.keyring()?;
    let pool = leadflow_platform::postgres::connect_with_limit(
        &config.common.database_url,
        crate::SPEC.name,
        ROTATION_CONNECTIONS,
        &[],
    )
    .await?;
    let store = DataKeyStore::new(pool.clone(), keyring);
    let mut out = std::io::stdout();
    let totals = rotation::rotate_keys(&store, WRAPPED_KEY_COLUMNS, options, &mut out)
        .await
        .context("rotate keys")?;
    pool.close().await;
    if totals.failed > 0 {
        anyhow::bail!(
            "{} data keys cannot be unwrapped with CAPTURE_PII_KEY or CAPTURE_PII_PREVIOUS_KEYS and were left as they are; \
             add the keys that wrapped them to CAPTURE_PII_PREVIOUS_KEYS and run again",
            totals.failed
        );
    }
    if totals.left_behind > 0 {
        anyhow::bail!(
            "{} data keys are still under another key after every pass (is every capture running with the new CAPTURE_PII_KEY?); run again",
            totals.left_behind
        );
    }
    Ok(())
}
