//! The auth matrix (R12): every served capture RPC × every kind of credential.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use leadflow_e2e::{Service, Suite};
use leadflow_platform::auth::{Access, RPC_ACCESS, Scope};
use leadflow_proto::capture::v1::{
    CreateApiKeyRequest, ListApiKeysRequest, ListSourcesRequest, RevokeApiKeyRequest,
};
use leadflow_proto::prost_types::{FileDescriptorSet, Timestamp};
use prost::Message;
use secrecy::ExposeSecret;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

const SERVICE: &str = "leadflow.capture.v1.CaptureService";

/// What the proto documents for each RPC: the table must agree.
const DOCUMENTED: [(&str, Scope); 12] = [
    ("CaptureLead", Scope::LeadsWrite),
    ("ImportLeads", Scope::LeadsWrite),
    ("GetLead", Scope::LeadsRead),
    ("ListLeads", Scope::LeadsRead),
    ("EraseLead", Scope::Admin),
    ("ReturnLead", Scope::LeadsWrite),
    ("CreateSource", Scope::Admin),
    ("UpdateSource", Scope::Admin),
    ("ListSources", Scope::Admin),
    ("CreateApiKey", Scope::Admin),
    ("RevokeApiKey", Scope::Admin),
    ("ListApiKeys", Scope::Admin),
];

/// Every capture RPC path in the descriptor set the server is built from.
fn served_rpcs() -> anyhow::Result<Vec<String>> {
    let set = FileDescriptorSet::decode(leadflow_proto::FILE_DESCRIPTOR_SET)?;
    let mut paths = Vec::new();
    for file in &set.file {
        for service in &file.service {
            if format!("{}.{}", file.package(), service.name()) == SERVICE {
                for method in &service.method {
                    paths.push(format!("/{SERVICE}/{}", method.name()));
                }
            }
        }
    }
    Ok(paths)
}

/// Calls `path` with an empty message (`google.protobuf.Empty` is `()` in prost) and
/// `authorization`; the response decodes as an empty message since unknown fields are skipped.
async fn call(channel: &Channel, path: &str, authorization: Option<&str>) -> anyhow::Result<Code> {
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
    let answer = tokio::time::timeout(Duration::from_secs(10), grpc.unary(request, rpc, codec))
        .await
        .map_err(|_| anyhow::anyhow!("{path} took over 10 s"))?;
    Ok(match answer {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    })
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// `key` with its last (checksum) character changed.
fn flip_checksum(key: &str) -> String {
    let mut flipped = key.to_owned();
    let last = flipped.pop().expect("non-empty key");
    flipped.push(if last == 'A' { 'B' } else { 'A' });
    flipped
}

#[tokio::test(flavor = "multi_thread")]
async fn every_capture_rpc_denies_without_the_right_key() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let capture_server = &suite.services[&Service::Capture];
    let channel = capture_server.channel().await?;
    let mut admin = suite.capture().await?;

    // Which entries of the table are served; every served RPC has one.
    let served = served_rpcs()?;
    assert!(served.len() >= DOCUMENTED.len(), "served: {served:?}");
    let table: BTreeMap<&str, Access> = RPC_ACCESS.iter().copied().collect();
    for path in &served {
        assert!(
            table.contains_key(path.as_str()),
            "{path} is served but has no entry in RPC_ACCESS"
        );
    }
    for (method, scope) in DOCUMENTED {
        let path = format!("/{SERVICE}/{method}");
        assert!(served.contains(&path), "{path} is not served");
        assert_eq!(
            table.get(path.as_str()),
            Some(&Access::Scope(scope)),
            "{path} requires what the proto says"
        );
    }
    let mut rpcs = Vec::new();
    let mut skipped = Vec::new();
    for (path, access) in RPC_ACCESS {
        if !path.starts_with(&format!("/{SERVICE}/")) {
            continue;
        }
        if !served.iter().any(|served| served == path) {
            skipped.push(*path);
            continue;
        }
        let Access::Scope(needed) = access else {
            panic!("{path} is open");
        };
        rpcs.push((*path, *needed));
    }
    assert_eq!(rpcs.len(), served.len());

    // Health stays open.
    assert_eq!(capture_server.health().await?, ServingStatus::Serving);

    // A key that expires in a moment, and one that gets revoked; both work at first.
    let expires_at = SystemTime::now() + Duration::from_secs(5);
    let since_epoch = expires_at.duration_since(SystemTime::UNIX_EPOCH)?;
    let expiring = admin
        .create_api_key(CreateApiKeyRequest {
            name: "expiring".into(),
            scopes: vec!["admin".into()],
            expires_at: Some(Timestamp {
                seconds: since_epoch.as_secs() as i64,
                nanos: since_epoch.subsec_nanos() as i32,
            }),
        })
        .await?
        .into_inner();
    let revoked = admin
        .create_api_key(CreateApiKeyRequest {
            name: "to-revoke".into(),
            scopes: vec!["admin".into()],
            expires_at: None,
        })
        .await?
        .into_inner();
    for created in [&expiring, &revoked] {
        let info = created.key.clone().expect("key info");
        assert!(
            created.secret.starts_with("lf_test_"),
            "a key of this environment"
        );
        let parsed = leadflow_platform::auth::parse(&created.secret)?;
        assert_eq!(parsed.key_id, info.key_id, "the secret carries its key id");
        assert_eq!(info.scopes, ["admin"]);
        let path = format!("/{SERVICE}/ListSources");
        assert_eq!(
            call(&channel, &path, Some(&bearer(&created.secret))).await?,
            Code::Ok,
            "{} works before it is revoked or expires",
            info.name
        );
    }
    let revoked_id = revoked.key.clone().expect("key").key_id;
    let revoked_info = admin
        .revoke_api_key(RevokeApiKeyRequest {
            key_id: revoked_id.clone(),
        })
        .await?
        .into_inner()
        .key
        .expect("revoked key");
    assert!(revoked_info.revoked_at.is_some());

    // One key per scope, and one with all of them.
    let mut scoped = Vec::new();
    for scope in Scope::ALL {
        let key = suite
            .env
            .create_api_key(&format!("only-{scope}"), &[scope.as_str()])
            .await?;
        scoped.push((scope.as_str().to_owned(), vec![scope], key));
    }
    let all_names: Vec<&str> = Scope::ALL.iter().map(|scope| scope.as_str()).collect();
    let all_key = suite.env.create_api_key("all-scopes", &all_names).await?;
    scoped.push(("all".to_owned(), Scope::ALL.to_vec(), all_key));

    // ListApiKeys names every key and never carries a secret.
    let listed = admin
        .list_api_keys(ListApiKeysRequest {})
        .await?
        .into_inner();
    let listed_ids: Vec<&str> = listed.keys.iter().map(|key| key.key_id.as_str()).collect();
    let encoded = listed.encode_to_vec();
    let mut secrets = vec![
        suite.admin_key.clone(),
        expiring.secret.clone(),
        revoked.secret.clone(),
    ];
    secrets.extend(scoped.iter().map(|(_, _, key)| key.clone()));
    for secret in &secrets {
        let parsed = leadflow_platform::auth::parse(secret)?;
        assert!(
            listed_ids.contains(&parsed.key_id.as_str()),
            "{} is listed",
            parsed.key_id
        );
        let secret_part = parsed.secret.expose_secret();
        assert!(
            !encoded
                .windows(secret_part.len())
                .any(|window| window == secret_part.as_bytes()),
            "ListApiKeys carries the secret of {}",
            parsed.key_id
        );
    }
    let listed_revoked = listed
        .keys
        .iter()
        .find(|key| key.key_id == revoked_id)
        .expect("revoked key listed");
    assert!(listed_revoked.revoked_at.is_some());

    // The credentials that never pass.
    let unknown = leadflow_platform::auth::generate("test")?;
    let wait_for_expiry = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        + Duration::from_millis(500);
    tokio::time::sleep(wait_for_expiry).await;
    let refused: Vec<(&str, Option<String>)> = vec![
        ("no key", None),
        ("malformed", Some(bearer("lf_test_not-a-key"))),
        ("not bearer", Some("Basic dXNlcjpwYXNz".to_owned())),
        (
            "bad checksum",
            Some(bearer(&flip_checksum(&suite.admin_key))),
        ),
        ("unknown", Some(bearer(unknown.plaintext.expose_secret()))),
        ("revoked", Some(bearer(&revoked.secret))),
        ("expired", Some(bearer(&expiring.secret))),
    ];

    let mut calls = 0;
    let mut failures = Vec::new();
    for (path, needed) in &rpcs {
        for (credential, authorization) in &refused {
            let code = call(&channel, path, authorization.as_deref()).await?;
            calls += 1;
            if code != Code::Unauthenticated {
                failures.push(format!(
                    "{path} with {credential}: {code:?}, want UNAUTHENTICATED"
                ));
            }
        }
        for (name, scopes, key) in &scoped {
            let code = call(&channel, path, Some(&bearer(key))).await?;
            calls += 1;
            let granted = scopes.iter().any(|held| held.grants(*needed));
            let ok = if granted {
                !matches!(
                    code,
                    Code::Unauthenticated | Code::PermissionDenied | Code::Internal
                )
            } else {
                code == Code::PermissionDenied
            };
            if !ok {
                let want = if granted {
                    "past auth"
                } else {
                    "PERMISSION_DENIED"
                };
                failures.push(format!("{path} with {name}: {code:?}, want {want}"));
            }
        }
    }
    eprintln!(
        "auth matrix: {} rpcs x {} credentials = {calls} calls; not served, skipped: {skipped:?}",
        rpcs.len(),
        refused.len() + scoped.len()
    );
    assert!(
        failures.is_empty(),
        "auth matrix failures:\n{}",
        failures.join("\n")
    );

    // The admin key still works after all that.
    admin.list_sources(ListSourcesRequest {}).await?;
    Ok(())
}
