//! The auth matrix every service's tests share (R12): which RPCs a service serves and what
//! each needs, a call with any credential over a real channel, and the run of every RPC
//! against every kind of credential.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use leadflow_platform::auth::{Access, RPC_ACCESS, Scope};
use leadflow_proto::prost_types::FileDescriptorSet;
use prost::Message;
use secrecy::ExposeSecret;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// Longest one matrix call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns every RPC path of `service` (e.g. `leadflow.capture.v1.CaptureService`) in the
/// descriptor set the servers are built from.
pub fn served_rpcs(service: &str) -> anyhow::Result<Vec<String>> {
    let set = FileDescriptorSet::decode(leadflow_proto::FILE_DESCRIPTOR_SET)?;
    let mut paths = Vec::new();
    for file in &set.file {
        for served in &file.service {
            if format!("{}.{}", file.package(), served.name()) == service {
                for method in &served.method {
                    paths.push(format!("/{service}/{}", method.name()));
                }
            }
        }
    }
    Ok(paths)
}

/// The RPCs of one service under test.
#[derive(Debug)]
pub struct ServiceRpcs {
    /// Each served RPC with the scope `RPC_ACCESS` says it needs.
    pub rpcs: Vec<(String, Scope)>,
    /// Entries of `RPC_ACCESS` for this service that no server serves yet.
    pub skipped: Vec<String>,
}

/// Returns the RPCs of `service` with the scope each needs, after checking the access table
/// against what is served and what the proto documents: every served RPC has an entry and
/// none is open, and every `documented` RPC is served and needs the documented scope.
pub fn checked_rpcs(service: &str, documented: &[(&str, Scope)]) -> anyhow::Result<ServiceRpcs> {
    let served = served_rpcs(service)?;
    ensure!(
        served.len() >= documented.len(),
        "{service} serves only {served:?}"
    );
    let table: BTreeMap<&str, Access> = RPC_ACCESS.iter().copied().collect();
    for (method, scope) in documented {
        let path = format!("/{service}/{method}");
        ensure!(served.contains(&path), "{path} is not served");
        ensure!(
            table.get(path.as_str()) == Some(&Access::Scope(*scope)),
            "{path} needs {:?} in RPC_ACCESS, the proto says {scope}",
            table.get(path.as_str())
        );
    }
    let mut rpcs = Vec::new();
    for path in &served {
        match table.get(path.as_str()) {
            Some(Access::Scope(needed)) => rpcs.push((path.clone(), *needed)),
            Some(Access::Open) => anyhow::bail!("{path} is open"),
            None => anyhow::bail!("{path} is served but has no entry in RPC_ACCESS"),
        }
    }
    let prefix = format!("/{service}/");
    let skipped = table
        .keys()
        .filter(|path| path.starts_with(&prefix) && !served.iter().any(|served| served == *path))
        .map(|path| (*path).to_owned())
        .collect();
    Ok(ServiceRpcs { rpcs, skipped })
}

/// Calls `path` with an empty message (`google.protobuf.Empty` is `()` in prost) and
/// `authorization`; returns the answer's code. The response decodes as an empty message since
/// unknown fields are skipped.
pub async fn call(
    channel: &Channel,
    path: &str,
    authorization: Option<&str>,
) -> anyhow::Result<Code> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await?;
    let mut request = tonic::Request::new(());
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse()?);
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let rpc = PathAndQuery::try_from(path.to_owned())?;
    let answer = tokio::time::timeout(CALL_TIMEOUT, grpc.unary(request, rpc, codec))
        .await
        .map_err(|_| anyhow::anyhow!("{path} took over {CALL_TIMEOUT:?}"))?;
    Ok(match answer {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    })
}

/// Returns the `authorization` value carrying `key`.
pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Returns `key` with its last (checksum) character changed.
pub fn flip_checksum(key: &str) -> String {
    let mut flipped = key.to_owned();
    if let Some(last) = flipped.pop() {
        flipped.push(if last == 'A' { 'B' } else { 'A' });
    }
    flipped
}

/// A credential and the `authorization` value it sends, `None` for no header at all.
pub type Credential = (String, Option<String>);

/// Returns the credentials no RPC may admit: no key, a malformed key, a scheme other than
/// Bearer, `valid_key` with a bad checksum, a well-formed key no service knows, and each of
/// `keys` (revoked, expired, another service's, …) as a bearer token.
pub fn refused_credentials(
    valid_key: &str,
    keys: &[(&str, &str)],
) -> anyhow::Result<Vec<Credential>> {
    let unknown = leadflow_platform::auth::generate(crate::API_KEY_ENV)?;
    let mut refused = vec![
        ("no key".to_owned(), None),
        ("malformed".to_owned(), Some(bearer("lf_test_not-a-key"))),
        (
            "not bearer".to_owned(),
            Some("Basic dXNlcjpwYXNz".to_owned()),
        ),
        (
            "bad checksum".to_owned(),
            Some(bearer(&flip_checksum(valid_key))),
        ),
        (
            "unknown".to_owned(),
            Some(bearer(unknown.plaintext.expose_secret())),
        ),
    ];
    refused.extend(
        keys.iter()
            .map(|(name, key)| ((*name).to_owned(), Some(bearer(key)))),
    );
    Ok(refused)
}

/// A key holding some scopes, named for the report.
#[derive(Debug, Clone)]
pub struct ScopedKey {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub key: String,
}

/// Returns the scope sets a matrix tries: each scope alone, then all of them together.
pub fn scope_sets() -> Vec<(String, Vec<Scope>)> {
    let mut sets: Vec<(String, Vec<Scope>)> = Scope::ALL
        .iter()
        .map(|scope| (format!("only-{scope}"), vec![*scope]))
        .collect();
    sets.push(("all-scopes".to_owned(), Scope::ALL.to_vec()));
    sets
}

/// Returns the wire names of `scopes`, as `create-api-key --scope` takes them.
pub fn scope_names(scopes: &[Scope]) -> Vec<&'static str> {
    scopes.iter().map(|scope| scope.as_str()).collect()
}

/// What one matrix run found.
#[derive(Debug, Default)]
pub struct MatrixReport {
    /// Calls made.
    pub calls: usize,
    /// One line per call that was answered otherwise than expected.
    pub failures: Vec<String>,
}

impl MatrixReport {
    /// Fails listing every unexpected answer, if any.
    pub fn ensure_clean(&self, what: &str) -> anyhow::Result<()> {
        ensure!(
            self.failures.is_empty(),
            "{what} auth matrix failures:\n{}",
            self.failures.join("\n")
        );
        Ok(())
    }
}

/// Calls every RPC of `rpcs` with every `refused` credential, expecting `UNAUTHENTICATED`, and
/// with every key of `keys`: `PERMISSION_DENIED` when it lacks the scope the RPC needs, else an
/// answer `admitted(path, code)` accepts (the RPC ran: success or a validation error).
pub async fn run_matrix(
    channel: &Channel,
    rpcs: &[(String, Scope)],
    refused: &[Credential],
    keys: &[ScopedKey],
    admitted: impl Fn(&str, Code) -> bool,
) -> anyhow::Result<MatrixReport> {
    let mut report = MatrixReport::default();
    for (path, needed) in rpcs {
        for (credential, authorization) in refused {
            let code = call(channel, path, authorization.as_deref())
                .await
                .with_context(|| format!("{path} with {credential}"))?;
            report.calls += 1;
            if code != Code::Unauthenticated {
                report.failures.push(format!(
                    "{path} with {credential}: {code:?}, want UNAUTHENTICATED"
                ));
            }
        }
        for key in keys {
            let code = call(channel, path, Some(&bearer(&key.key)))
                .await
                .with_context(|| format!("{path} with {}", key.name))?;
            report.calls += 1;
            let granted = key.scopes.iter().any(|held| held.grants(*needed));
            let (ok, want) = if granted {
                (admitted(path, code), "admitted")
            } else {
                (code == Code::PermissionDenied, "PERMISSION_DENIED")
            };
            if !ok {
                report
                    .failures
                    .push(format!("{path} with {}: {code:?}, want {want}", key.name));
            }
        }
    }
    Ok(report)
}
