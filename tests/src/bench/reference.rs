//! The SQL references of the run, kept in one place.
//!
//! **R-pg-capture** is exactly the SQL one `CaptureLead` of a *new* lead runs, copied from
//! `services/capture/src/store/leads.rs` and issued with sqlx (prepared, like the service)
//! against the same database, schema, indexes, triggers and outbox relay: one autocommitted
//! statement, [`INSERT_NEW_LEAD`] (`LeadStore::capture`'s path for a person nobody holds
//! yet: the suppression and identity checks, the lead, its touch, consent and outbox row;
//! its relay wake is no SQL).
//!
//! A new lead's answer is built from the values just written (`new_lead_view`), so no
//! read-back is part of a capture either. Capture reads its source from a per-replica cache
//! (`SourceStore::get`, 5 s), so no source query is part of a capture.
//!
//! Sealed columns get random bytes of exactly the sizes capture writes (AES-256-GCM: 12-byte
//! nonce + plaintext + 16-byte tag; a wrapped data key is 60 bytes), blind indexes are the real
//! HMACs under the bench's key, and the outbox row carries a real `lead.captured` envelope.
//! When `store/leads.rs` changes, change this file with it: the unit test
//! `reference_sql_is_the_service_sql` fails until they agree again.
//!
//! **R-copy** is a text `COPY` of the same rows, already normalized, into the same tables
//! (`../shared/benchmarks.md` §2): each new lead's row in `capture.leads`, its touch, its
//! consent record and its `lead.captured` outbox row (the columns `insert_capture` writes,
//! with the values R-pg-capture binds), into a fresh database migrated by `capture migrate`.
//! It copies every row as a new lead; the import also plans merges and rejections, which
//! COPY cannot do.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
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

/// `LeadStore::capture`'s statement for a person nobody holds yet: the lead, its touch, its
/// consent and its `lead.captured` outbox row (as `Outbox::envelope` builds it), unless the
/// person is suppressed or known, autocommitted.
pub const INSERT_NEW_LEAD: &str = "WITH known AS (SELECT EXISTS (SELECT 1 FROM capture.suppressions WHERE bidx IN ($6, $7)) \
               OR EXISTS (SELECT 1 FROM capture.leads WHERE (email_bidx = $6 OR phone_bidx = $7) AND erased_at IS NULL) \
               AS known), \
             lead AS (INSERT INTO capture.leads (lead_id, source_id, channel, campaign, data_key, email_bidx, \
               phone_bidx, email_sealed, phone_sealed, first_name_sealed, last_name_sealed, email_kind, email_role, \
               phone_region, phone_line_type, company, country, website, job_title, quality_score, email_digest, \
               phone_digest, merged_into, merged_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, \
               $23, CASE WHEN $23::uuid IS NULL THEN NULL ELSE now() END WHERE NOT (SELECT known FROM known) \
             ON CONFLICT DO NOTHING RETURNING created_at), \
             touch AS (INSERT INTO capture.touches (touch_id, lead_id, source_id, channel, campaign, utm_source, \
               utm_medium, utm_campaign, utm_term, utm_content, gclid, fbclid, referrer, landing_page) \
             SELECT $24, $1, $2, $3, $4, $25, $26, $27, $28, $29, $30, $31, $32, $33 FROM lead), \
             consent AS (INSERT INTO capture.consents (consent_id, lead_id, channels, disclosure_text, \
               disclosure_sha256, form_url, form_version, ip_sealed, user_agent_sealed, legal_basis, given_at) \
             SELECT $34, $1, $35, $36, $37, $38, $39, $40, $41, $42, COALESCE($43, now()) FROM lead WHERE $34::uuid IS NOT NULL), \
             event AS (INSERT INTO capture.outbox (event_id, stream, event_type, envelope) \
             SELECT $44, $45, $46, $47 FROM lead WHERE $44::uuid IS NOT NULL) \
             SELECT created_at FROM lead";

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

    // LeadStore::capture → insert_with(INSERT_NEW_LEAD), autocommitted.
    let inserted = sqlx::query(INSERT_NEW_LEAD)
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
        .bind(capture.touch_id)
        .bind(&attribution.utm_source)
        .bind(&attribution.utm_medium)
        .bind(&attribution.utm_campaign)
        .bind(&attribution.utm_term)
        .bind(&attribution.utm_content)
        .bind(&attribution.gclid)
        .bind(&attribution.fbclid)
        .bind(&attribution.referrer)
        .bind(&attribution.landing_page)
        .bind(Some(capture.consent_id))
        .bind(Some(&normalized.consent_channels))
        .bind(Some(&consent.disclosure_text))
        .bind(Some(&capture.disclosure_sha256))
        .bind(Some(&consent.form_url))
        .bind(Some(&consent.form_version))
        .bind(&capture.ip_sealed)
        .bind(&capture.user_agent_sealed)
        .bind(Some("LEGAL_BASIS_CONSENT"))
        .bind(None::<sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc>>)
        .bind(Some(capture.event_id))
        .bind(&material.stream)
        .bind(types::LEAD_CAPTURED)
        .bind(Some(&capture.envelope))
        .fetch_optional(pool)
        .await?;
    debug_assert!(
        inserted.is_some(),
        "reference leads are new, unsuppressed people"
    );
    Ok(())
}

// --- R-copy ---------------------------------------------------------------------------------

/// The columns `insert_capture` writes into `capture.leads`.
pub const COPY_LEADS: &str = "COPY capture.leads (lead_id, source_id, channel, campaign, data_key, email_bidx, phone_bidx, \
     email_sealed, phone_sealed, first_name_sealed, last_name_sealed, email_kind, email_role, phone_region, \
     phone_line_type, company, country, website, job_title, quality_score, email_digest, phone_digest) FROM STDIN";

/// The columns `insert_capture` writes into `capture.touches`.
pub const COPY_TOUCHES: &str = "COPY capture.touches (touch_id, lead_id, source_id, channel, campaign, utm_source, utm_medium, \
     utm_campaign, utm_term, utm_content, gclid, fbclid, referrer, landing_page) FROM STDIN";

/// The columns `insert_capture` writes into `capture.consents`.
pub const COPY_CONSENTS: &str = "COPY capture.consents (consent_id, lead_id, channels, disclosure_text, disclosure_sha256, \
     form_url, form_version, ip_sealed, user_agent_sealed, legal_basis, given_at) FROM STDIN";

/// The columns `insert_capture` writes into `capture.outbox`.
pub const COPY_OUTBOX: &str =
    "COPY capture.outbox (event_id, stream, event_type, envelope) FROM STDIN";

/// Every table a new lead's import writes a row to, in the order their foreign keys need:
/// R-copy copies each lead into all of them, as `ImportLeads` stores it.
pub const COPY_TABLES: [&str; 4] = [COPY_LEADS, COPY_TOUCHES, COPY_CONSENTS, COPY_OUTBOX];

/// The time every copied consent was given.
const COPY_GIVEN_AT: &str = "2026-11-24 12:00:00+00";

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

/// Appends text fields, each after a tab.
fn copy_texts<'a>(out: &mut String, texts: impl IntoIterator<Item = &'a str>) {
    for text in texts {
        out.push('\t');
        copy_text(out, text);
    }
}

/// Appends one new lead's rows as COPY text lines, one per table of [`COPY_TABLES`]: the lead,
/// its touch, its consent record and its `lead.captured` outbox row, with the values the
/// R-pg-capture reference binds.
pub fn copy_lines(out: &mut [String; 4], material: &Material, capture: &RefCapture) {
    let normalized = &capture.lead.normalized;
    let request = &capture.lead.request;
    let [leads, touches, consents, outbox] = out;

    let _infallible = write!(leads, "{}\t", capture.lead_id);
    copy_text(leads, SOURCE);
    copy_texts(leads, [normalized.channel.as_str(), &normalized.campaign]);
    for bytes in [
        Some(capture.data_key.as_slice()),
        Some(&capture.email_bidx),
        Some(&capture.phone_bidx),
        capture.email_sealed.as_deref(),
        capture.phone_sealed.as_deref(),
        capture.first_name_sealed.as_deref(),
        capture.last_name_sealed.as_deref(),
    ] {
        leads.push('\t');
        copy_bytes(leads, bytes);
    }
    let _infallible = write!(
        leads,
        "\t{}\tf\t{}\t{}",
        normalized.email_kind, normalized.phone_region, normalized.phone_line_type
    );
    copy_texts(
        leads,
        [
            normalized.company.as_str(),
            &normalized.country,
            &normalized.website,
            &normalized.job_title,
        ],
    );
    let _infallible = write!(leads, "\t{}\t", normalized.quality_score);
    copy_bytes(leads, Some(&capture.email_bidx));
    leads.push('\t');
    copy_bytes(leads, Some(&capture.phone_bidx));
    leads.push('\n');

    let attribution = request.attribution.clone().unwrap_or_default();
    let _infallible = write!(touches, "{}\t{}\t", capture.touch_id, capture.lead_id);
    copy_text(touches, SOURCE);
    copy_texts(
        touches,
        [
            normalized.channel.as_str(),
            &normalized.campaign,
            &attribution.utm_source,
            &attribution.utm_medium,
            &attribution.utm_campaign,
            &attribution.utm_term,
            &attribution.utm_content,
            &attribution.gclid,
            &attribution.fbclid,
            &attribution.referrer,
            &attribution.landing_page,
        ],
    );
    touches.push('\n');

    let consent = request.consent.clone().unwrap_or_default();
    let _infallible = write!(consents, "{}\t{}\t{{", capture.consent_id, capture.lead_id);
    for (n, channel) in normalized.consent_channels.iter().enumerate() {
        if n > 0 {
            consents.push(',');
        }
        copy_text(consents, channel);
    }
    consents.push('}');
    copy_texts(
        consents,
        [
            consent.disclosure_text.as_str(),
            &capture.disclosure_sha256,
            &consent.form_url,
            &consent.form_version,
        ],
    );
    consents.push('\t');
    copy_bytes(consents, capture.ip_sealed.as_deref());
    consents.push('\t');
    copy_bytes(consents, capture.user_agent_sealed.as_deref());
    copy_texts(consents, ["LEGAL_BASIS_CONSENT", COPY_GIVEN_AT]);
    consents.push('\n');

    let _infallible = write!(outbox, "{}\t", capture.event_id);
    copy_text(outbox, &material.stream);
    outbox.push('\t');
    copy_text(outbox, types::LEAD_CAPTURED);
    outbox.push('\t');
    copy_bytes(outbox, Some(&capture.envelope));
    outbox.push('\n');
}

/// R-copy's input: one COPY text file per table of [`COPY_TABLES`].
pub struct CopyFiles {
    pub paths: [PathBuf; 4],
    /// Their size together, in bytes.
    pub bytes: u64,
}

impl CopyFiles {
    /// Removes the files.
    pub fn remove(&self) {
        for path in &self.paths {
            let _removed = std::fs::remove_file(path);
        }
    }
}

/// Writes `rows` already-normalized new leads (numbers from 0) as COPY text, one file per
/// table beside `stem`, before any timing.
pub async fn write_copy_files(
    material: Arc<Material>,
    stem: PathBuf,
    rows: u64,
) -> anyhow::Result<CopyFiles> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<CopyFiles> {
        let paths = ["leads", "touches", "consents", "outbox"]
            .map(|table| stem.with_extension(format!("{table}.copy")));
        let files = CopyFiles { paths, bytes: 0 };
        let written = (|| -> anyhow::Result<u64> {
            let mut writers = Vec::with_capacity(4);
            for path in &files.paths {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("create {}", path.display()))?;
                writers.push(std::io::BufWriter::with_capacity(1 << 20, file));
            }
            let mut lines: [String; 4] = Default::default();
            let mut size = 0u64;
            for number in 0..rows {
                lines.iter_mut().for_each(String::clear);
                let capture = RefCapture::new(&material, Lead::new(number));
                copy_lines(&mut lines, &material, &capture);
                for (writer, line) in writers.iter_mut().zip(&lines) {
                    writer
                        .write_all(line.as_bytes())
                        .context("write COPY file")?;
                    size += line.len() as u64;
                }
            }
            for writer in &mut writers {
                writer.flush().context("flush COPY file")?;
            }
            Ok(size)
        })();
        match written {
            Ok(bytes) => Ok(CopyFiles { bytes, ..files }),
            Err(err) => {
                files.remove();
                Err(err)
            }
        }
    })
    .await
    .context("join COPY file writer")?
}

/// Streams the COPY files into their tables over `connection`, one after the other (each
/// COPY its own transaction); returns how many leads Postgres took.
pub async fn copy_files(connection: &mut PgConnection, files: &CopyFiles) -> anyhow::Result<u64> {
    let mut leads = None;
    for (statement, path) in COPY_TABLES.iter().zip(&files.paths) {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("open {}", path.display()))?;
        let mut copy = connection
            .copy_in_raw(statement)
            .await
            .with_context(|| format!("start {statement}"))?;
        copy.read_from(file).await.context("send COPY data")?;
        let rows = copy.finish().await.context("finish COPY")?;
        match leads {
            None => leads = Some(rows),
            Some(leads) if leads != rows => {
                anyhow::bail!("copied {leads} leads but {rows} rows by {statement}")
            }
            Some(_) => {}
        }
    }
    Ok(leads.unwrap_or_default())
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
        assert!(
            leads.contains(&format!("\"{INSERT_NEW_LEAD}\"")),
            "R-pg-capture's INSERT_NEW_LEAD is no longer what capture runs; update tests/src/bench/reference.rs:\n{INSERT_NEW_LEAD}"
        );
    }

    #[test]
    fn copy_lines_have_every_column() {
        let material = Material::new("s".to_owned()).expect("material");
        let capture = RefCapture::new(&material, Lead::new(3));
        let mut lines: [String; 4] = Default::default();
        copy_lines(&mut lines, &material, &capture);
        for (statement, line) in COPY_TABLES.iter().zip(&lines) {
            let columns = statement.matches(',').count() + 1;
            assert_eq!(
                line.matches('\t').count(),
                columns - 1,
                "{statement}\n{line}"
            );
            assert_eq!(line.matches('\n').count(), 1, "{line}");
            assert!(line.ends_with('\n'));
        }
    }
}
