//! Wrapped data keys wherever capture stores them: counted by the key-encryption key that
//! wrapped them, and re-wrapped under the primary key in short batches (key rotation).

use anyhow::Context;
use leadflow_platform::pii::{
    KEY_ID_LEN, KeyId, Keyring, PiiError, WRAPPED_LEGACY_LEN, WRAPPED_V1_LEN, WRAPPED_V1_VERSION,
    WrappedBy,
};
use sqlx::PgPool;
use uuid::Uuid;

/// A column of wrapped data keys, each bound to (wrapped with the associated data of) its
/// row's UUID primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrappedKeyColumn {
    /// Schema-qualified table.
    pub table: &'static str,
    /// The UUID primary key each data key is bound to.
    pub id: &'static str,
    /// The column holding the wrapped data key (NULL once destroyed).
    pub column: &'static str,
}

/// Every column that holds a wrapped data key: a new one is one more line here.
pub const WRAPPED_KEY_COLUMNS: &[WrappedKeyColumn] = &[
    WrappedKeyColumn {
        table: "capture.leads",
        id: "lead_id",
        column: "data_key",
    },
    WrappedKeyColumn {
        table: "capture.merge_reviews",
        id: "review_id",
        column: "data_key",
    },
];

impl std::fmt::Display for WrappedKeyColumn {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}.{}", self.table, self.column)
    }
}

/// How many data keys of a column one key-encryption key wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCount {
    /// What wrapped them; `None` for values in neither layout (damaged).
    pub wrapped_by: Option<WrappedBy>,
    pub count: i64,
}

/// What one batch of [`DataKeyStore::rewrap_batch`] did.
#[derive(Debug, Default)]
pub struct Batch {
    /// Rows looked at (locked and not yet under the primary key); 0 means the pass is over.
    pub scanned: usize,
    /// Data keys now wrapped by the primary key.
    pub rewrapped: u64,
    /// Rows whose data key could not be unwrapped with the configured keys, left as they are.
    pub failed: Vec<(Uuid, PiiError)>,
    /// The last row looked at: the next batch starts after it.
    pub last_id: Option<Uuid>,
}

/// Counts and re-wraps capture's wrapped data keys.
#[derive(Clone)]
pub struct DataKeyStore {
    pool: PgPool,
    keyring: Keyring,
}

impl DataKeyStore {
    /// Returns a store re-wrapping under `keyring`'s primary key.
    pub fn new(pool: PgPool, keyring: Keyring) -> Self {
        Self { pool, keyring }
    }

    /// Returns the keyring it unwraps and wraps with.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Returns how many data keys of `column` each key-encryption key wrapped, most first.
    pub async fn count_by_key(&self, column: WrappedKeyColumn) -> anyhow::Result<Vec<KeyCount>> {
        let WrappedKeyColumn {
            table, column: key, ..
        } = column;
        // Legacy keys start with a random nonce: only v1 keys are grouped by their header.
        let rows: Vec<(Option<Vec<u8>>, bool, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT CASE WHEN length({key}) = $1 AND get_byte({key}, 0) = $2 \
                    THEN substring({key} from 2 for $3) END AS key_id, \
                    length({key}) = $4 AS legacy, count(*) \
             FROM {table} WHERE {key} IS NOT NULL GROUP BY 1, 2 ORDER BY 3 DESC"
        )))
        .bind(wire_len(WRAPPED_V1_LEN))
        .bind(i32::from(WRAPPED_V1_VERSION))
        .bind(wire_len(KEY_ID_LEN))
        .bind(wire_len(WRAPPED_LEGACY_LEN))
        .fetch_all(&self.pool)
        .await
        .with_context(|| format!("count data keys in {column}"))?;
        Ok(rows
            .into_iter()
            .map(|(key_id, legacy, count)| {
                let wrapped_by = match key_id {
                    Some(id) => <[u8; KEY_ID_LEN]>::try_from(id.as_slice())
                        .ok()
                        .map(|id| WrappedBy::Key(KeyId::from_bytes(id))),
                    None if legacy => Some(WrappedBy::Legacy),
                    None => None,
                };
                KeyCount { wrapped_by, count }
            })
            .collect())
    }

    /// Re-wraps under the primary key, in one short transaction, up to `limit` data keys of
    /// `column` that it does not wrap yet, in id order after `after`. Rows another transaction
    /// holds (a capture merging into the lead) are skipped, not waited for: a later pass takes
    /// them. A key that cannot be unwrapped is reported and left as it is.
    pub async fn rewrap_batch(
        &self,
        column: WrappedKeyColumn,
        after: Option<Uuid>,
        limit: u32,
    ) -> anyhow::Result<Batch> {
        let WrappedKeyColumn {
            table,
            id,
            column: key,
        } = column;
        let primary_prefix = self.keyring.primary_key_id().wrapped_prefix();
        let mut tx = leadflow_platform::postgres::begin(&self.pool)
            .await
            .context("begin re-wrap batch")?;
        let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {id}, {key} FROM {table} \
             WHERE ($1::uuid IS NULL OR {id} > $1) AND {key} IS NOT NULL \
               AND NOT (length({key}) = $2 AND substring({key} from 1 for $3) = $4) \
             ORDER BY {id} LIMIT $5 FOR UPDATE SKIP LOCKED"
        )))
        .bind(after)
        .bind(wire_len(WRAPPED_V1_LEN))
        .bind(wire_len(primary_prefix.len()))
        .bind(&primary_prefix[..])
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .with_context(|| format!("lock data keys in {column}"))?;
        let mut batch = Batch {
            scanned: rows.len(),
            last_id: rows.last().map(|(row_id, _)| *row_id),
            ..Batch::default()
        };
        let mut ids = Vec::with_capacity(rows.len());
        let mut old_keys = Vec::with_capacity(rows.len());
        let mut new_keys = Vec::with_capacity(rows.len());
        for (row_id, wrapped) in rows {
            match self.keyring.rewrap_data_key(row_id.as_bytes(), &wrapped) {
                Ok(Some(rewrapped)) => {
                    ids.push(row_id);
                    old_keys.push(wrapped);
                    new_keys.push(rewrapped);
                }
                // Selected as not current, so this cannot happen; nothing to write if it does.
                Ok(None) => {}
                Err(err) => batch.failed.push((row_id, err)),
            }
        }
        if !ids.is_empty() {
            // Compared with the old value too: only ever replaces the wrapping that was read.
            let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} AS t SET {key} = v.new_key \
                 FROM UNNEST($1::uuid[], $2::bytea[], $3::bytea[]) AS v(id, old_key, new_key) \
                 WHERE t.{id} = v.id AND t.{key} = v.old_key"
            )))
            .bind(&ids)
            .bind(&old_keys)
            .bind(&new_keys)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("store re-wrapped data keys in {column}"))?;
            batch.rewrapped = updated.rows_affected();
        }
        tx.commit().await.context("commit re-wrap batch")?;
        Ok(batch)
    }
}

/// Returns a layout length as the `int4` Postgres compares `length()` with.
fn wire_len(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}
