//! Reading leads: a lead is its own row plus every row merged into it (its family), whose
//! touches, consents and merges make up its history.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use leadflow_platform::pii::DataKey;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{ConsentRow, LeadStore, LeadView, MergeRow, StoreError, TouchRow};

/// A lead's row as read.
#[derive(Debug, sqlx::FromRow)]
struct LeadRow {
    lead_id: Uuid,
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
    /// The lead it is part of.
    root: Uuid,
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

/// A touch of a lead's family, with the lead.
#[derive(Debug, sqlx::FromRow)]
struct FamilyTouch {
    root: Uuid,
    touch_id: Uuid,
    #[sqlx(flatten)]
    touch: TouchRow,
}

/// A merge in a lead's lineage, with the lead.
#[derive(Debug, sqlx::FromRow)]
struct FamilyMerge {
    root: Uuid,
    #[sqlx(flatten)]
    merge: MergeRow,
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
        let mut views = self.view_families(connection, &[(root, family)]).await?;
        Ok(views.pop())
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

    /// Returns each lead `root` with the history of its family (itself and every row merged
    /// into it) and its lineage, in the order given, leaving out a root that does not exist.
    /// One statement per table, however many leads.
    pub(super) async fn view_families(
        &self,
        connection: &mut PgConnection,
        families: &[(Uuid, Vec<Uuid>)],
    ) -> Result<Vec<LeadView>, StoreError> {
        let roots: Vec<Uuid> = families.iter().map(|(root, _)| *root).collect();
        let (member_roots, members): (Vec<Uuid>, Vec<Uuid>) = families
            .iter()
            .flat_map(|(root, family)| family.iter().map(move |member| (*root, *member)))
            .unzip();
        let rows: Vec<LeadRow> = sqlx::query_as(
            "SELECT lead_id, data_key, email_sealed, phone_sealed, first_name_sealed, last_name_sealed, company, \
                    source_id, channel, campaign, email_kind, email_role, phone_line_type, country, website, job_title, \
                    quality_score, touch_count, erased_at, created_at \
             FROM capture.leads WHERE lead_id = ANY($1)",
        )
        .bind(&roots)
        .fetch_all(&mut *connection)
        .await?;
        // The first and the latest touch of each family.
        let touches: Vec<FamilyTouch> = sqlx::query_as(
            "WITH family AS (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]) AS f (root, lead_id)), \
             touches AS (SELECT f.root, t.* FROM family f JOIN capture.touches t ON t.lead_id = f.lead_id) \
             (SELECT DISTINCT ON (root) root, touch_id, source_id, channel, campaign, utm_source, utm_medium, \
                     utm_campaign, utm_term, utm_content, gclid, fbclid, referrer, landing_page, captured_at \
              FROM touches ORDER BY root, captured_at, touch_id) \
             UNION ALL \
             (SELECT DISTINCT ON (root) root, touch_id, source_id, channel, campaign, utm_source, utm_medium, \
                     utm_campaign, utm_term, utm_content, gclid, fbclid, referrer, landing_page, captured_at \
              FROM touches ORDER BY root, captured_at DESC, touch_id DESC)",
        )
        .bind(&member_roots)
        .bind(&members)
        .fetch_all(&mut *connection)
        .await?;
        let stored: Vec<StoredConsent> = sqlx::query_as(
            "SELECT f.root, c.lead_id, c.consent_id, c.channels, c.disclosure_text, c.disclosure_sha256, c.form_url, \
                    c.form_version, c.ip_sealed, c.user_agent_sealed, c.legal_basis, c.given_at \
             FROM UNNEST($1::uuid[], $2::uuid[]) AS f (root, lead_id) \
             JOIN capture.consents c ON c.lead_id = f.lead_id \
             ORDER BY f.root, c.recorded_at, c.consent_id",
        )
        .bind(&member_roots)
        .bind(&members)
        .fetch_all(&mut *connection)
        .await?;
        let merges: Vec<FamilyMerge> = sqlx::query_as(
            "SELECT f.root, m.merge_id, m.lead_id, m.merged_lead_id, m.kind, m.source_id, m.fields_filled, \
                    m.merged_at, m.unmerged_at, m.review_id \
             FROM UNNEST($1::uuid[], $2::uuid[]) AS f (root, lead_id) \
             JOIN capture.merges m ON m.lead_id = f.lead_id \
             ORDER BY f.root, m.merged_at, m.merge_id",
        )
        .bind(&member_roots)
        .bind(&members)
        .fetch_all(&mut *connection)
        .await?;

        let mut keys: HashMap<Uuid, Option<DataKey>> = HashMap::with_capacity(rows.len());
        let mut rows: HashMap<Uuid, LeadRow> =
            rows.into_iter().map(|row| (row.lead_id, row)).collect();
        for (lead_id, row) in &rows {
            keys.insert(*lead_id, self.open_key(*lead_id, row.data_key.as_deref())?);
        }
        let mut touches_of = by_root(touches.into_iter().map(|touch| (touch.root, touch)));
        let mut consents_of = self.open_consents(connection, &mut keys, stored).await?;
        let mut merges_of = by_root(merges.into_iter().map(|merge| (merge.root, merge.merge)));

        let mut views = Vec::with_capacity(families.len());
        for root in roots {
            let Some(row) = rows.remove(&root) else {
                continue;
            };
            let key = keys.get(&root).and_then(Option::as_ref);
            let owner = root.as_bytes();
            let open = |field: &str, sealed: Option<Vec<u8>>| -> Result<String, StoreError> {
                match key {
                    Some(key) => Ok(key
                        .open_text(owner, field, sealed.as_deref())
                        .context("open field")?),
                    None => Ok(String::new()),
                }
            };
            // Two rows a family: its first touch and its latest (the same one when alone).
            let mut touches = touches_of.remove(&root).unwrap_or_default();
            touches.sort_by_key(|touch| (touch.touch.captured_at, touch.touch_id));
            let mut touches: Vec<TouchRow> = touches.into_iter().map(|touch| touch.touch).collect();
            views.push(LeadView {
                lead_id: root,
                email: open("email", row.email_sealed)?,
                phone: open("phone", row.phone_sealed)?,
                first_name: open("first_name", row.first_name_sealed)?,
                last_name: open("last_name", row.last_name_sealed)?,
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
                latest_touch: touches.pop(),
                consents: consents_of.remove(&root).unwrap_or_default(),
                merges: merges_of.remove(&root).unwrap_or_default(),
            });
        }
        Ok(views)
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

    /// Opens consent records, each under the data key of the row it belongs to (`keys` holds
    /// those known; the keys of other rows are read into it), grouped by the lead they are
    /// part of.
    async fn open_consents(
        &self,
        connection: &mut PgConnection,
        keys: &mut HashMap<Uuid, Option<DataKey>>,
        stored: Vec<StoredConsent>,
    ) -> Result<HashMap<Uuid, Vec<ConsentRow>>, StoreError> {
        let mut others: Vec<Uuid> = stored
            .iter()
            .map(|consent| consent.lead_id)
            .filter(|lead_id| !keys.contains_key(lead_id))
            .collect();
        others.sort_unstable();
        others.dedup();
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
        let mut consents: HashMap<Uuid, Vec<ConsentRow>> = HashMap::new();
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
            consents.entry(consent.root).or_default().push(ConsentRow {
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
        let roots: Vec<Uuid> = ids.iter().map(|(lead_id,)| *lead_id).collect();
        let mut connection = self.pool.acquire().await?;
        // Every listed lead is a root (not merged); its family is it and what merged into it.
        let families: Vec<(Uuid, Vec<Uuid>)> = sqlx::query_as(
            "WITH RECURSIVE family AS ( \
               SELECT r.root, r.root AS lead_id FROM UNNEST($1::uuid[]) AS r (root) \
               UNION ALL \
               SELECT f.root, l.lead_id FROM capture.leads l JOIN family f ON l.merged_into = f.lead_id) \
             SELECT root, array_agg(lead_id) FROM family GROUP BY root",
        )
        .bind(&roots)
        .fetch_all(&mut *connection)
        .await?;
        let mut families: HashMap<Uuid, Vec<Uuid>> = families.into_iter().collect();
        let families: Vec<(Uuid, Vec<Uuid>)> = roots
            .iter()
            .filter_map(|root| families.remove(root).map(|family| (*root, family)))
            .collect();
        let leads = self.view_families(&mut connection, &families).await?;
        let next = (ids.len() == usize::try_from(page_size).unwrap_or_default())
            .then(|| ids.last().map(|(lead_id,)| *lead_id))
            .flatten();
        Ok((leads, next))
    }
}

/// Groups `(root, item)` pairs by root, keeping their order within each root.
fn by_root<T>(items: impl IntoIterator<Item = (Uuid, T)>) -> HashMap<Uuid, Vec<T>> {
    let mut grouped: HashMap<Uuid, Vec<T>> = HashMap::new();
    for (root, item) in items {
        grouped.entry(root).or_default().push(item);
    }
    grouped
}
