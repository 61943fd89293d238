//! API keys beyond capture (R12), through the real binaries over real sockets: the auth matrix
//! of every qualification, messaging and analytics RPC, one admin key registered in all four
//! services, leadctl carrying its key to each, and `create-api-key` refusing keys it cannot
//! register.
//!
//! capture's own matrix is in `capture/auth.rs`; both use `leadflow_e2e::auth`.

use std::time::Duration;

use anyhow::ensure;
use chrono::Utc;
use leadflow_e2e::auth::{
    MatrixReport, ScopedKey, bearer, call, checked_rpcs, flip_checksum, refused_credentials,
    run_matrix, scope_names, scope_sets,
};
use leadflow_e2e::{API_KEY_ENV, Service, Suite, TestEnv, binary_path, eventually};
use leadflow_platform::auth::Scope;
use leadflow_proto::analytics::v1::GetFunnelRequest;
use leadflow_proto::capture::v1::ListSourcesRequest;
use leadflow_proto::messaging::v1::ListMessagesRequest;
use leadflow_proto::qualification::v1::GetLeadRequest;
use secrecy::ExposeSecret;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Services verify keys with a short cache here, so a revocation by `revoke-api-key` (another
/// process) shows within the test.
const SHORT_KEY_CACHE: (&str, &str) = ("API_KEY_CACHE_TTL_MS", "200");
/// The short cache TTL, with room for a loaded machine.
const CACHE_EXPIRY: Duration = Duration::from_millis(700);
/// Longest wait for something asynchronous.
const WAIT: Duration = Duration::from_secs(20);

/// A service whose RPCs the matrix checks.
struct UnderTest {
    service: Service,
    grpc_service: &'static str,
    /// Each RPC, the scope its proto documents, and its answer to an empty request once
    /// admitted: success, or the validation error naming the missing fields.
    documented: &'static [(&'static str, Scope, Code)],
}

const UNDER_TEST: [UnderTest; 3] = [
    UnderTest {
        service: Service::Qualification,
        grpc_service: "leadflow.qualification.v1.QualificationService",
        documented: &[("GetLead", Scope::LeadsRead, Code::InvalidArgument)],
    },
    UnderTest {
        service: Service::Messaging,
        grpc_service: "leadflow.messaging.v1.MessagingService",
        documented: &[
            ("RecordInbound", Scope::LeadsWrite, Code::InvalidArgument),
            ("ListMessages", Scope::LeadsRead, Code::InvalidArgument),
        ],
    },
    UnderTest {
        service: Service::Analytics,
        grpc_service: "leadflow.analytics.v1.AnalyticsService",
        documented: &[("GetFunnel", Scope::LeadsRead, Code::Ok)],
    },
];

impl UnderTest {
    /// Returns whether `code` is what an admitted empty request to `path` gets.
    fn admitted(&self, path: &str, code: Code) -> bool {
        self.documented
            .iter()
            .find(|(method, _, _)| path.ends_with(&format!("/{method}")))
            .is_some_and(|(_, _, expected)| *expected == code)
    }

    /// Runs this service's matrix: health and reflection open, then every RPC against the
    /// refused credentials and `scoped` (imported here first).
    async fn matrix(&self, suite: &Suite, scoped: &[ScopedKey]) -> anyhow::Result<MatrixReport> {
        let service = self.service;
        let documented: Vec<(&str, Scope)> = self
            .documented
            .iter()
            .map(|(method, scope, _)| (*method, *scope))
            .collect();
        let checked = checked_rpcs(self.grpc_service, &documented)?;
        ensure!(
            checked.rpcs.len() == self.documented.len(),
            "{} serves RPCs this test does not know: {:?}",
            self.grpc_service,
            checked.rpcs
        );
        let running = &suite.services[&service];
        ensure!(running.health().await? == ServingStatus::Serving);
        let reflected = running.reflected_services().await?;
        ensure!(
            reflected.iter().any(|name| name == self.grpc_service),
            "reflection without a key lists {reflected:?}"
        );
        let channel = running.channel().await?;

        for key in scoped {
            suite
                .env
                .import_api_key(service, &key.key, &key.name, &scope_names(&key.scopes))
                .await?;
        }
        // A key that expires in a moment and one that gets revoked, both from the service's own
        // `create-api-key`; both work at first.
        let expires_at = Utc::now() + chrono::Duration::seconds(6);
        let expiring = suite
            .env
            .create_api_key_in(
                service,
                "expiring",
                &["admin"],
                &["--expires-at", &expires_at.to_rfc3339()],
            )
            .await?;
        let revoked = suite
            .env
            .create_api_key_in(service, "to-revoke", &["admin"], &[])
            .await?;
        let (probe, _) = &checked.rpcs[0];
        for key in [&expiring, &revoked] {
            let code = call(&channel, probe, Some(&bearer(key))).await?;
            ensure!(
                self.admitted(probe, code),
                "{probe} refused a fresh key: {code:?}"
            );
        }
        let revoked_id = leadflow_platform::auth::parse(&revoked)?.key_id;
        suite.env.revoke_api_key(service, &revoked_id).await?;
        let until_expired = (expires_at - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(until_expired.max(CACHE_EXPIRY) + CACHE_EXPIRY).await;

        let refused = refused_credentials(
            &suite.admin_key,
            &[
                ("revoked", &revoked),
                ("expired", &expiring),
                ("capture's key for messaging", &suite.messaging_key),
            ],
        )?;
        let report = run_matrix(&channel, &checked.rpcs, &refused, scoped, |path, code| {
            self.admitted(path, code)
        })
        .await?;
        eprintln!(
            "{} auth matrix: {} rpcs x {} credentials = {} calls",
            service.binary(),
            checked.rpcs.len(),
            refused.len() + scoped.len(),
            report.calls
        );
        Ok(report)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_qualification_messaging_and_analytics_rpc_denies_without_the_right_key()
-> anyhow::Result<()> {
    let suite = Suite::start_with(&[SHORT_KEY_CACHE]).await?;
    // Keys made elsewhere, as an operator's keys are: each is registered in every service.
    let scoped = scope_sets()
        .into_iter()
        .map(|(name, scopes)| {
            let generated = leadflow_platform::auth::generate(API_KEY_ENV)?;
            Ok(ScopedKey {
                name,
                scopes,
                key: generated.plaintext.expose_secret().to_owned(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let reports = futures::future::try_join_all(
        UNDER_TEST
            .iter()
            .map(|under_test| under_test.matrix(&suite, &scoped)),
    )
    .await?;

    for (under_test, report) in UNDER_TEST.iter().zip(&reports) {
        ensure!(report.calls > 0);
        report.ensure_clean(under_test.service.binary())?;
    }
    Ok(())
}

/// Returns how each service answers the suite's admin key: capture `ListSources` (an admin
/// RPC), qualification `GetLead` and messaging `ListMessages` of a lead nobody has, analytics
/// `GetFunnel`.
async fn answers_to_the_admin_key(suite: &Suite) -> anyhow::Result<[Code; 4]> {
    fn code<T>(answer: Result<T, tonic::Status>) -> Code {
        answer.map_or_else(|status| status.code(), |_| Code::Ok)
    }
    let unknown_lead = uuid::Uuid::new_v4().to_string();
    let capture = suite
        .capture()
        .await?
        .list_sources(ListSourcesRequest {})
        .await;
    let qualification = suite
        .qualification()
        .await?
        .get_lead(GetLeadRequest {
            lead_id: unknown_lead.clone(),
        })
        .await;
    let messaging = suite
        .messaging()
        .await?
        .list_messages(ListMessagesRequest {
            lead_id: unknown_lead,
        })
        .await;
    let analytics = suite
        .analytics()
        .await?
        .get_funnel(GetFunnelRequest::default())
        .await;
    Ok([
        code(capture),
        code(qualification),
        code(messaging),
        code(analytics),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn one_admin_key_registered_in_every_service_works_in_each() -> anyhow::Result<()> {
    // The suite creates the admin key with `capture create-api-key` and registers the same
    // key in the other three with `create-api-key --key-from-stdin`.
    let suite = Suite::start_with(&[SHORT_KEY_CACHE]).await?;
    let admin = leadflow_platform::auth::parse(&suite.admin_key)?;
    assert_eq!(
        answers_to_the_admin_key(&suite).await?,
        [Code::Ok, Code::NotFound, Code::Ok, Code::Ok]
    );

    // Four tables hold the one key id, each with its own service's hash of the secret.
    let mut db = suite.env.connect().await?;
    let mut hashes = Vec::new();
    for service in Service::ALL {
        let schema = service.binary();
        let (scopes, secret_hash, row): (Vec<String>, Vec<u8>, String) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT scopes, secret_hash, row_to_json(k)::text FROM {schema}.api_keys k \
                 WHERE key_id = $1"
            )))
            .bind(&admin.key_id)
            .fetch_one(&mut db)
            .await?;
        assert_eq!(scopes, ["admin"], "{schema}");
        assert_eq!(secret_hash.len(), 32, "{schema}");
        assert!(
            !row.contains(admin.secret.expose_secret()),
            "{schema} stores the secret"
        );
        hashes.push(secret_hash);
    }
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), 4, "each service hashes under its own pepper");

    // Each service keeps its own table: revoked in analytics, the key still works elsewhere.
    suite
        .env
        .revoke_api_key(Service::Analytics, &admin.key_id)
        .await?;
    let suite = &suite;
    eventually(
        "only analytics refuses the revoked key",
        WAIT,
        || async move {
            let answers = answers_to_the_admin_key(suite).await?;
            Ok(Some(answers).filter(|answers| answers[3] == Code::Unauthenticated))
        },
    )
    .await
    .map(|answers| {
        assert_eq!(
            answers,
            [Code::Ok, Code::NotFound, Code::Ok, Code::Unauthenticated]
        );
    })
}

/// Runs `leadctl <args>` against the suite with `api_key` in `LEADCTL_API_KEY`; returns its
/// exit success, stdout and stderr.
async fn leadctl(
    suite: &Suite,
    api_key: Option<&str>,
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    let mut command = tokio::process::Command::new(binary_path("leadctl")?);
    command.args(args).env_clear();
    for service in Service::ALL {
        command.env(
            format!("LEADCTL_{}URL", service.prefix()),
            suite.services[&service].url(),
        );
    }
    if let Some(key) = api_key {
        command.env("LEADCTL_API_KEY", key);
    }
    let output = tokio::time::timeout(WAIT, command.output()).await??;
    Ok((
        output.status.success(),
        String::from_utf8(output.stdout)?,
        String::from_utf8(output.stderr)?,
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn leadctl_sends_its_key_to_every_service() -> anyhow::Result<()> {
    let suite = Suite::start().await?;

    let (ok, _, stderr) = leadctl(&suite, None, &["funnel"]).await?;
    assert!(!ok, "analytics answered leadctl without a key");
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    assert!(stderr.contains("LEADCTL_API_KEY"), "{stderr}");

    let key = Some(suite.admin_key.as_str());
    let (ok, stdout, stderr) = leadctl(
        &suite,
        key,
        &[
            "capture",
            "--email",
            "cli@example.org",
            "--source",
            "website",
        ],
    )
    .await?;
    assert!(ok, "{stderr}");
    let lead_id = stdout.trim().to_owned();
    assert!(uuid::Uuid::parse_str(&lead_id).is_ok(), "{stdout}");

    // `show` asks capture and qualification, once qualification has the lead.
    let shown = eventually("leadctl show", WAIT, || {
        let (suite, lead_id) = (&suite, &lead_id);
        async move {
            let (ok, stdout, _) = leadctl(suite, key, &["show", lead_id]).await?;
            Ok(Some(stdout).filter(|_| ok))
        }
    })
    .await?;
    assert!(shown.contains("stage LEAD"), "{shown}");

    let (ok, stdout, stderr) = leadctl(&suite, key, &["reply", &lead_id]).await?;
    assert!(ok, "messaging refused leadctl: {stderr}");
    assert!(uuid::Uuid::parse_str(stdout.trim()).is_ok(), "{stdout}");

    let (ok, stdout, stderr) = leadctl(&suite, key, &["funnel"]).await?;
    assert!(ok, "analytics refused leadctl: {stderr}");
    assert!(stdout.contains("total leads:"), "{stdout}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn create_api_key_refuses_keys_it_cannot_register() -> anyhow::Result<()> {
    let env = TestEnv::create().await?;
    let valid = leadflow_platform::auth::generate(API_KEY_ENV)?
        .plaintext
        .expose_secret()
        .to_owned();
    let live = leadflow_platform::auth::generate("live")?
        .plaintext
        .expose_secret()
        .to_owned();
    let bad_checksum = flip_checksum(&valid);
    let import_args: Vec<String> = [
        "create-api-key",
        "--name",
        "shared",
        "--scope",
        "admin",
        "--key-from-stdin",
    ]
    .map(str::to_owned)
    .to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("nothing", b"\n".to_vec(), "standard input holds no api key"),
        (
            "not a key",
            b"lf_test_not-a-key\n".to_vec(),
            "malformed api key",
        ),
        (
            "a bad checksum",
            bad_checksum.clone().into_bytes(),
            "api key checksum mismatch",
        ),
        (
            "another environment",
            live.clone().into_bytes(),
            r#"api key is for environment "live""#,
        ),
        ("bytes", b"lf_\xff\xfe\n".to_vec(), "not UTF-8"),
        (
            "a whole file",
            "lf_test_".repeat(1000).into_bytes(),
            "more than 1024 bytes",
        ),
    ];
    for service in Service::ALL {
        for (what, stdin, expected) in &cases {
            // Every case in qualification; in the others the malformed key, the same code path.
            if service != Service::Qualification && *what != "not a key" {
                continue;
            }
            let output = env
                .run_command(service, &import_args, Some(stdin.as_slice()))
                .await?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !output.status.success(),
                "{} registered {what}",
                service.binary()
            );
            assert!(
                stderr.contains(expected),
                "{} on {what}: {stderr}",
                service.binary()
            );
            for secret in [&bad_checksum, &live] {
                assert!(!stderr.contains(secret.as_str()), "stderr echoes the key");
            }
        }
    }

    // A good key is registered once; the same key again is refused, naming only its id.
    env.import_api_key(Service::Qualification, &valid, "shared", &["admin"])
        .await?;
    let again = env
        .run_command(Service::Qualification, &import_args, Some(valid.as_bytes()))
        .await?;
    let stderr = String::from_utf8_lossy(&again.stderr);
    let key_id = leadflow_platform::auth::parse(&valid)?.key_id;
    assert!(!again.status.success());
    assert!(
        stderr.contains(&format!("api key {key_id} is already registered")),
        "{stderr}"
    );
    assert!(!stderr.contains(&valid), "stderr echoes the key");

    // --key-file reads the same way; with --key-from-stdin too it is a usage error (exit 2).
    let key_file = std::env::temp_dir().join(format!("{}-key", env.database));
    std::fs::write(&key_file, format!("{valid}\n"))?;
    let key_file_text = key_file.display().to_string();
    let from_file = env
        .run_command(
            Service::Messaging,
            &[
                "create-api-key",
                "--name",
                "shared",
                "--scope",
                "leads:read",
                "--key-file",
                &key_file_text,
            ]
            .map(str::to_owned),
            None,
        )
        .await?;
    assert!(
        from_file.status.success(),
        "{}",
        String::from_utf8_lossy(&from_file.stderr)
    );
    let both = env
        .run_command(
            Service::Messaging,
            &[
                "create-api-key",
                "--name",
                "x",
                "--scope",
                "admin",
                "--key-from-stdin",
                "--key-file",
                &key_file_text,
            ]
            .map(str::to_owned),
            Some(valid.as_bytes()),
        )
        .await?;
    std::fs::remove_file(&key_file)?;
    assert_eq!(both.status.code(), Some(2));

    // Only the two good registrations are stored.
    let mut db = env.connect().await?;
    for (schema, expected) in [("qualification", "admin"), ("messaging", "leads:read")] {
        let stored: Vec<(String, Vec<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT key_id, scopes FROM {schema}.api_keys"
        )))
        .fetch_all(&mut db)
        .await?;
        assert_eq!(
            stored,
            [(key_id.clone(), vec![expected.to_owned()])],
            "{schema}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn list_messages_masks_subjects_without_pii_read() -> anyhow::Result<()> {
    use leadflow_proto::capture::v1::{CaptureLeadRequest, LeadInput};
    use leadflow_proto::messaging::v1::messaging_service_client::MessagingServiceClient;

    let suite = Suite::start().await?;
    let lead_id = suite
        .capture()
        .await?
        .capture_lead(CaptureLeadRequest {
            lead: Some(LeadInput {
                email: "masked@example.org".into(),
                first_name: "Maskedname".into(),
                source: leadflow_e2e::WEBSITE_SOURCE.into(),
                channel: "web".into(),
                ..LeadInput::default()
            }),
            ..CaptureLeadRequest::default()
        })
        .await?
        .into_inner()
        .lead
        .map(|lead| lead.lead_id)
        .unwrap_or_default();

    let mut subjects = Vec::new();
    for (name, scopes) in [
        ("reader", vec!["leads:read"]),
        ("pii-reader", vec!["leads:read", "pii:read"]),
    ] {
        let key = leadflow_platform::auth::generate(API_KEY_ENV)?
            .plaintext
            .expose_secret()
            .to_owned();
        suite
            .env
            .import_api_key(Service::Messaging, &key, name, &scopes)
            .await?;
        let client = MessagingServiceClient::new(suite.channel_as(Service::Messaging, &key).await?);
        let messages = leadflow_e2e::sent_messages(&client, &lead_id, WAIT).await?;
        subjects.extend(messages.into_iter().map(|message| message.subject));
    }
    assert_eq!(subjects, ["W***", "Welcome, Maskedname"]);
    Ok(())
}
