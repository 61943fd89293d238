//! API keys in Postgres, in the `api_keys` table of a service's schema: only the secret's
//! HMAC is stored, and the plaintext key is returned once, by [`KeyStore::create`].
//! [`KeyStore::import`] registers a key made elsewhere (e.g. by another service), so that one
//! key works across the suite while each service keeps its own table and pepper.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
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
    /// The environment is invalid, the OS random number generator failed, or an imported key
    /// is malformed or fails its checksum.
    #[error(transparent)]
    Key(#[from] key::KeyError),
    /// An imported key names another environment than the store's keys are made for.
    #[error("api key is for environment {key_env:?}, this service's keys are for {expected:?}")]
    EnvMismatch {
        /// The `<env>` segment of the imported key.
        key_env: String,
        /// The environment this service names in its keys.
        expected: String,
    },
    /// A key with this id is already registered (imported twice, or created here).
    #[error("api key {key_id} is already registered")]
    Duplicate {
        /// Public id of the key.
        key_id: String,
    },
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
        let (name, scopes) = checked_name_and_scopes(name, scopes)?;
        let generated = key::generate(env)?;
        let new_key = NewKey {
            key_id: generated.key_id,
            name,
            env: env.to_owned(),
            secret: generated.secret,
            scopes,
            expires_at,
        };
        let info = self.insert(new_key).await?;
        tracing::info!(key_id = %info.key_id, env, scopes = ?info.scopes, "api key created");
        Ok((info, generated.plaintext))
    }

    /// Registers an existing key, e.g. one another service created, so that the same key works
    /// here too: it is parsed (shape and checksum) and only its secret's hash under this
    /// store's pepper is kept. The key must be for `env`, the environment this service names
    /// in its keys; [`StoreError::Duplicate`] when its id is already registered.
    pub async fn import(
        &self,
        name: &str,
        env: &str,
        plaintext: &SecretString,
        scopes: &[Scope],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<StoredKeyInfo, StoreError> {
        let (name, scopes) = checked_name_and_scopes(name, scopes)?;
        let parsed = key::parse(plaintext.expose_secret())?;
        if parsed.env != env {
            return Err(StoreError::EnvMismatch {
                key_env: parsed.env,
                expected: env.to_owned(),
            });
        }
        let new_key = NewKey {
            key_id: parsed.key_id,
            name,
            env: parsed.env,
            secret: parsed.secret,
            scopes,
            expires_at,
        };
        let info = self.insert(new_key).await?;
        tracing::info!(key_id = %info.key_id, env, scopes = ?info.scopes, "api key imported");
        Ok(info)
    }

    /// Inserts a checked key, storing only the hash of its secret.
    async fn insert(&self, new_key: NewKey) -> Result<StoredKeyInfo, StoreError> {
        let secret_hash = self.pepper.hash(new_key.secret.expose_secret());
        let scope_names: Vec<&str> = new_key.scopes.iter().map(|scope| scope.as_str()).collect();
        // `expires_at` comes back as stored (microseconds), so the facts returned here equal
        // the ones `list` and `get` return later.
        let inserted: Result<(DateTime<Utc>, Option<DateTime<Utc>>), sqlx::Error> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {}.api_keys (key_id, name, env, secret_hash, scopes, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at, expires_at",
                self.schema
            )))
            .bind(&new_key.key_id)
            .bind(&new_key.name)
            .bind(&new_key.env)
            .bind(secret_hash.as_slice())
            .bind(&scope_names)
            .bind(new_key.expires_at)
            .fetch_one(&self.pool)
            .await;
        let (created_at, expires_at) = match inserted {
            Ok(stored) => stored,
            Err(err)
                if err
                    .as_database_error()
                    .is_some_and(|db_err| db_err.is_unique_violation()) =>
            {
                return Err(StoreError::Duplicate {
                    key_id: new_key.key_id,
                });
            }
            Err(err) => return Err(StoreError::Database(err)),
        };
        Ok(StoredKeyInfo {
            key_id: new_key.key_id,
            name: new_key.name,
            env: new_key.env,
            scopes: new_key.scopes,
            created_at,
            expires_at,
            revoked_at: None,
        })
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

/// A key about to be stored; its secret never leaves this module but as a hash.
struct NewKey {
    key_id: String,
    name: String,
    env: String,
    secret: SecretString,
    scopes: Vec<Scope>,
    expires_at: Option<DateTime<Utc>>,
}

/// Returns the trimmed name and the sorted, deduplicated scopes, or why they are refused.
fn checked_name_and_scopes(
    name: &str,
    scopes: &[Scope],
) -> Result<(String, Vec<Scope>), StoreError> {
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
    Ok((name.to_owned(), scopes))
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
