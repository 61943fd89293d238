//! The API-key subcommands every service binary has: `create-api-key` (a new key, or an
//! existing one registered from stdin or a file), `revoke-api-key` and `list-api-keys`.
//!
//! They work on the service's own key table, so bootstrapping the suite is: create the admin
//! key in one service, then register the same key in the others.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use chrono::Utc;
use secrecy::SecretString;
use secrecy::zeroize::Zeroize;
use tokio::io::AsyncReadExt;

use super::{CreateApiKeyArgs, ServiceSpec, authenticator};
use crate::auth::{KeyStore, Scope, StoredKeyInfo};
use crate::config::CommonConfig;

/// Most bytes read when importing a key: a key is under 80 characters, so anything near this
/// is not one (and a wrong file is not read whole into memory).
const MAX_KEY_INPUT_BYTES: u64 = 1024;

/// Creates a key and prints it once on stdout, or registers the key `args` point to.
pub(super) async fn create(
    spec: &'static ServiceSpec,
    common: &CommonConfig,
    args: CreateApiKeyArgs,
) -> anyhow::Result<()> {
    let scopes = args
        .scopes
        .iter()
        .map(|scope| scope.parse::<Scope>())
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(expires_at) = args.expires_at
        && expires_at <= Utc::now()
    {
        anyhow::bail!("--expires-at {expires_at} is not in the future");
    }
    let existing = if args.key_from_stdin {
        Some(("standard input", read_stdin().await?))
    } else if let Some(path) = &args.key_file {
        Some(("the key file", read_file(path).await?))
    } else {
        None
    };
    let store = open_store(spec, common).await?;
    let env = &common.api_key_env;
    match existing {
        Some((origin, plaintext)) => {
            let info = store
                .import(&args.name, env, &plaintext, &scopes, args.expires_at)
                .await
                .with_context(|| format!("register the api key from {origin} in {}", spec.name))?;
            eprintln!(
                "registered api key {} ({}) in {} with scopes {}",
                info.key_id,
                info.name.escape_debug(),
                spec.name,
                scope_list(&info)
            );
        }
        None => {
            let (info, plaintext) = store
                .create(&args.name, env, &scopes, args.expires_at)
                .await
                .context("create api key")?;
            eprintln!(
                "created api key {} ({}) in {} with scopes {}; it is shown once:",
                info.key_id,
                info.name.escape_debug(),
                spec.name,
                scope_list(&info)
            );
            println!("{}", secrecy::ExposeSecret::expose_secret(&plaintext));
        }
    }
    Ok(())
}

/// Revokes `key_id` in this service's table; running servers stop accepting it within their
/// key cache TTL. Revoking a revoked key succeeds again; an unknown id is an error.
pub(super) async fn revoke(
    spec: &'static ServiceSpec,
    common: &CommonConfig,
    key_id: &str,
) -> anyhow::Result<()> {
    let store = open_store(spec, common).await?;
    if store.revoke(key_id).await.context("revoke api key")? {
        eprintln!(
            "revoked api key {key_id} in {}; running servers refuse it within {} ms",
            spec.name, common.api_key_cache_ttl_ms
        );
        return Ok(());
    }
    match store.get(key_id).await.context("look up api key")? {
        Some(_) => {
            eprintln!("api key {key_id} was already revoked in {}", spec.name);
            Ok(())
        }
        None => anyhow::bail!("no api key {key_id:?} in {}", spec.name),
    }
}

/// Prints every key of this service's table, one a line, tab-separated: id, name, env,
/// scopes, created, expires, revoked.
pub(super) async fn list(spec: &'static ServiceSpec, common: &CommonConfig) -> anyhow::Result<()> {
    let store = open_store(spec, common).await?;
    let keys = store.list().await.context("list api keys")?;
    println!("key_id\tname\tenv\tscopes\tcreated_at\texpires_at\trevoked_at");
    for info in &keys {
        let date =
            |at: Option<chrono::DateTime<Utc>>| at.map_or("-".to_owned(), |at| at.to_rfc3339());
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            info.key_id,
            info.name.escape_debug(),
            info.env,
            scope_list(info),
            info.created_at.to_rfc3339(),
            date(info.expires_at),
            date(info.revoked_at)
        );
    }
    Ok(())
}

/// Connects to the service's schema, migrating it so that keys can be made before the first
/// `serve`, and returns its key store.
async fn open_store(spec: &'static ServiceSpec, common: &CommonConfig) -> anyhow::Result<KeyStore> {
    let pool = crate::postgres::connect(&common.database_url, spec.name).await?;
    crate::postgres::migrate(&pool, spec.name, spec.migrator).await?;
    Ok(authenticator(spec, common, pool)?.store().clone())
}

fn scope_list(info: &StoredKeyInfo) -> String {
    let names: Vec<&str> = info.scopes.iter().map(|scope| scope.as_str()).collect();
    names.join(",")
}

/// Reads a key from standard input.
async fn read_stdin() -> anyhow::Result<SecretString> {
    let bytes = tokio::task::spawn_blocking(|| {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .take(MAX_KEY_INPUT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map(|_| bytes)
    })
    .await
    .context("read standard input")?
    .context("read standard input")?;
    key_text(bytes, "standard input")
}

/// Reads a key from the file at `path`.
async fn read_file(path: &Path) -> anyhow::Result<SecretString> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("open key file {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .with_context(|| format!("read key file {}", path.display()))?;
    key_text(bytes, "the key file")
}

/// Returns the key in `bytes` without surrounding white space, wiping `bytes`; the text is
/// checked (shape, checksum) where it is registered.
fn key_text(mut bytes: Vec<u8>, origin: &str) -> anyhow::Result<SecretString> {
    let text = if bytes.len() as u64 > MAX_KEY_INPUT_BYTES {
        Err(format!(
            "{origin} holds more than {MAX_KEY_INPUT_BYTES} bytes, not one api key"
        ))
    } else {
        match std::str::from_utf8(&bytes).map(str::trim) {
            Ok("") => Err(format!("{origin} holds no api key")),
            Ok(text) => Ok(SecretString::from(text.to_owned())),
            Err(_) => Err(format!("{origin} is not UTF-8 text")),
        }
    };
    bytes.zeroize();
    text.map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn key_text_trims_and_refuses_what_cannot_be_a_key() {
        let read = |bytes: &[u8]| {
            key_text(bytes.to_vec(), "input")
                .map(|key| key.expose_secret().to_owned())
                .map_err(|err| err.to_string())
        };
        assert_eq!(read(b"  lf_dev_x \n"), Ok("lf_dev_x".to_owned()));
        assert_eq!(read(b""), Err("input holds no api key".to_owned()));
        assert_eq!(read(b" \n\t"), Err("input holds no api key".to_owned()));
        assert_eq!(read(b"lf_\xff"), Err("input is not UTF-8 text".to_owned()));
        let too_long = vec![b'a'; MAX_KEY_INPUT_BYTES as usize + 1];
        assert!(read(&too_long).is_err_and(|err| err.contains("more than")));
    }
}
