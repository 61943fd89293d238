//! The SQL references of the run, kept in one place.
//!
//! **R-pg-capture** is exactly the statement sequence one `CaptureLead` of a *new* lead runs,
//! copied from `services/capture/src/store/` and issued with sqlx (prepared, like the service)
//! against the same database, schema, indexes, triggers and outbox relay:
//!
//! | statement            | mirrors                                                        |
//! |----------------------|----------------------------------------------------------------|
//! | [`SELECT_SUPPRESSED`]| `LeadStore::suppressed` (leads.rs), from `LeadStore::capture`  |
//! | `BEGIN`              | `LeadStore::capture_once`: `self.pool.begin()`                 |
//! | [`SELECT_KNOWN`]     | `capture_once`: the `FOR UPDATE` lookup by blind index         |
//! | [`INSERT_LEAD`]      | `LeadStore::insert_lead`                                       |
//! | [`INSERT_OUTBOX`]    | `Outbox::add` (libs/platform/src/events/outbox.rs), from `insert_lead` |
//! | [`INSERT_TOUCH`]     | `LeadStore::insert_touch`                                      |
//! | [`INSERT_CONSENT`]   | `LeadStore::insert_consent`                                    |
//! | [`SELECT_VIEW_LEAD`], [`SELECT_VIEW_TOUCHES`], [`SELECT_VIEW_CONSENTS`] | `LeadStore::view` |
//! | `COMMIT`             | `capture_once`: `self.outbox.commit(tx)` (its relay wake is no SQL) |
//!
//! Capture reads its source from a per-replica cache (`SourceStore::get`, 5 s), so no source
//! query is part of a capture.
//!
//! Sealed columns get random bytes of exactly the sizes capture writes (AES-256-GCM: 12-byte
//! nonce + plaintext + 16-byte tag; a wrapped data key is 60 bytes), blind indexes are the real
//! HMACs under the bench's key, and the outbox row carries a real `lead.captured` envelope.
//! When `store/leads.rs` changes, change this file with it: the unit test
//! `reference_sql_is_the_service_sql` fails until they agree again.
//!
//! **R-copy** is a text `COPY` of already-normalized rows into `capture.leads` (the columns
//! `insert_lead` writes) of a fresh database migrated by `capture migrate`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use leadflow_platform::events::{envelope, types};
use leadflow_platform::pii::{Keyring, keyed_hash};
use leadflow_proto::events::v1::{EmailDomainKind, LeadCaptured};
use prost::Message;
use secrecy::SecretString;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::leads::{Lead, Rng, SOURCE};

// --- R-pg-capture: the statements, verbatim from the service --------------------------------

/// `LeadStore::suppressed`.
pub const SELECT_SUPPRESSED: &str =
    "SELECT 1 FROM capture.suppressions WHERE bidx = ANY($1) LIMIT 1";

/// `LeadStore::capture_once`: the known person, locked for a merge.
pub const SELECT_KNOWN: &str = "SELECT lead_id, source_id, data_key, email_bidx, phone_bidx, first_name_sealed, last_name_sealed, \
                    company, country, website, job_title, last_captured_at \
             FROM capture.leads WHERE (email_bidx = $1 OR phone_bidx = $2) AND erased_at IS NULL \
             ORDER BY (email_bidx = $1) DESC NULLS LAST, created_at FOR UPDATE";

/// `LeadStore::insert_lead`.
pub const INSERT_LEAD: &str = "INSERT INTO capture.leads (lead_id, source_id, channel, campaign, data_key, email_bidx, phone_bidx, \
               email_sealed, phone_sealed, first_name_sealed, last_name_sealed, email_kind, email_role, phone_region, \
               phone_line_type, company, country, website, job_title, quality_score, email_digest, phone_digest, \
               merged_into, merged_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, \
               $23, CASE WHEN $23::uuid IS NULL THEN NULL ELSE now() END)";

/// `Outbox::add` with schema `capture`.
pub const INSERT_OUTBOX: &str =
    "INSERT INTO capture.outbox (event_id, stream, event_type, envelope) VALUES ($1, $2, $3, $4)";

/// `LeadStore::insert_touch`.
pub const INSERT_TOUCH: &str = "INSERT INTO capture.touches (touch_id, lead_id, source_id, channel, campaign, utm_source, utm_medium, \
               utm_campaign, utm_term, utm_content, gclid, fbclid, referrer, landing_page) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// `LeadStore::insert_consent`.
pub const INSERT_CONSENT: &str = "INSERT INTO capture.consents (consent_id, lead_id, channels, disclosure_text, disclosure_sha256, \
               form_url, form_version, ip_sealed, user_agent_sealed, legal_basis, given_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, COALESCE($11, now()))";

/// `LeadStore::view`: the lead.
pub const SELECT_VIEW_LEAD: &str = "SELECT data_key, email_sealed, phone_sealed, first_name_sealed, last_name_sealed, company, source_id, \
                    channel, campaign, email_kind, email_role, phone_line_type, country, website, job_title, \
                    quality_score, touch_count, erased_at, created_at \
             FROM capture.leads WHERE lead_id = $1";

/// `LeadStore::view`: its first and latest touch.
pub const SELECT_VIEW_TOUCHES: &str = "SELECT source_id, channel, campaign, utm_source, utm_medium, utm_campaign, utm_term, utm_content, \
                    gclid, fbclid, referrer, landing_page, captured_at \
             FROM ((SELECT * FROM capture.touches WHERE lead_id = ANY($1) ORDER BY captured_at, touch_id LIMIT 1) \
                   UNION ALL \
                   (SELECT * FROM capture.touches WHERE lead_id = ANY($1) ORDER BY captured_at DESC, touch_id DESC LIMIT 1)) \
                  AS first_and_latest ORDER BY captured_at, touch_id";

/// `LeadStore::view`: its consents.
pub const SELECT_VIEW_CONSENTS: &str = "SELECT lead_id, consent_id, channels, disclosure_text, disclosure_sha256, form_url, form_version, \
                    ip_sealed, user_agent_sealed, legal_basis, given_at \
             FROM capture.consents WHERE lead_id = ANY($1) ORDER BY recorded_at, consent_id";

/// AES-256-GCM nonce + tag around every sealed value.
const SEAL_OVERHEAD: usize = 12 + 16;
/// A wrapped data key: format byte + key id + nonce + 32-byte key + tag.
const WRAPPED_KEY_LEN: usize = 1 + 8 + 12 + 32 + 16;

/// Random bytes to cut sealed values from, and the keys capture hashes with.
pub struct Material {
    random: Vec<u8>,
    keyring: Keyring,
    identity_key: Vec<u8>,
    stream: String,
}

impl Material {
    /// Returns the material for a run whose capture publishes to `stream`.
    pub fn new(stream: String) -> anyhow::Result<Self> {
        let mut rng = Rng::new(0x5ea1);
        let random = (0..64 * 1024).map(|_| rng.next_u64() as u8).collect();
        let keyring = Keyring::new(
            &SecretString::from(leadflow_e2e::PII_KEY.to_owned()),
            &SecretString::from(leadflow_e2e::BLIND_INDEX_KEY.to_owned()),
        )
        .context("bench keyring")?;
        Ok(Self {
            random,
            keyring,
            identity_key: leadflow_e2e::IDENTITY_HASH_KEY.as_bytes().to_vec(),
            stream,
        })
    }

    /// Returns `len` random-looking bytes (a slice of the pool at a random offset).
    fn bytes(&self, rng: &mut Rng, len: usize) -> Vec<u8> {
        let start = rng.below((self.random.len() - len) as u64) as usize;
        self.random[start..start + len].to_vec()
    }

    /// Returns a sealed-sized value for `text` (NULL for empty text, like `seal_text`).
    fn sealed(&self, rng: &mut Rng, text: &str) -> Option<Vec<u8>> {
        (!text.is_empty()).then(|| self.bytes(rng, text.len() + SEAL_OVERHEAD))
    }
}

/// Every value one new-lead capture binds, computed before its transaction.
pub struct RefCapture {
    lead_id: Uuid,
    data_key: Vec<u8>,
    email_bidx: Vec<u8>,
    phone_bidx: Vec<u8>,
    email_sealed: Option<Vec<u8>>,
    phone_sealed: Option<Vec<u8>>,
    first_name_sealed: Option<Vec<u8>>,
    last_name_sealed: Option<Vec<u8>>,
    event_id: Uuid,
    envelope: Vec<u8>,
    touch_id: Uuid,
    consent_id: Uuid,
    ip_sealed: Option<Vec<u8>>,
    user_agent_sealed: Option<Vec<u8>>,
    disclosure_sha256: String,
    lead: Lead,
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _infallible = write!(out, "{byte:02x}");
    }
    out
}

impl RefCapture {
    /// Prepares the values capture would bind for `lead`.
    pub fn new(material: &Material, lead: Lead) -> Self {
        let mut rng = Rng::new(lead.number ^ 0x7265_6663);
        let normalized = &lead.normalized;
        let lead_id = Uuid::now_v7();
        let email_hash = hex(&keyed_hash(
            &material.identity_key,
            "email",
            &normalized.email,
        ));
        let phone_hash = hex(&keyed_hash(
            &material.identity_key,
            "phone",
            &normalized.phone_e164,
        ));
        let event = LeadCaptured {
            lead_id: lead_id.to_string(),
            source: SOURCE.to_owned(),
            channel: normalized.channel.clone(),
            campaign: normalized.campaign.clone(),
            email_domain_kind: if normalized.email_kind == "business" {
                EmailDomainKind::Business
            } else {
                EmailDomainKind::Free
            }
            .into(),
            has_phone: true,
            has_company: !normalized.company.is_empty(),
            email_hash,
            phone_hash,
            phone_region: normalized.phone_region.to_owned(),
            quality_score: normalized.quality_score,
            country: normalized.country.clone(),
            consent_channels: normalized.consent_channels.clone(),
        };
        let mut envelope = envelope("capture", types::LEAD_CAPTURED, Some(lead_id), &event);
        // Inside the service the request span gives every envelope a W3C traceparent.
        envelope.traceparent = format!(
            "00-{:016x}{:016x}-{:016x}-01",
            rng.next_u64(),
            rng.next_u64(),
            rng.next_u64()
        );
        let event_id = Uuid::parse_str(&envelope.event_id).unwrap_or_else(|_| Uuid::now_v7());
        let consent = lead.request.consent.clone().unwrap_or_default();
        let disclosure_sha256 = hex(&keyed_hash(b"sha", "disclosure", &consent.disclosure_text));
        Self {
            lead_id,
            data_key: material.bytes(&mut rng, WRAPPED_KEY_LEN),
            email_bidx: material.keyring.blind_index("email", &normalized.email),
            phone_bidx: material
                .keyring
                .blind_index("phone", &normalized.phone_e164),
            email_sealed: material.sealed(&mut rng, &normalized.email),
            phone_sealed: material.sealed(&mut rng, &normalized.phone_e164),
            first_name_sealed: material.sealed(&mut rng, &normalized.first_name),
            last_name_sealed: material.sealed(&mut rng, &normalized.last_name),
            event_id,
            envelope: envelope.encode_to_vec(),
            touch_id: Uuid::now_v7(),
            consent_id: Uuid::now_v7(),
            ip_sealed: material.sealed(&mut rng, &normalized.ip_address),
            user_agent_sealed: material.sealed(&mut rng, &normalized.user_agent),
            disclosure_sha256,
            lead,
        }
    }
}

/// Runs, for one new lead, exactly the SQL `CaptureLead` runs (see the module comment).
pub async fn capture_new_lead(
    pool: &PgPool,
    material: &Material,
    capture: &RefCapture,
) -> Result<(), sqlx::Error> {
    let normalized = &capture.lead.normalized;
    let request = &capture.lead.request;
    let attribution = request.attribution.clone().unwrap_or_default();
    let consent = request.consent.clone().unwrap_or_default();

    // LeadStore::capture → suppressed (on the pool).
    let identities = vec![capture.email_bidx.clone(), capture.phone_bidx.clone()];
    let _suppressed = sqlx::query(SELECT_SUPPRESSED)
        .bind(&identities)
        .fetch_optional(pool)
        .await?;
    // LeadStore::capture_once.
    let mut tx = pool.begin().await?;
    let known = sqlx::query(SELECT_KNOWN)
        .bind(&capture.email_bidx)
        .bind(&capture.phone_bidx)
        .fetch_all(&mut *tx)
        .await?;
    debug_assert!(known.is_empty(), "reference leads are new people");
    // insert_lead.
    sqlx::query(INSERT_LEAD)
        .bind(capture.lead_id)
        .bind(SOURCE)
        .bind(&normalized.channel)
        .bind(&normalized.campaign)
        .bind(&capture.data_key)
        .bind(&capture.email_bidx)
        .bind(&capture.phone_bidx)
        .bind(&capture.email_sealed)
        .bind(&capture.phone_sealed)
        .bind(&capture.first_name_sealed)
        .bind(&capture.last_name_sealed)
        .bind(normalized.email_kind)
        .bind(false)
        .bind(normalized.phone_region)
        .bind(normalized.phone_line_type)
        .bind(&normalized.company)
        .bind(&normalized.country)
        .bind(&normalized.website)
        .bind(&normalized.job_title)
        .bind(normalized.quality_score)
        .bind(&capture.email_bidx)
        .bind(&capture.phone_bidx)
        .bind(None::<Uuid>)
        .execute(&mut *tx)
        .await?;
    // insert_lead → Outbox::add.
    sqlx::query(INSERT_OUTBOX)
        .bind(capture.event_id)
        .bind(&material.stream)
        .bind(types::LEAD_CAPTURED)
        .bind(&capture.envelope)
        .execute(&mut *tx)
        .await?;
    // insert_touch.
    sqlx::query(INSERT_TOUCH)
        .bind(capture.touch_id)
        .bind(capture.lead_id)
        .bind(SOURCE)
        .bind(&normalized.channel)
        .bind(&normalized.campaign)
        .bind(&attribution.utm_source)
        .bind(&attribution.utm_medium)
        .bind(&attribution.utm_campaign)
        .bind(&attribution.utm_term)
        .bind(&attribution.utm_content)
        .bind(&attribution.gclid)
        .bind(&attribution.fbclid)
        .bind(&attribution.referrer)
        .bind(&attribution.landing_page)
        .execute(&mut *tx)
        .await?;
    // insert_consent.
    sqlx::query(INSERT_CONSENT)
        .bind(capture.consent_id)
        .bind(capture.lead_id)
        .bind(&normalized.consent_channels)
        .bind(&consent.disclosure_text)
        .bind(&capture.disclosure_sha256)
        .bind(&consent.form_url)
        .bind(&consent.form_version)
        .bind(&capture.ip_sealed)
        .bind(&capture.user_agent_sealed)
        .bind("LEGAL_BASIS_CONSENT")
        .bind(None::<sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc>>)
        .execute(&mut *tx)
        .await?;
    // view: the lead, its touches, its consents.
    let _lead = sqlx::query(SELECT_VIEW_LEAD)
        .bind(capture.lead_id)
        .fetch_optional(&mut *tx)
        .await?;
    let family = [capture.lead_id];
    let _touches = sqlx::query(SELECT_VIEW_TOUCHES)
        .bind(family)
        .fetch_all(&mut *tx)
        .await?;
    let _consents = sqlx::query(SELECT_VIEW_CONSENTS)
        .bind(family)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

// --- R-copy ---------------------------------------------------------------------------------

/// The columns `insert_lead` writes.
pub const COPY_LEADS: &str = "COPY capture.leads (lead_id, source_id, channel, campaign, data_key, email_bidx, phone_bidx, \
     email_sealed, phone_sealed, first_name_sealed, last_name_sealed, email_kind, email_role, phone_region, \
     phone_line_type, company, country, website, job_title, quality_score, email_digest, phone_digest) FROM STDIN";

/// Appends `text` escaped for COPY's text format.
fn copy_text(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// Appends a bytea (`\\x…` in COPY text) or `\N`.
fn copy_bytes(out: &mut String, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push_str("\\N"),
        Some(bytes) => {
            out.push_str("\\\\x");
            out.push_str(&hex(bytes));
        }
    }
}

/// Appends one already-normalized lead as a COPY text line.
pub fn copy_line(out: &mut String, material: &Material, lead: &Lead) {
    let mut rng = Rng::new(lead.number ^ 0x636f_7079);
    let normalized = &lead.normalized;
    let _infallible = write!(out, "{}\t", Uuid::now_v7());
    copy_text(out, SOURCE);
    out.push('\t');
    copy_text(out, &normalized.channel);
    out.push('\t');
    copy_text(out, &normalized.campaign);
    out.push('\t');
    copy_bytes(out, Some(&material.bytes(&mut rng, WRAPPED_KEY_LEN)));
    out.push('\t');
    let email_bidx = material.keyring.blind_index("email", &normalized.email);
    let phone_bidx = material
        .keyring
        .blind_index("phone", &normalized.phone_e164);
    copy_bytes(out, Some(&email_bidx));
    out.push('\t');
    copy_bytes(out, Some(&phone_bidx));
    for text in [
        &normalized.email,
        &normalized.phone_e164,
        &normalized.first_name,
        &normalized.last_name,
    ] {
        out.push('\t');
        copy_bytes(out, material.sealed(&mut rng, text).as_deref());
    }
    let _infallible = write!(
        out,
        "\t{}\tf\t{}\t{}\t",
        normalized.email_kind, normalized.phone_region, normalized.phone_line_type
    );
    copy_text(out, &normalized.company);
    out.push('\t');
    copy_text(out, &normalized.country);
    out.push('\t');
    copy_text(out, &normalized.website);
    out.push('\t');
    copy_text(out, &normalized.job_title);
    let _infallible = write!(out, "\t{}\t", normalized.quality_score);
    copy_bytes(out, Some(&email_bidx));
    out.push('\t');
    copy_bytes(out, Some(&phone_bidx));
    out.push('\n');
}

/// Writes `rows` already-normalized leads (numbers from 0) as COPY text to `path`, before any
/// timing; returns the file's size in bytes.
pub async fn write_copy_file(
    material: Arc<Material>,
    path: PathBuf,
    rows: u64,
) -> anyhow::Result<u64> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let file =
            std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut line = String::with_capacity(1024);
        let mut size = 0u64;
        for number in 0..rows {
            line.clear();
            copy_line(&mut line, &material, &Lead::new(number));
            writer
                .write_all(line.as_bytes())
                .context("write COPY file")?;
            size += line.len() as u64;
        }
        writer.flush().context("flush COPY file")?;
        Ok(size)
    })
    .await
    .context("join COPY file writer")?
}

/// Streams the COPY text file at `path` into `capture.leads` over `connection`; returns how
/// many rows Postgres took.
pub async fn copy_file(connection: &mut PgConnection, path: &Path) -> anyhow::Result<u64> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("open {}", path.display()))?;
    let mut copy = connection
        .copy_in_raw(COPY_LEADS)
        .await
        .context("start COPY")?;
    copy.read_from(file).await.context("send COPY data")?;
    copy.finish().await.context("finish COPY")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns a Rust source file as its string literals would read at run time: a `\` at
    /// the end of a line drops the line break and the next line's leading whitespace.
    fn unescaped_source(path: &str) -> String {
        let file = crate::environment::workspace_root().join(path);
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|err| panic!("read {}: {err}", file.display()));
        let mut out = String::with_capacity(text.len());
        let mut lines = text.split('\n').peekable();
        let mut joining = false;
        while let Some(line) = lines.next() {
            let line = if joining { line.trim_start() } else { line };
            joining = line.ends_with('\\');
            if joining {
                out.push_str(&line[..line.len() - 1]);
            } else {
                out.push_str(line);
                if lines.peek().is_some() {
                    out.push('\n');
                }
            }
        }
        out
    }

    #[test]
    fn reference_sql_is_the_service_sql() {
        let leads = unescaped_source("services/capture/src/store/leads.rs");
        let read = unescaped_source("services/capture/src/store/leads/read.rs");
        let outbox = unescaped_source("libs/platform/src/events/outbox.rs")
            .replace("INSERT INTO {}.outbox", "INSERT INTO capture.outbox");
        for (name, sql, file) in [
            ("SELECT_SUPPRESSED", SELECT_SUPPRESSED, &leads),
            ("SELECT_KNOWN", SELECT_KNOWN, &leads),
            ("INSERT_LEAD", INSERT_LEAD, &leads),
            ("INSERT_OUTBOX", INSERT_OUTBOX, &outbox),
            ("INSERT_TOUCH", INSERT_TOUCH, &leads),
            ("INSERT_CONSENT", INSERT_CONSENT, &leads),
            ("SELECT_VIEW_LEAD", SELECT_VIEW_LEAD, &read),
            ("SELECT_VIEW_TOUCHES", SELECT_VIEW_TOUCHES, &read),
            ("SELECT_VIEW_CONSENTS", SELECT_VIEW_CONSENTS, &read),
        ] {
            assert!(
                file.contains(&format!("\"{sql}\"")),
                "R-pg-capture's {name} is no longer what capture runs; update tests/src/bench/reference.rs:\n{sql}"
            );
        }
    }

    #[test]
    fn copy_lines_have_every_column() {
        let material = Material::new("s".to_owned()).expect("material");
        let mut line = String::new();
        copy_line(&mut line, &material, &Lead::new(3));
        assert_eq!(line.matches('\t').count(), 21, "{line}");
        assert!(line.ends_with('\n'));
    }
}
