//! Registered sources.

use anyhow::Context;
use chrono::{DateTime, Utc};
use leadflow_proto::capture::v1::SourceSettings;
use prost::Message;
use sqlx::PgPool;

use crate::domain::source::SourcePolicy;

/// A stored source.
#[derive(Debug, Clone)]
pub struct StoredSource {
    pub policy: SourcePolicy,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Reads and writes sources.
#[derive(Debug, Clone)]
pub struct SourceStore {
    pool: PgPool,
}

type SourceRow = (String, Vec<u8>, DateTime<Utc>, DateTime<Utc>);

fn from_row(
    (source_id, settings, created_at, updated_at): SourceRow,
) -> anyhow::Result<StoredSource> {
    let settings =
        SourceSettings::decode(settings.as_slice()).context("decode stored source settings")?;
    let policy = SourcePolicy::parse(&source_id, Some(settings)).map_err(|violations| {
        anyhow::anyhow!("stored source {source_id} no longer valid: {violations:?}")
    })?;
    Ok(StoredSource {
        policy,
        created_at,
        updated_at,
    })
}

impl SourceStore {
    /// Returns a store on `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Inserts a source; `None` when the id is taken.
    pub async fn create(&self, policy: &SourcePolicy) -> anyhow::Result<Option<StoredSource>> {
        let row: Option<SourceRow> = sqlx::query_as(
            "INSERT INTO capture.sources (source_id, settings, form_key) VALUES ($1, $2, $3) \
             ON CONFLICT (source_id) DO NOTHING RETURNING source_id, settings, created_at, updated_at",
        )
        .bind(&policy.source_id)
        .bind(policy.settings.encode_to_vec())
        .bind(policy.form_key())
        .fetch_optional(&self.pool)
        .await
        .context("insert source")?;
        row.map(from_row).transpose()
    }

    /// Replaces a source's settings; `None` when there is no such source.
    pub async fn update(&self, policy: &SourcePolicy) -> anyhow::Result<Option<StoredSource>> {
        let row: Option<SourceRow> = sqlx::query_as(
            "UPDATE capture.sources SET settings = $2, form_key = $3, updated_at = now() WHERE source_id = $1 \
             RETURNING source_id, settings, created_at, updated_at",
        )
        .bind(&policy.source_id)
        .bind(policy.settings.encode_to_vec())
        .bind(policy.form_key())
        .fetch_optional(&self.pool)
        .await
        .context("update source")?;
        row.map(from_row).transpose()
    }

    /// Returns one source.
    pub async fn get(&self, source_id: &str) -> anyhow::Result<Option<StoredSource>> {
        let row: Option<SourceRow> = sqlx::query_as(
            "SELECT source_id, settings, created_at, updated_at FROM capture.sources WHERE source_id = $1",
        )
        .bind(source_id)
        .fetch_optional(&self.pool)
        .await
        .context("select source")?;
        row.map(from_row).transpose()
    }

    /// Returns the source whose web form has `form_key`.
    pub async fn by_form_key(&self, form_key: &str) -> anyhow::Result<Option<StoredSource>> {
        let row: Option<SourceRow> = sqlx::query_as(
            "SELECT source_id, settings, created_at, updated_at FROM capture.sources WHERE form_key = $1",
        )
        .bind(form_key)
        .fetch_optional(&self.pool)
        .await
        .context("select source by form key")?;
        row.map(from_row).transpose()
    }

    /// Returns every source, by id.
    pub async fn list(&self) -> anyhow::Result<Vec<StoredSource>> {
        let rows: Vec<SourceRow> = sqlx::query_as(
            "SELECT source_id, settings, created_at, updated_at FROM capture.sources ORDER BY source_id",
        )
        .fetch_all(&self.pool)
        .await
        .context("select sources")?;
        rows.into_iter().map(from_row).collect()
    }
}
