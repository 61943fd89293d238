//! API-key authentication and authorization for every service (reliability §1.6): the key
//! format, peppered secret hashes, scopes, the one table of what each RPC requires, the
//! Postgres key store, and the tower layer that enforces it in front of a tonic server.
//!
//! ```ignore
//! let pepper = Pepper::new(config.api_key_pepper)?;
//! let store = KeyStore::new(pool.clone(), "capture", pepper);
//! let auth = Authenticator::new(store);
//! tonic::transport::Server::builder()
//!     .layer(AuthLayer::new(auth))
//!     .add_routes(routes)
//!     .serve_with_incoming(incoming)
//!     .await?;
//! ```
//!
//! Handlers find the [`Caller`] in the request extensions, or check a further scope with
//! [`Caller::require`] (e.g. `pii:read` to unmask personal data).

pub mod access;
pub mod authenticator;
pub mod key;
pub mod layer;
pub mod pepper;
pub mod scope;
pub mod store;

pub use access::{Access, RPC_ACCESS};
pub use authenticator::{AuthSettings, Authenticator, Caller};
pub use key::{GeneratedKey, KeyError, ParsedKey, assemble, generate, parse};
pub use layer::{AuthLayer, AuthService};
pub use pepper::{Pepper, PepperError};
pub use scope::{Scope, UnknownScope};
pub use store::{KeyStore, StoreError, StoredKeyInfo};
