//! Storage of leads in the `capture` schema, with their events in the same transaction.

use anyhow::Context;
use chrono::{DateTime, Utc};
use leadflow_platform::events::outbox::Outbox;
use leadflow_platform::events::types;
use leadflow_proto::events::v1::{EmailDomainKind, LeadCaptured};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::lead::{NewLead, identity_hash};

/// A stored lead.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredLead {
    pub lead_id: Uuid,
    pub email: Option<String>,
    pub email_free: bool,
    pub phone: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub company: String,
    pub source: String,
    pub channel: String,
    pub campaign: String,
    pub created_at: DateTime<Utc>,
}

/// Reads and writes leads.
#[derive(Debug, Clone)]
pub struct LeadStore {
    pool: PgPool,
    outbox: Outbox,
}

impl LeadStore {
    /// Returns a store on `pool` whose events go through `outbox`.
    pub fn new(pool: PgPool, outbox: Outbox) -> Self {
        Self { pool, outbox }
    }

    /// Stores `lead` and its `lead.captured` event in one transaction.
    pub async fn insert(&self, lead: &NewLead, identity_key: &[u8]) -> anyhow::Result<StoredLead> {
        let lead_id = Uuid::now_v7();
        let mut tx = self
            .pool
            .begin()
            .await
            .context("begin capture transaction")?;
        let stored: StoredLead = sqlx::query_as(
            "INSERT INTO capture.leads \
               (lead_id, email, email_free, phone, phone_region, first_name, last_name, company, source, channel, campaign) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             RETURNING lead_id, email, email_free, phone, first_name, last_name, company, source, channel, campaign, created_at",
        )
        .bind(lead_id)
        .bind(lead.email.as_ref().map(|email| &email.address))
        .bind(lead.email.as_ref().is_some_and(|email| email.free))
        .bind(lead.phone.as_ref().map(|phone| &phone.e164))
        .bind(lead.phone.as_ref().and_then(|phone| phone.region.as_ref()))
        .bind(&lead.first_name)
        .bind(&lead.last_name)
        .bind(&lead.company)
        .bind(&lead.source)
        .bind(&lead.channel)
        .bind(&lead.campaign)
        .fetch_one(&mut *tx)
        .await
        .context("insert lead")?;
        let event = captured_event(lead_id, lead, identity_key);
        self.outbox
            .add(&mut tx, types::LEAD_CAPTURED, lead_id, &event)
            .await?;
        tx.commit().await.context("commit capture transaction")?;
        Ok(stored)
    }

    /// Returns the lead with `lead_id`, if any.
    pub async fn get(&self, lead_id: Uuid) -> anyhow::Result<Option<StoredLead>> {
        sqlx::query_as(
            "SELECT lead_id, email, email_free, phone, first_name, last_name, company, source, channel, campaign, created_at \
             FROM capture.leads WHERE lead_id = $1",
        )
        .bind(lead_id)
        .fetch_optional(&self.pool)
        .await
        .context("select lead")
    }
}

/// Builds `lead.captured`: facts for scoring and analytics, identities only as keyed hashes.
fn captured_event(lead_id: Uuid, lead: &NewLead, identity_key: &[u8]) -> LeadCaptured {
    let email_domain_kind = match &lead.email {
        None => EmailDomainKind::None,
        Some(email) if email.free => EmailDomainKind::Free,
        Some(_) => EmailDomainKind::Business,
    };
    LeadCaptured {
        lead_id: lead_id.to_string(),
        source: lead.source.clone(),
        channel: lead.channel.clone(),
        campaign: lead.campaign.clone(),
        email_domain_kind: email_domain_kind.into(),
        has_phone: lead.phone.is_some(),
        has_company: !lead.company.is_empty(),
        email_hash: lead
            .email
            .as_ref()
            .map(|email| identity_hash(identity_key, "email", &email.address))
            .unwrap_or_default(),
        phone_hash: lead
            .phone
            .as_ref()
            .map(|phone| identity_hash(identity_key, "phone", &phone.e164))
            .unwrap_or_default(),
        phone_region: lead
            .phone
            .as_ref()
            .and_then(|phone| phone.region.clone())
            .unwrap_or_default(),
    }
}
