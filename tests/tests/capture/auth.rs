//! The auth matrix (R12): every served capture RPC × every kind of credential.

use std::time::{Duration, SystemTime};

use leadflow_e2e::auth::{
    ScopedKey, bearer, call, checked_rpcs, refused_credentials, run_matrix, scope_names, scope_sets,
};
use leadflow_e2e::{Service, Suite};
use leadflow_platform::auth::Scope;
use leadflow_proto::capture::v1::{
    CreateApiKeyRequest, ListApiKeysRequest, ListSourcesRequest, RevokeApiKeyRequest,
};
use leadflow_proto::prost_types::Timestamp;
use prost::Message;
use secrecy::ExposeSecret;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const SERVICE: &str = "leadflow.capture.v1.CaptureService";

/// What the proto documents for each RPC: the table must agree.
const DOCUMENTED: [(&str, Scope); 14] = [
    ("CaptureLead", Scope::LeadsWrite),
    ("ImportLeads", Scope::LeadsWrite),
    ("GetLead", Scope::LeadsRead),
    ("ListLeads", Scope::LeadsRead),
    ("EraseLead", Scope::Admin),
    ("ReturnLead", Scope::LeadsWrite),
    ("RecordActivity", Scope::LeadsWrite),
    ("ListActivities", Scope::LeadsRead),
    ("CreateSource", Scope::Admin),
    ("UpdateSource", Scope::Admin),
    ("ListSources", Scope::Admin),
    ("CreateApiKey", Scope::Admin),
    ("RevokeApiKey", Scope::Admin),
    ("ListApiKeys", Scope::Admin),
];

#[tokio::test(flavor = "multi_thread")]
async fn every_capture_rpc_denies_without_the_right_key() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let capture_server = &suite.services[&Service::Capture];
    let channel = capture_server.channel().await?;
    let mut admin = suite.capture().await?;

    // Which entries of the table are served; every served RPC has one.
    let checked = checked_rpcs(SERVICE, &DOCUMENTED)?;

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
    for (name, scopes) in scope_sets() {
        let key = suite
            .env
            .create_api_key(&name, &scope_names(&scopes))
            .await?;
        scoped.push(ScopedKey { name, scopes, key });
    }

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
    secrets.extend(scoped.iter().map(|scoped_key| scoped_key.key.clone()));
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
    let wait_for_expiry = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        + Duration::from_millis(500);
    tokio::time::sleep(wait_for_expiry).await;
    let refused = refused_credentials(
        &suite.admin_key,
        &[("revoked", &revoked.secret), ("expired", &expiring.secret)],
    )?;

    let report = run_matrix(&channel, &checked.rpcs, &refused, &scoped, |_, code| {
        !matches!(
            code,
            Code::Unauthenticated | Code::PermissionDenied | Code::Internal
        )
    })
    .await?;
    eprintln!(
        "auth matrix: {} rpcs x {} credentials = {} calls; not served, skipped: {:?}",
        checked.rpcs.len(),
        refused.len() + scoped.len(),
        report.calls,
        checked.skipped
    );
    report.ensure_clean("capture")?;

    // The admin key still works after all that.
    admin.list_sources(ListSourcesRequest {}).await?;
    Ok(())
}
