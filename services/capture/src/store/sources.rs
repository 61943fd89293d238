//! Registered sources.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// How long a source read from the database is used without reading it again: every capture
/// needs its source, and its settings change seldom. A change made through this process is
/// seen at once; one made through another replica, within this time.
pub const SOURCE_CACHE_TTL: Duration = Duration::from_secs(5);
/// How many sources are cached at most (per lookup: by id, by form key).
const SOURCE_CACHE_CAPACITY: u64 = 10_000;

/// Reads and writes sources; found sources are cached for [`SOURCE_CACHE_TTL`], unknown ids
/// and form keys are not (each costs one indexed lookup).
#[derive(Clone)]
pub struct SourceStore {
    pool: PgPool,
    by_id: moka::future::Cache<String, StoredSource>,
    by_form_key: moka::future::Cache<String, StoredSource>,
    /// Bumped by every change, so that a read that raced a change is not cached.
    generation: Arc<AtomicU64>,
}

fn source_cache() -> moka::future::Cache<String, StoredSource> {
    moka::future::Cache::builder()
        .max_capacity(SOURCE_CACHE_CAPACITY)
        .time_to_live(SOURCE_CACHE_TTL)
        .build()
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
        Self {
            pool,
            by_id: source_cache(),
            by_form_key: source_cache(),
            generation: Arc::default(),
        }
    }

    /// Forgets every cached source (a source changed; its form key may have too).
    fn forget(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.by_id.invalidate_all();
        self.by_form_key.invalidate_all();
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
        self.forget();
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
        self.forget();
        row.map(from_row).transpose()
    }

    /// Returns one source.
    pub async fn get(&self, source_id: &str) -> anyhow::Result<Option<StoredSource>> {
        if let Some(source) = self.by_id.get(source_id).await {
            return Ok(Some(source));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let row: Option<SourceRow> = sqlx::query_as(
            "SELECT source_id, settings, created_at, updated_at FROM capture.sources WHERE source_id = $1",
        )
        .bind(source_id)
        .fetch_optional(&self.pool)
        .await
        .context("select source")?;
        let source = row.map(from_row).transpose()?;
        if let Some(source) = &source
            && self.generation.load(Ordering::SeqCst) == generation
        {
            self.by_id
                .insert(source_id.to_owned(), source.clone())
                .await;
            // A change between the check and the insert: its invalidation may have run first.
            if self.generation.load(Ordering::SeqCst) != generation {
                self.by_id.invalidate(source_id).await;
            }
        }
        Ok(source)
    }

    /// Returns the source whose web form has `form_key`.
    pub async fn by_form_key(&self, form_key: &str) -> anyhow::Result<Option<StoredSource>> {
        if let Some(source) = self.by_form_key.get(form_key).await {
            return Ok(Some(source));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let row: Option<SourceRow> = sqlx::query_as(
            "SELECT source_id, settings, created_at, updated_at FROM capture.sources WHERE form_key = $1",
        )
        .bind(form_key)
        .fetch_optional(&self.pool)
        .await
        .context("select source by form key")?;
        let source = row.map(from_row).transpose()?;
        if let Some(source) = &source
            && self.generation.load(Ordering::SeqCst) == generation
        {
            self.by_form_key
                .insert(form_key.to_owned(), source.clone())
                .await;
            // A change between the check and the insert: its invalidation may have run first.
            if self.generation.load(Ordering::SeqCst) != generation {
                self.by_form_key.invalidate(form_key).await;
            }
        }
        Ok(source)
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
