//! Deciding whether a call may proceed: find the RPC in the access table, then verify the
//! presented key and its scope.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tonic::Status;
use tonic::codegen::http;

use super::access::{Access, RPC_ACCESS, is_reflection};
use super::key::{self, KeyError};
use super::scope::Scope;
use super::store::{KeyStore, StoredKey};

/// Header carrying `Bearer <key>`.
pub const AUTHORIZATION_HEADER: &str = "authorization";
/// Header carrying the bare key, accepted when there is no `authorization` header.
pub const API_KEY_HEADER: &str = "x-api-key";

/// How long a looked-up key is trusted without asking Postgres again, by default.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(30);
/// How many looked-up keys are cached at most, by default.
pub const DEFAULT_CACHE_CAPACITY: u64 = 10_000;

/// The one message for every reason a key is refused but malformed and checksum: callers
/// learn nothing about which keys exist, are revoked or expired.
const INVALID_KEY: &str = "invalid or missing api key";

/// The caller of an authorized call, put into the request extensions by
/// [`super::AuthLayer`]: handlers read it with `request.extensions().get::<Caller>()` or
/// [`Caller::require`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Public id of the key the call carried.
    pub key_id: String,
    /// Scopes the key holds, sorted.
    pub scopes: Vec<Scope>,
}

impl Caller {
    /// Returns whether the caller holds `scope`, directly or through `admin`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|held| held.grants(scope))
    }

    /// Returns the caller of `request` if it holds `scope`: `UNAUTHENTICATED` when the request
    /// carries no caller (an open RPC, or no [`super::AuthLayer`] in front), `PERMISSION_DENIED`
    /// when the scope is missing. For checks inside a handler, e.g. unmasking personal data.
    pub fn require<T>(request: &tonic::Request<T>, scope: Scope) -> Result<&Caller, Status> {
        let caller = request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::unauthenticated(INVALID_KEY))?;
        if !caller.has(scope) {
            return Err(Status::permission_denied(format!(
                "api key lacks scope {scope}"
            )));
        }
        Ok(caller)
    }
}

/// How an [`Authenticator`] decides.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// What each RPC requires, by full gRPC path; [`RPC_ACCESS`] by default.
    pub table: &'static [(&'static str, Access)],
    /// Whether server reflection is open as the table says (the default); when `false` it
    /// requires an `admin` key.
    pub reflection_open: bool,
    /// How long a looked-up key is reused without asking Postgres: a revocation takes effect
    /// on every replica within this time. Expiry is checked on every call regardless.
    pub cache_ttl: Duration,
    /// How many looked-up keys are cached at most.
    pub cache_capacity: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            table: RPC_ACCESS,
            reflection_open: true,
            cache_ttl: DEFAULT_CACHE_TTL,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
        }
    }
}

/// Verifies API keys against a [`KeyStore`] and the access table; cheap to clone.
///
/// Looked-up keys (found ones only) are cached by key id for [`AuthSettings::cache_ttl`]
/// (30 s by default), so a revocation takes effect within that time; the secret is still
/// checked against the cached hash on every call, and expiry against the clock. Unknown key
/// ids are not cached: each costs one indexed lookup.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    store: KeyStore,
    table: HashMap<&'static str, Access>,
    reflection_open: bool,
    cache: moka::future::Cache<String, Arc<StoredKey>>,
}

/// Why a lookup produced no key to cache.
#[derive(Debug, thiserror::Error)]
enum LookupError {
    #[error("no such key")]
    NotFound,
    #[error("look up api key")]
    Database(#[source] sqlx::Error),
}

impl Authenticator {
    /// Returns an authenticator with the default settings: [`RPC_ACCESS`], reflection open,
    /// a 30 s cache.
    pub fn new(store: KeyStore) -> Self {
        Self::with_settings(store, AuthSettings::default())
    }

    /// Returns an authenticator deciding with `settings`.
    pub fn with_settings(store: KeyStore, settings: AuthSettings) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(settings.cache_capacity)
            .time_to_live(settings.cache_ttl)
            .build();
        Self {
            inner: Arc::new(Inner {
                store,
                table: settings.table.iter().copied().collect(),
                reflection_open: settings.reflection_open,
                cache,
            }),
        }
    }

    /// Returns the store keys are verified against.
    pub fn store(&self) -> &KeyStore {
        &self.inner.store
    }

    /// Returns what calling `path` requires, `None` when it is not in the table (denied).
    pub fn required_access(&self, path: &str) -> Option<Access> {
        match self.inner.table.get(path).copied() {
            Some(Access::Open) if is_reflection(path) && !self.inner.reflection_open => {
                Some(Access::Scope(Scope::Admin))
            }
            access => access,
        }
    }

    /// Decides a call to `path` carrying `headers`.
    ///
    /// Open RPCs pass without looking at any key and return `None`. Otherwise the key comes
    /// from `authorization: Bearer <key>` or, without that header, `x-api-key: <key>`;
    /// missing, malformed, unknown, wrong, revoked or expired keys are `UNAUTHENTICATED`, a
    /// valid key without the scope and any path missing from the table `PERMISSION_DENIED`;
    /// a failing store is `UNAVAILABLE`. Logs carry the key id, never the key.
    pub async fn authorize(
        &self,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<Option<Caller>, Status> {
        let needed = match self.required_access(path) {
            None => {
                tracing::info!(rpc = path, "rpc denied: not in the access table");
                return Err(Status::permission_denied("rpc not permitted"));
            }
            Some(Access::Open) => return Ok(None),
            Some(Access::Scope(scope)) => scope,
        };
        let caller = self.authenticate(path, headers).await?;
        if !caller.has(needed) {
            tracing::info!(
                rpc = path,
                key_id = %caller.key_id,
                scope = %needed,
                "rpc denied: api key lacks the scope"
            );
            return Err(Status::permission_denied(format!(
                "api key lacks scope {needed}"
            )));
        }
        Ok(Some(caller))
    }

    /// Drops `key_id` from this authenticator's cache, so that a revocation made through this
    /// replica takes effect here at once (other replicas follow within the TTL).
    pub async fn forget(&self, key_id: &str) {
        self.inner.cache.invalidate(key_id).await;
    }

    /// Returns the caller whose key `headers` carry, or why there is none.
    async fn authenticate(&self, path: &str, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let token = match presented_key(headers) {
            Ok(Some(token)) => token,
            Ok(None) => {
                tracing::debug!(rpc = path, "call refused: no api key");
                return Err(Status::unauthenticated(INVALID_KEY));
            }
            Err(err) => return Err(refuse_unparsed(path, &err)),
        };
        let parsed = key::parse(token).map_err(|err| refuse_unparsed(path, &err))?;
        let refuse = |reason: &'static str| {
            tracing::info!(rpc = path, key_id = %parsed.key_id, reason, "call refused");
            Status::unauthenticated(INVALID_KEY)
        };

        let store = &self.inner.store;
        let looked_up = self
            .inner
            .cache
            .try_get_with_by_ref(parsed.key_id.as_str(), async {
                match store.find(&parsed.key_id).await {
                    Ok(Some(stored)) => Ok(Arc::new(stored)),
                    Ok(None) => Err(LookupError::NotFound),
                    Err(err) => Err(LookupError::Database(err)),
                }
            })
            .await;
        let stored = match looked_up {
            Ok(stored) => stored,
            Err(err) => {
                return Err(match err.as_ref() {
                    LookupError::NotFound => refuse("unknown key id"),
                    LookupError::Database(source) => {
                        tracing::error!(
                            rpc = path,
                            key_id = %parsed.key_id,
                            error = %source,
                            "api key lookup failed"
                        );
                        Status::unavailable("api key store unavailable")
                    }
                });
            }
        };

        let pepper = store.pepper();
        if !pepper.verify(parsed.secret_text(), &stored.secret_hash) {
            return Err(refuse("wrong secret"));
        }
        let info = &stored.info;
        if info.env != parsed.env {
            return Err(refuse("environment mismatch"));
        }
        if info.revoked_at.is_some() {
            return Err(refuse("revoked"));
        }
        if info
            .expires_at
            .is_some_and(|expires_at| expires_at <= Utc::now())
        {
            return Err(refuse("expired"));
        }
        Ok(Caller {
            key_id: info.key_id.clone(),
            scopes: info.scopes.clone(),
        })
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("store", &self.inner.store)
            .field("rpcs", &self.inner.table.len())
            .field("reflection_open", &self.inner.reflection_open)
            .finish_non_exhaustive()
    }
}

/// Returns the `UNAUTHENTICATED` status of a key that did not parse; its text is not logged.
fn refuse_unparsed(path: &str, err: &KeyError) -> Status {
    tracing::info!(rpc = path, reason = %err, "call refused");
    match err {
        KeyError::BadChecksum => Status::unauthenticated("api key checksum mismatch"),
        _ => Status::unauthenticated("malformed api key"),
    }
}

/// Returns the key in `authorization: Bearer <key>` or else in `x-api-key: <key>`.
fn presented_key(headers: &http::HeaderMap) -> Result<Option<&str>, KeyError> {
    if let Some(value) = headers.get(AUTHORIZATION_HEADER) {
        let value = value.to_str().map_err(|_| KeyError::Malformed)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(KeyError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(KeyError::Malformed);
        }
        return Ok(Some(token.trim()));
    }
    if let Some(value) = headers.get(API_KEY_HEADER) {
        let value = value.to_str().map_err(|_| KeyError::Malformed)?;
        return Ok(Some(value.trim()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn the_key_comes_from_a_bearer_authorization_or_x_api_key() {
        type Case<'a> = (
            &'a [(&'static str, &'a str)],
            Result<Option<&'a str>, KeyError>,
        );
        let cases: [Case<'_>; 8] = [
            (&[], Ok(None)),
            (&[("authorization", "Bearer lf_x")], Ok(Some("lf_x"))),
            (&[("authorization", "bearer  lf_x ")], Ok(Some("lf_x"))),
            (&[("x-api-key", " lf_y")], Ok(Some("lf_y"))),
            (
                &[("authorization", "Bearer lf_x"), ("x-api-key", "lf_y")],
                Ok(Some("lf_x")),
            ),
            (&[("authorization", "Basic abc")], Err(KeyError::Malformed)),
            (&[("authorization", "lf_x")], Err(KeyError::Malformed)),
            (&[("other", "lf_x")], Ok(None)),
        ];
        for (pairs, expected) in cases {
            assert_eq!(presented_key(&headers(pairs)), expected, "{pairs:?}");
        }
    }

    #[test]
    fn a_caller_has_its_scopes_and_admin_has_all() {
        let reader = Caller {
            key_id: "id".to_owned(),
            scopes: vec![Scope::LeadsRead],
        };
        assert!(reader.has(Scope::LeadsRead));
        assert!(!reader.has(Scope::LeadsWrite));
        assert!(!reader.has(Scope::PiiRead));
        assert!(!reader.has(Scope::Admin));

        let admin = Caller {
            key_id: "id".to_owned(),
            scopes: vec![Scope::Admin],
        };
        for scope in Scope::ALL {
            assert!(admin.has(scope), "admin has {scope}");
        }
    }

    #[test]
    fn require_reads_the_caller_from_the_request() {
        let mut request = tonic::Request::new(());
        assert_eq!(
            Caller::require(&request, Scope::LeadsRead)
                .expect_err("no caller")
                .code(),
            tonic::Code::Unauthenticated
        );
        request.extensions_mut().insert(Caller {
            key_id: "id".to_owned(),
            scopes: vec![Scope::LeadsRead],
        });
        assert!(Caller::require(&request, Scope::LeadsRead).is_ok());
        assert_eq!(
            Caller::require(&request, Scope::PiiRead)
                .expect_err("lacks pii:read")
                .code(),
            tonic::Code::PermissionDenied
        );
    }
}
