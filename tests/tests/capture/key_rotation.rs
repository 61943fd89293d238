//! Rotating the key-encryption key of personal data: leads stay readable under primary B with
//! previous A, `capture rotate-keys` re-wraps every data key under B (beside a serving,
//! capturing capture, interrupted and rerun), then B alone reads everything; B alone before
//! the rotation fails clearly, never with garbage.

use std::collections::HashMap;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use leadflow_e2e::{PII_KEY, Running, Service, TestEnv, WEBSITE_SOURCE, authed, binary_path};
use leadflow_platform::pii::{Kek, KeyId, Keyring};
use leadflow_proto::capture::v1::capture_service_client::CaptureServiceClient;
use leadflow_proto::capture::v1::{
    CaptureLeadRequest, CaptureOutcome, CreateSourceRequest, DedupeMode, DedupePolicy,
    EraseLeadRequest, GetLeadRequest, SourceKind, SourceSettings,
};
use secrecy::SecretString;
use sqlx::{Connection, PgConnection};
use tokio::process::Command;
use tonic::Code;
use uuid::Uuid;

use crate::support::{capture_of, consent, person};

/// The key every lead is first captured under (the suites' usual key).
const KEY_A: &str = PII_KEY;
/// The key rotated to.
const KEY_B: &str = "3333333333333333333333333333333333333333333333333333333333333333";
/// A key that never wrapped anything here.
const KEY_C: &str = "4444444444444444444444444444444444444444444444444444444444444444";

type Client = CaptureServiceClient<leadflow_e2e::Authed>;

fn key_id(key: &str) -> KeyId {
    Kek::from_hex(&SecretString::from(key.to_owned()))
        .expect("valid test key")
        .id()
}

/// capture's environment with `primary` as `CAPTURE_PII_KEY` and `previous` as
/// `CAPTURE_PII_PREVIOUS_KEYS`.
fn capture_env(env: &TestEnv, primary: &str, previous: &[&str]) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = env
        .service_env(Service::Capture)
        .into_iter()
        .filter(|(name, _)| name != "CAPTURE_PII_KEY")
        .collect();
    vars.push(("CAPTURE_PII_KEY".to_owned(), primary.to_owned()));
    vars.push(("CAPTURE_PII_PREVIOUS_KEYS".to_owned(), previous.join(",")));
    vars
}

/// Runs `capture rotate-keys` with `args` under `primary` and `previous`.
async fn rotate_keys(
    env: &TestEnv,
    primary: &str,
    previous: &[&str],
    args: &[&str],
) -> anyhow::Result<Output> {
    Ok(Command::new(binary_path("capture")?)
        .arg("rotate-keys")
        .args(args)
        .env_clear()
        .env("RUST_LOG", "warn")
        .envs(capture_env(env, primary, previous))
        .output()
        .await?)
}

/// Returns the line of `rotate-keys` output counting the data keys one key wrapped.
fn count_line(key: &str, count: u64, state: &str) -> String {
    format!("  {key:<16}  {count:>10}  {state}")
}

/// Returns stdout and stderr of a finished command, for assertions and failure messages.
fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A test database with an admin key and a `pii:read` key.
struct Fixture {
    env: TestEnv,
    admin_key: String,
    reader_key: String,
}

impl Fixture {
    async fn create() -> anyhow::Result<Self> {
        let env = TestEnv::create().await?;
        let admin_key = env.create_api_key("admin", &["admin"]).await?;
        let reader_key = env
            .create_api_key("pii-reader", &["leads:read", "pii:read"])
            .await?;
        Ok(Self {
            env,
            admin_key,
            reader_key,
        })
    }

    async fn start(&self, primary: &str, previous: &[&str]) -> anyhow::Result<Running> {
        Running::start(Service::Capture, &capture_env(&self.env, primary, previous)).await
    }

    async fn admin(&self, capture: &Running) -> anyhow::Result<Client> {
        Ok(CaptureServiceClient::new(authed(
            capture.channel().await?,
            &self.admin_key,
        )?))
    }

    async fn reader(&self, capture: &Running) -> anyhow::Result<Client> {
        Ok(CaptureServiceClient::new(authed(
            capture.channel().await?,
            &self.reader_key,
        )?))
    }

    /// Registers the `website` source (merge dedupe), as the suites do.
    async fn create_source(&self, capture: &Running) -> anyhow::Result<()> {
        self.admin(capture)
            .await?
            .create_source(CreateSourceRequest {
                source_id: WEBSITE_SOURCE.to_owned(),
                settings: Some(SourceSettings {
                    name: "Website contact form".into(),
                    kind: SourceKind::Form.into(),
                    dedupe: Some(DedupePolicy {
                        mode: DedupeMode::Merge.into(),
                        window_seconds: 0,
                    }),
                    ..SourceSettings::default()
                }),
            })
            .await?;
        Ok(())
    }
}

/// Captures `email` and returns the lead id.
async fn capture_email(client: &mut Client, email: &str) -> anyhow::Result<String> {
    Ok(client
        .capture_lead(capture_of(person(email, "")))
        .await?
        .into_inner()
        .lead
        .ok_or_else(|| anyhow::anyhow!("capture answered without a lead"))?
        .lead_id)
}

/// Returns the email GetLead answers for `lead_id` (with `pii:read`).
async fn email_of(client: &mut Client, lead_id: &str) -> Result<String, tonic::Status> {
    Ok(client
        .get_lead(GetLeadRequest {
            lead_id: lead_id.to_owned(),
        })
        .await?
        .into_inner()
        .lead
        .map(|lead| lead.email)
        .unwrap_or_default())
}

/// Asserts GetLead answers each lead's own email.
async fn assert_readable(
    client: &mut Client,
    leads: &HashMap<String, String>,
    when: &str,
) -> anyhow::Result<()> {
    for (lead_id, email) in leads {
        let answered = email_of(client, lead_id)
            .await
            .map_err(|status| anyhow::anyhow!("{when}: GetLead {lead_id}: {status:?}"))?;
        assert_eq!(&answered, email, "{when}: lead {lead_id}");
    }
    Ok(())
}

/// Returns every wrapped data key capture stores, as `(table, id, wrapped)`.
async fn stored_data_keys(db: &mut PgConnection) -> anyhow::Result<Vec<(String, Uuid, Vec<u8>)>> {
    let rows: Vec<(String, Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT 'leads', lead_id, data_key FROM capture.leads WHERE data_key IS NOT NULL \
         UNION ALL \
         SELECT 'merge_reviews', review_id, data_key FROM capture.merge_reviews WHERE data_key IS NOT NULL",
    )
    .fetch_all(&mut *db)
    .await?;
    Ok(rows)
}

/// Asserts every stored data key is wrapped by `key` in the layout with a key id.
async fn assert_all_wrapped_by(db: &mut PgConnection, key: &str) -> anyhow::Result<usize> {
    let prefix = key_id(key).wrapped_prefix();
    let keys = stored_data_keys(db).await?;
    for (table, id, wrapped) in &keys {
        assert!(
            wrapped.len() == 69 && wrapped.starts_with(&prefix),
            "capture.{table} {id}: data key not wrapped by {} ({} bytes, starts {})",
            key_id(key),
            wrapped.len(),
            hex::encode(&wrapped[..wrapped.len().min(9)])
        );
    }
    Ok(keys.len())
}

/// Seals `plaintext` the way capture sealed everything before key ids: `nonce ‖ AES-256-GCM`
/// with associated data `owner ‖ 0 ‖ field`.
fn seal_legacy(key: &[u8], owner: &[u8], field: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new_from_slice(key).expect("32-byte key");
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let aad = [owner, b"\0", field].concat();
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .expect("encrypt");
    [&nonce[..], &ciphertext].concat()
}

/// Stores a lead as a database written before key ids holds it: its data key wrapped by
/// `kek` in the legacy layout (no key id), its email sealed under that data key.
async fn insert_legacy_lead(
    db: &mut PgConnection,
    kek: &str,
    email: &str,
) -> anyhow::Result<String> {
    let lead_id = Uuid::now_v7();
    let owner = lead_id.as_bytes();
    let data_key = Aes256Gcm::generate_key(OsRng);
    let wrapped = seal_legacy(&hex::decode(kek)?, owner, b"data-key", &data_key);
    assert_eq!(wrapped.len(), 60, "the legacy layout");
    sqlx::query(
        "INSERT INTO capture.leads (lead_id, source_id, channel, data_key, email_sealed, email_kind, quality_score) \
         VALUES ($1, $2, 'web', $3, $4, 'business', 10)",
    )
    .bind(lead_id)
    .bind(WEBSITE_SOURCE)
    .bind(wrapped)
    .bind(seal_legacy(&data_key, owner, b"email", email.as_bytes()))
    .execute(&mut *db)
    .await?;
    Ok(lead_id.to_string())
}

/// Stores a merge review of `lead_id` whose request is sealed under its own data key, wrapped
/// by `kek` for the review's id; returns the review id.
async fn insert_merge_review(
    db: &mut PgConnection,
    kek: &str,
    lead_id: &str,
    request: &[u8],
) -> anyhow::Result<Uuid> {
    let review_id = Uuid::now_v7();
    let keyring = keyring(kek, &[]);
    let (data_key, wrapped) = keyring.new_data_key(review_id.as_bytes())?;
    let sealed = data_key.seal(review_id.as_bytes(), "request", request)?;
    sqlx::query(
        "INSERT INTO capture.merge_reviews (review_id, reason, lead_id, source_id, caller, data_key, \
           request_sealed, lead_consent_channels, capture_consent_channels) \
         VALUES ($1, 'identity_conflict', $2, $3, 'e2e', $4, $5, '{}', '{}')",
    )
    .bind(review_id)
    .bind(Uuid::parse_str(lead_id)?)
    .bind(WEBSITE_SOURCE)
    .bind(wrapped)
    .bind(sealed)
    .execute(&mut *db)
    .await?;
    Ok(review_id)
}

fn keyring(primary: &str, previous: &[&str]) -> Keyring {
    let kek = |key: &str| Kek::from_hex(&SecretString::from(key.to_owned())).expect("valid key");
    Keyring::with_keys(
        kek(primary),
        previous.iter().map(|key| kek(key)).collect(),
        &SecretString::from(leadflow_e2e::BLIND_INDEX_KEY.to_owned()),
    )
    .expect("valid keys")
}

/// Opens the merge review's sealed request with `keyring`.
async fn review_request(
    db: &mut PgConnection,
    keyring: &Keyring,
    review_id: Uuid,
) -> anyhow::Result<Vec<u8>> {
    let (wrapped, sealed): (Vec<u8>, Vec<u8>) = sqlx::query_as(
        "SELECT data_key, request_sealed FROM capture.merge_reviews WHERE review_id = $1",
    )
    .bind(review_id)
    .fetch_one(&mut *db)
    .await?;
    let owner = review_id.as_bytes();
    let data_key = keyring.unwrap_data_key(owner, &wrapped)?;
    Ok(data_key.open(owner, "request", &sealed)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_the_pii_key_rewraps_every_data_key_and_keeps_every_lead_readable()
-> anyhow::Result<()> {
    let fixture = Fixture::create().await?;
    let mut db = fixture.env.connect().await?;

    // Under A alone, as before the rotation: leads, one with consent, one erased.
    let capture = fixture.start(KEY_A, &[]).await?;
    fixture.create_source(&capture).await?;
    let mut admin = fixture.admin(&capture).await?;
    let mut leads = HashMap::new();
    for index in 0..8 {
        let email = format!("rotation.{index}@keys.example");
        leads.insert(capture_email(&mut admin, &email).await?, email);
    }
    let with_consent = admin
        .capture_lead(CaptureLeadRequest {
            consent: Some(consent("203.0.113.9", "Mozilla/5.0 Rotation")),
            ..capture_of(person("consenting@keys.example", ""))
        })
        .await?
        .into_inner()
        .lead
        .expect("lead")
        .lead_id;
    leads.insert(with_consent.clone(), "consenting@keys.example".to_owned());
    let erased = capture_email(&mut admin, "erased@keys.example").await?;
    admin
        .erase_lead(EraseLeadRequest {
            lead_id: erased.clone(),
            reason: "gdpr-request".into(),
        })
        .await?;
    let legacy = insert_legacy_lead(&mut db, KEY_A, "legacy@keys.example").await?;
    leads.insert(legacy.clone(), "legacy@keys.example".to_owned());
    let review = insert_merge_review(&mut db, KEY_A, &legacy, b"held capture").await?;
    assert_readable(&mut fixture.reader(&capture).await?, &leads, "under A").await?;
    capture.terminate(Duration::from_secs(15)).await?;

    // Primary B, previous A: everything still reads; new leads go under B.
    let capture = fixture.start(KEY_B, &[KEY_A]).await?;
    let mut admin = fixture.admin(&capture).await?;
    let mut reader = fixture.reader(&capture).await?;
    assert_readable(&mut reader, &leads, "under B with previous A").await?;
    for index in 0..3 {
        let email = format!("after.{index}@keys.example");
        leads.insert(capture_email(&mut admin, &email).await?, email);
    }

    let status = rotate_keys(&fixture.env, KEY_B, &[KEY_A], &["--dry-run"]).await?;
    let report = printed(&status);
    assert!(status.status.success(), "{report}");
    for expected in [
        "capture.leads.data_key: 13 data keys".to_owned(),
        count_line(&key_id(KEY_B).to_string(), 3, "primary"),
        count_line(&key_id(KEY_A).to_string(), 9, "previous"),
        count_line("legacy", 1, "no key id"),
        "capture.merge_reviews.data_key: 1 data keys".to_owned(),
        count_line(&key_id(KEY_A).to_string(), 1, "previous"),
        "dry run: 11 data keys to re-wrap, 3 already under the primary key".to_owned(),
    ] {
        assert!(report.contains(&expected), "{expected:?} in:\n{report}");
    }
    assert_eq!(
        stored_data_keys(&mut db)
            .await?
            .iter()
            .filter(|(_, _, wrapped)| wrapped.starts_with(&key_id(KEY_B).wrapped_prefix()))
            .count(),
        3,
        "a dry run changes nothing"
    );

    let rotated = rotate_keys(&fixture.env, KEY_B, &[KEY_A], &[]).await?;
    let report = printed(&rotated);
    assert!(rotated.status.success(), "{report}");
    assert!(
        report.contains("done: re-wrapped 11, already current 3, failed 0"),
        "{report}"
    );
    assert_eq!(assert_all_wrapped_by(&mut db, KEY_B).await?, 14);
    let (erased_key,): (Option<Vec<u8>>,) =
        sqlx::query_as("SELECT data_key FROM capture.leads WHERE lead_id = $1")
            .bind(Uuid::parse_str(&erased)?)
            .fetch_one(&mut db)
            .await?;
    assert_eq!(
        erased_key, None,
        "an erased lead's data key stays destroyed"
    );
    for forbidden in leads.values() {
        assert!(!report.contains(forbidden.as_str()), "{report}");
    }

    let again = rotate_keys(&fixture.env, KEY_B, &[KEY_A], &[]).await?;
    let report = printed(&again);
    assert!(again.status.success(), "{report}");
    assert!(
        report.contains("done: re-wrapped 0, already current 14, failed 0"),
        "idempotent: {report}"
    );
    capture.terminate(Duration::from_secs(15)).await?;

    // B alone: A can go.
    let capture = fixture.start(KEY_B, &[]).await?;
    let mut reader = fixture.reader(&capture).await?;
    assert_readable(&mut reader, &leads, "under B alone").await?;
    let consented = reader
        .get_lead(GetLeadRequest {
            lead_id: with_consent,
        })
        .await?
        .into_inner()
        .lead
        .expect("lead");
    assert_eq!(consented.consents[0].ip_address, "203.0.113.9");
    assert_eq!(
        review_request(&mut db, &keyring(KEY_B, &[]), review).await?,
        b"held capture",
        "the merge review's data key was re-wrapped for its own id"
    );
    capture.terminate(Duration::from_secs(15)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_beside_a_serving_capture_loses_nothing() -> anyhow::Result<()> {
    const KNOWN: usize = 150;
    let fixture = Fixture::create().await?;
    let mut db = fixture.env.connect().await?;
    let capture = fixture.start(KEY_A, &[]).await?;
    fixture.create_source(&capture).await?;
    let mut admin = fixture.admin(&capture).await?;
    let mut leads = HashMap::new();
    for index in 0..KNOWN {
        let email = format!("known.{index}@busy.example");
        leads.insert(capture_email(&mut admin, &email).await?, email);
    }
    capture.terminate(Duration::from_secs(15)).await?;

    let capture = fixture.start(KEY_B, &[KEY_A]).await?;
    // Captures throughout the rotation: new people, and known ones again, which merges into
    // (and locks) rows the rotation is re-wrapping.
    let stop = Arc::new(AtomicBool::new(false));
    let captured = Arc::new(AtomicU64::new(0));
    let load = {
        let stop = stop.clone();
        let captured = captured.clone();
        let mut client = fixture.admin(&capture).await?;
        tokio::spawn(async move {
            let mut created = HashMap::new();
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let email = format!("new.{round}@busy.example");
                let response = client
                    .capture_lead(capture_of(person(&email, "")))
                    .await?
                    .into_inner();
                anyhow::ensure!(response.outcome() == CaptureOutcome::Created);
                created.insert(response.lead.expect("lead").lead_id, email);
                let again = client
                    .capture_lead(capture_of(person(
                        &format!("known.{}@busy.example", round % KNOWN),
                        "",
                    )))
                    .await?
                    .into_inner();
                anyhow::ensure!(again.outcome() == CaptureOutcome::Merged);
                captured.fetch_add(2, Ordering::Relaxed);
                round += 1;
            }
            Ok(created)
        })
    };

    // A lead under A stays locked through the interrupted run and the first passes of the
    // next, as a long capture would hold it: the rotation skips it rather than waiting, and
    // takes it in a later pass. (Locked before the interrupted run, which may otherwise
    // re-wrap every lead before it is killed.)
    let (locked, held) = tokio::sync::oneshot::channel();
    let holder = {
        let database_url = fixture.env.database_url.clone();
        tokio::spawn(async move {
            let mut locker = PgConnection::connect(&database_url).await?;
            let mut tx = locker.begin().await?;
            let (lead_id,): (Uuid,) = sqlx::query_as(
                "SELECT lead_id FROM capture.leads WHERE length(data_key) = 69 \
                 AND substring(data_key from 1 for 9) = $1 ORDER BY lead_id DESC LIMIT 1 FOR UPDATE",
            )
            .bind(&key_id(KEY_A).wrapped_prefix()[..])
            .fetch_one(&mut *tx)
            .await?;
            let _waiting = locked.send(lead_id);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            tx.commit().await?;
            anyhow::Ok(lead_id)
        })
    };
    let held_lead = held.await?;
    // Interrupted after a moment (whatever it committed stays), then run to the end.
    let mut interrupted = Command::new(binary_path("capture")?)
        .args(["rotate-keys", "--batch-size", "1"])
        .env_clear()
        .env("RUST_LOG", "warn")
        .envs(capture_env(&fixture.env, KEY_B, &[KEY_A]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    interrupted.start_kill()?;
    let _killed = interrupted.wait().await?;

    let captured_before = captured.load(Ordering::Relaxed);
    let rotated = rotate_keys(&fixture.env, KEY_B, &[KEY_A], &["--batch-size", "4"]).await?;
    let captured_during = captured.load(Ordering::Relaxed) - captured_before;
    let report = printed(&rotated);
    stop.store(true, Ordering::Relaxed);
    let created = load.await??;
    assert_eq!(holder.await??, held_lead);
    assert!(rotated.status.success(), "{report}");
    assert!(report.contains("failed 0"), "{report}");
    assert!(
        report.contains("another pass"),
        "the locked lead was skipped, then taken: {report}"
    );
    assert!(captured_during > 0, "captures ran during the rotation");
    let load_captures = captured.load(Ordering::Relaxed);

    // Every capture is a row with its own data key: a new lead, or a record merged into one.
    let total = assert_all_wrapped_by(&mut db, KEY_B).await?;
    assert_eq!(
        total as u64,
        KNOWN as u64 + load_captures,
        "one data key per stored capture"
    );
    let (touches,): (i64,) = sqlx::query_as(
        "SELECT sum(touch_count)::bigint FROM capture.leads WHERE merged_into IS NULL",
    )
    .fetch_one(&mut db)
    .await?;
    assert_eq!(
        u64::try_from(touches)?,
        KNOWN as u64 + load_captures,
        "every capture counted once"
    );
    capture.terminate(Duration::from_secs(15)).await?;

    leads.extend(created);
    let capture = fixture.start(KEY_B, &[]).await?;
    assert_readable(
        &mut fixture.reader(&capture).await?,
        &leads,
        "under B alone",
    )
    .await?;
    capture.terminate(Duration::from_secs(15)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_new_key_alone_before_rotation_fails_clearly_and_changes_nothing() -> anyhow::Result<()>
{
    let fixture = Fixture::create().await?;
    let mut db = fixture.env.connect().await?;
    let capture = fixture.start(KEY_A, &[]).await?;
    fixture.create_source(&capture).await?;
    let mut admin = fixture.admin(&capture).await?;
    let mut under_a = Vec::new();
    for index in 0..3 {
        under_a.push(capture_email(&mut admin, &format!("early.{index}@missing.example")).await?);
    }
    capture.terminate(Duration::from_secs(15)).await?;

    let capture = fixture.start(KEY_B, &[]).await?;
    let mut reader = fixture.reader(&capture).await?;
    let status = email_of(&mut reader, &under_a[0])
        .await
        .expect_err("a lead wrapped by a key capture lacks cannot be read");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("not configured with"),
        "says why: {status:?}"
    );
    let merge = fixture
        .admin(&capture)
        .await?
        .capture_lead(capture_of(person("early.1@missing.example", "")))
        .await
        .expect_err("a known person cannot be merged without their lead's key");
    assert!(merge.message().contains("not configured with"), "{merge:?}");
    // New people are captured, under B, and read back.
    let mut admin = fixture.admin(&capture).await?;
    let fresh = capture_email(&mut admin, "fresh@missing.example").await?;
    assert_eq!(
        email_of(&mut reader, &fresh).await?,
        "fresh@missing.example"
    );
    let logs = capture.logs().join("\n");
    assert!(
        logs.contains(&key_id(KEY_A).to_string()) && logs.contains("CAPTURE_PII_PREVIOUS_KEYS"),
        "the log names the missing key id and where it goes:\n{logs}"
    );
    assert!(!logs.contains("missing.example"), "no email in the logs");

    let before = stored_data_keys(&mut db).await?;
    let rotated = rotate_keys(&fixture.env, KEY_B, &[KEY_C], &[]).await?;
    let report = printed(&rotated);
    assert!(!rotated.status.success(), "{report}");
    assert!(
        report.contains("3 data keys cannot be unwrapped"),
        "names how many: {report}"
    );
    assert!(
        report.contains(&count_line(&key_id(KEY_A).to_string(), 3, "NOT CONFIGURED")),
        "{report}"
    );
    assert!(
        !report.contains("missing.example"),
        "never the data: {report}"
    );
    assert!(
        !report.contains(&KEY_B[..16]) && !report.contains(&KEY_C[..16]),
        "never a key: {report}"
    );
    let mut after = stored_data_keys(&mut db).await?;
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(before, after, "nothing was rewritten");
    capture.terminate(Duration::from_secs(15)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_previous_key_stops_start_up_naming_the_variable_not_the_value() -> anyhow::Result<()>
{
    let env = TestEnv::create().await?;
    let two_keys = format!("{KEY_A},{}zz", &KEY_C[..62]);
    for (previous, secret) in [
        ("0123456789abcdef", "0123456789abcdef"),
        (two_keys.as_str(), &KEY_C[..16]),
    ] {
        for command in ["serve", "rotate-keys"] {
            let output = Command::new(binary_path("capture")?)
                .arg(command)
                .env_clear()
                .envs(capture_env(&env, KEY_B, &[previous]))
                .output()
                .await?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(64), "{command}: {stderr}");
            assert!(stderr.contains("CAPTURE_PII_PREVIOUS_KEYS"), "{stderr}");
            assert!(!stderr.contains(secret), "the value is not shown: {stderr}");
        }
    }
    Ok(())
}
