//! Reading leads: a lead is its own row plus every row merged into it (its family), whose
//! touches, consents and merges make up its history.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use leadflow_platform::pii::DataKey;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{ConsentRow, LeadStore, LeadView, StoreError, TouchRow};

/// A lead's row as read.
#[derive(Debug, sqlx::FromRow)]
struct LeadRow {
    data_key: Option<Vec<u8>>,
    email_sealed: Option<Vec<u8>>,
    phone_sealed: Option<Vec<u8>>,
    first_name_sealed: Option<Vec<u8>>,
    last_name_sealed: Option<Vec<u8>>,
    company: String,
    source_id: String,
    channel: String,
    campaign: String,
    email_kind: String,
    email_role: bool,
    phone_line_type: String,
    country: String,
    website: String,
    job_title: String,
    quality_score: i32,
    touch_count: i32,
    erased_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

/// A consent record as stored, with the row it belongs to.
#[derive(Debug, sqlx::FromRow)]
struct StoredConsent {
    lead_id: Uuid,
    consent_id: Uuid,
    channels: Vec<String>,
    disclosure_text: String,
    disclosure_sha256: String,
    form_url: String,
    form_version: String,
    ip_sealed: Option<Vec<u8>>,
    user_agent_sealed: Option<Vec<u8>>,
    legal_basis: String,
    given_at: DateTime<Utc>,
}

impl LeadStore {
    /// Returns a lead with its personal data opened (empty once erased). The id of a row
    /// merged into a lead answers with that lead.
    pub async fn get(&self, lead_id: Uuid) -> Result<Option<LeadView>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        self.view(&mut connection, lead_id).await
    }

    /// Returns the lead `lead_id` is part of: itself, or the lead it was merged into.
    pub(super) async fn view(
        &self,
        connection: &mut PgConnection,
        lead_id: Uuid,
    ) -> Result<Option<LeadView>, StoreError> {
        let Some((root, family)) = self.family(connection, lead_id).await? else {
            return Ok(None);
        };
        self.view_family(connection, root, &family, true).await
    }

    /// Returns the lead `lead_id` belongs to (itself when not merged) and that lead's family:
    /// itself and every row merged into it, directly or through a merged lead.
    pub(super) async fn family(
        &self,
        connection: &mut PgConnection,
        lead_id: Uuid,
    ) -> Result<Option<(Uuid, Vec<Uuid>)>, StoreError> {
        let (root, family): (Option<Uuid>, Vec<Uuid>) = sqlx::query_as(
            "WITH RECURSIVE up AS ( \
               SELECT lead_id, merged_into FROM capture.leads WHERE lead_id = $1 \
               UNION ALL \
               SELECT l.lead_id, l.merged_into FROM capture.leads l JOIN up ON l.lead_id = up.merged_into), \
             root AS (SELECT lead_id FROM up WHERE merged_into IS NULL), \
             family AS ( \
               SELECT lead_id FROM root \
               UNION ALL \
               SELECT l.lead_id FROM capture.leads l JOIN family f ON l.merged_into = f.lead_id) \
             SELECT (SELECT lead_id FROM root), COALESCE(array_agg(lead_id), '{}') FROM family",
        )
        .bind(lead_id)
        .fetch_one(&mut *connection)
        .await?;
        Ok(root.map(|root| (root, family)))
    }

    /// Returns lead `root` with the history of its `family`; `with_lineage` reads its merges
    /// (a lead just created has none).
    pub(super) async fn view_family(
        &self,
        connection: &mut PgConnection,
        root: Uuid,
        family: &[Uuid],
        with_lineage: bool,
    ) -> Result<Option<LeadView>, StoreError> {
        let row: Option<LeadRow> = sqlx::query_as(
            "SELECT data_key, email_sealed, phone_sealed, first_name_sealed, last_name_sealed, company, source_id, \
                    channel, campaign, email_kind, email_role, phone_line_type, country, website, job_title, \
                    quality_score, touch_count, erased_at, created_at \
             FROM capture.leads WHERE lead_id = $1",
        )
        .bind(root)
        .fetch_optional(&mut *connection)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let owner = root.as_bytes();
        let key = self.open_key(root, row.data_key.as_deref())?;
        let open = |field: &str, sealed: Option<Vec<u8>>| -> Result<String, StoreError> {
            match &key {
                Some(key) => Ok(key
                    .open_text(owner, field, sealed.as_deref())
                    .context("open field")?),
                None => Ok(String::new()),
            }
        };
        let email = open("email", row.email_sealed)?;
        let phone = open("phone", row.phone_sealed)?;
        let first_name = open("first_name", row.first_name_sealed)?;
        let last_name = open("last_name", row.last_name_sealed)?;
        let touches: Vec<TouchRow> = sqlx::query_as(
            "SELECT source_id, channel, campaign, utm_source, utm_medium, utm_campaign, utm_term, utm_content, \
                    gclid, fbclid, referrer, landing_page, captured_at \
             FROM ((SELECT * FROM capture.touches WHERE lead_id = ANY($1) ORDER BY captured_at, touch_id LIMIT 1) \
                   UNION ALL \
                   (SELECT * FROM capture.touches WHERE lead_id = ANY($1) ORDER BY captured_at DESC, touch_id DESC LIMIT 1)) \
                  AS first_and_latest ORDER BY captured_at, touch_id",
        )
        .bind(family)
        .fetch_all(&mut *connection)
        .await?;
        let stored: Vec<StoredConsent> = sqlx::query_as(
            "SELECT lead_id, consent_id, channels, disclosure_text, disclosure_sha256, form_url, form_version, \
                    ip_sealed, user_agent_sealed, legal_basis, given_at \
             FROM capture.consents WHERE lead_id = ANY($1) ORDER BY recorded_at, consent_id",
        )
        .bind(family)
        .fetch_all(&mut *connection)
        .await?;
        let consents = self.open_consents(connection, root, key, stored).await?;
        let merges = if with_lineage {
            sqlx::query_as(
                "SELECT merge_id, lead_id, merged_lead_id, kind, source_id, fields_filled, merged_at, unmerged_at, \
                        review_id \
                 FROM capture.merges WHERE lead_id = ANY($1) ORDER BY merged_at, merge_id",
            )
            .bind(family)
            .fetch_all(&mut *connection)
            .await?
        } else {
            Vec::new()
        };
        Ok(Some(LeadView {
            lead_id: root,
            email,
            phone,
            first_name,
            last_name,
            company: row.company,
            source_id: row.source_id,
            channel: row.channel,
            campaign: row.campaign,
            email_kind: row.email_kind,
            email_role: row.email_role,
            phone_line_type: row.phone_line_type,
            country: row.country,
            website: row.website,
            job_title: row.job_title,
            quality_score: row.quality_score,
            touch_count: row.touch_count,
            erased: row.erased_at.is_some(),
            created_at: row.created_at,
            first_touch: touches.first().cloned(),
            latest_touch: touches.last().cloned(),
            consents,
            merges,
        }))
    }

    /// Unwraps the data key of row `lead_id`; `None` once erased.
    pub(super) fn open_key(
        &self,
        lead_id: Uuid,
        wrapped: Option<&[u8]>,
    ) -> Result<Option<DataKey>, StoreError> {
        wrapped
            .map(|wrapped| {
                self.keyring
                    .unwrap_data_key(lead_id.as_bytes(), wrapped)
                    .context("unwrap data key")
                    .map_err(StoreError::from)
            })
            .transpose()
    }

    /// Opens consent records, each under the data key of the row it belongs to (`root`'s key
    /// is given; those of merged rows are read).
    async fn open_consents(
        &self,
        connection: &mut PgConnection,
        root: Uuid,
        root_key: Option<DataKey>,
        stored: Vec<StoredConsent>,
    ) -> Result<Vec<ConsentRow>, StoreError> {
        let mut keys: HashMap<Uuid, Option<DataKey>> = HashMap::from([(root, root_key)]);
        let others: Vec<Uuid> = stored
            .iter()
            .map(|consent| consent.lead_id)
            .filter(|lead_id| !keys.contains_key(lead_id))
            .collect();
        if !others.is_empty() {
            let wrapped: Vec<(Uuid, Option<Vec<u8>>)> = sqlx::query_as(
                "SELECT lead_id, data_key FROM capture.leads WHERE lead_id = ANY($1)",
            )
            .bind(&others)
            .fetch_all(&mut *connection)
            .await?;
            for (lead_id, wrapped) in wrapped {
                keys.insert(lead_id, self.open_key(lead_id, wrapped.as_deref())?);
            }
        }
        let mut consents = Vec::with_capacity(stored.len());
        for consent in stored {
            let consent_owner = consent.consent_id.as_bytes();
            let (ip_address, user_agent) = match keys.get(&consent.lead_id).and_then(Option::as_ref)
            {
                Some(key) => (
                    key.open_text(consent_owner, "ip_address", consent.ip_sealed.as_deref())
                        .context("open ip")?,
                    key.open_text(
                        consent_owner,
                        "user_agent",
                        consent.user_agent_sealed.as_deref(),
                    )
                    .context("open user agent")?,
                ),
                None => (String::new(), String::new()),
            };
            consents.push(ConsentRow {
                consent_id: consent.consent_id,
                channels: consent.channels,
                disclosure_text: consent.disclosure_text,
                disclosure_sha256: consent.disclosure_sha256,
                form_url: consent.form_url,
                form_version: consent.form_version,
                ip_address,
                user_agent,
                legal_basis: consent.legal_basis,
                given_at: consent.given_at,
            });
        }
        Ok(consents)
    }

    /// Returns a page of leads (rows merged into another lead are part of it, not listed),
    /// newest first (ids are UUIDv7, so id order is time order), after `after` when given,
    /// with the id to continue from when there may be more.
    pub async fn list(
        &self,
        source: Option<&str>,
        page_size: i32,
        after: Option<Uuid>,
    ) -> Result<(Vec<LeadView>, Option<Uuid>), StoreError> {
        let ids: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT lead_id FROM capture.leads WHERE merged_into IS NULL AND ($1::text IS NULL OR source_id = $1) \
               AND ($2::uuid IS NULL OR lead_id < $2) ORDER BY lead_id DESC LIMIT $3",
        )
        .bind(source)
        .bind(after)
        .bind(i64::from(page_size))
        .fetch_all(&self.pool)
        .await?;
        let mut connection = self.pool.acquire().await?;
        let mut leads = Vec::with_capacity(ids.len());
        for (lead_id,) in &ids {
            if let Some(view) = self.view(&mut connection, *lead_id).await? {
                leads.push(view);
            }
        }
        let next = (ids.len() == usize::try_from(page_size).unwrap_or_default())
            .then(|| ids.last().map(|(lead_id,)| *lead_id))
            .flatten();
        Ok((leads, next))
    }
}
