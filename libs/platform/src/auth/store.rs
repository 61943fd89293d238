//! API keys in Postgres, in the `api_keys` table of a service's schema: only the secret's
//! HMAC is stored, and the plaintext key is returned once, by [`KeyStore::create`].

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::PgPool;

use super::key;
use super::pepper::Pepper;
use super::scope::Scope;

/// Longest key name accepted, in characters.
pub const MAX_NAME_LEN: usize = 200;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The name is empty (after trimming) or longer than [`MAX_NAME_LEN`] characters.
    #[error("api key name must be 1-{MAX_NAME_LEN} characters")]
    InvalidName,
    /// No scope was given: such a key could call nothing.
    #[error("api key needs at least one scope")]
    NoScopes,
    /// The environment is invalid, or the OS random number generator failed.
    #[error(transparent)]
    Key(#[from] key::KeyError),
    /// Postgres failed.
    #[error("query api keys")]
    Database(#[from] sqlx::Error),
}

/// An API key's public facts: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKeyInfo {
    /// Public identifier, the `<id>` segment of the key.
    pub key_id: String,
    /// What the key is for, chosen by its creator.
    pub name: String,
    /// Environment token, the `<env>` segment of the key.
    pub env: String,
    /// Scopes the key holds, sorted and without duplicates.
    pub scopes: Vec<Scope>,
    /// When the key was created.
    pub created_at: DateTime<Utc>,
    /// When the key stops working; never when `None`.
    pub expires_at: Option<DateTime<Utc>>,
    /// When the key was revoked; `None` while it is not.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl StoredKeyInfo {
    /// Returns whether the key is neither revoked nor expired at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expires_at| now < expires_at)
    }
}

/// A stored key with its secret hash: what verification compares against.
#[derive(Clone)]
pub(crate) struct StoredKey {
    pub(crate) info: StoredKeyInfo,
    pub(crate) secret_hash: Vec<u8>,
}

#[derive(sqlx::FromRow)]
struct InfoRow {
    key_id: String,
    name: String,
    env: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct HashedRow {
    #[sqlx(flatten)]
    info: InfoRow,
    secret_hash: Vec<u8>,
}

const INFO_COLUMNS: &str = "key_id, name, env, scopes, created_at, expires_at, revoked_at";

/// The API keys of one service schema; cheap to clone.
#[derive(Debug, Clone)]
pub struct KeyStore {
    pool: PgPool,
    schema: &'static str,
    pepper: Pepper,
}

impl KeyStore {
    /// Returns a store of the `api_keys` table in `schema`, hashing secrets under `pepper`.
    pub fn new(pool: PgPool, schema: &'static str, pepper: Pepper) -> Self {
        Self {
            pool,
            schema,
            pepper,
        }
    }

    /// Creates a key and returns its facts with the plaintext key, which is not stored
    /// anywhere and cannot be shown again. An `expires_at` in the past is accepted (the key
    /// is born expired); callers that must refuse it check before.
    pub async fn create(
        &self,
        name: &str,
        env: &str,
        scopes: &[Scope],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(StoredKeyInfo, SecretString), StoreError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
            return Err(StoreError::InvalidName);
        }
        let mut scopes = scopes.to_vec();
        scopes.sort_unstable();
        scopes.dedup();
        if scopes.is_empty() {
            return Err(StoreError::NoScopes);
        }
        let generated = key::generate(env)?;
        let secret_hash = self
            .pepper
            .hash(secrecy::ExposeSecret::expose_secret(&generated.secret));
        let scope_names: Vec<&str> = scopes.iter().map(|scope| scope.as_str()).collect();
        // `expires_at` comes back as stored (microseconds), so the facts returned here equal
        // the ones `list` and `get` return later.
        let (created_at, expires_at): (DateTime<Utc>, Option<DateTime<Utc>>) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {}.api_keys (key_id, name, env, secret_hash, scopes, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at, expires_at",
                self.schema
            )))
            .bind(&generated.key_id)
            .bind(name)
            .bind(env)
            .bind(secret_hash.as_slice())
            .bind(&scope_names)
            .bind(expires_at)
            .fetch_one(&self.pool)
            .await?;
        tracing::info!(key_id = %generated.key_id, env, scopes = ?scope_names, "api key created");
        let info = StoredKeyInfo {
            key_id: generated.key_id,
            name: name.to_owned(),
            env: env.to_owned(),
            scopes,
            created_at,
            expires_at,
            revoked_at: None,
        };
        Ok((info, generated.plaintext))
    }

    /// Revokes a key; returns `false` when there is no such key or it was already revoked.
    /// Authenticators may accept it from their cache for up to their TTL.
    pub async fn revoke(&self, key_id: &str) -> Result<bool, StoreError> {
        let revoked = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {}.api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL",
            self.schema
        )))
        .bind(key_id)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        if revoked {
            tracing::info!(key_id, "api key revoked");
        }
        Ok(revoked)
    }

    /// Returns every key's facts, oldest first.
    pub async fn list(&self) -> Result<Vec<StoredKeyInfo>, StoreError> {
        let rows: Vec<InfoRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {INFO_COLUMNS} FROM {}.api_keys ORDER BY created_at, key_id",
            self.schema
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(info_from_row).collect())
    }

    /// Returns one key's facts.
    pub async fn get(&self, key_id: &str) -> Result<Option<StoredKeyInfo>, StoreError> {
        Ok(self.find(key_id).await?.map(|stored| stored.info))
    }

    /// Returns the pepper secrets are hashed under.
    pub(crate) fn pepper(&self) -> &Pepper {
        &self.pepper
    }

    /// Looks a key up by id, with its hash, for verification.
    pub(crate) async fn find(&self, key_id: &str) -> Result<Option<StoredKey>, sqlx::Error> {
        let row: Option<HashedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {INFO_COLUMNS}, secret_hash FROM {}.api_keys WHERE key_id = $1",
            self.schema
        )))
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| StoredKey {
            info: info_from_row(row.info),
            secret_hash: row.secret_hash,
        }))
    }
}

/// Converts a row; a scope name this build does not know is dropped (so it grants nothing)
/// and logged.
fn info_from_row(row: InfoRow) -> StoredKeyInfo {
    let InfoRow {
        key_id,
        name,
        env,
        scopes: scope_names,
        created_at,
        expires_at,
        revoked_at,
    } = row;
    let mut scopes = Vec::with_capacity(scope_names.len());
    for scope_name in &scope_names {
        match scope_name.parse::<Scope>() {
            Ok(scope) => scopes.push(scope),
            Err(_) => tracing::warn!(%key_id, scope = %scope_name, "api key has an unknown scope"),
        }
    }
    scopes.sort_unstable();
    scopes.dedup();
    StoredKeyInfo {
        key_id,
        name,
        env,
        scopes,
        created_at,
        expires_at,
        revoked_at,
    }
}
