//! Activities and visitors: recording what a person did against their lead (or, for a browser
//! no lead is linked to yet, against the visitor), linking a visitor to the lead a capture in
//! that browser made, and the retention of anonymous activity. Every stored activity of a lead
//! is emitted as `lead.activity` in the transaction that gives it that lead.
//!
//! Locks are taken lead first, then visitor, as capture takes them (the known leads, then the
//! visitor it links), so a page view racing a form post in the same browser waits rather than
//! deadlocks. An anonymous activity and the capture linking its visitor serialize on the
//! visitor's row: the activity is either linked by the capture or recorded for the lead.

use anyhow::Context;
use chrono::{DateTime, Utc};
use leadflow_proto::capture::v1::ActivityKind;
use leadflow_proto::events::v1::{Envelope, LeadActivity};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{LeadStore, StoreError, delete_in_batches, event_types};
use crate::domain::activity::{NewActivity, Person, kind_from_name, kind_name};

/// Attempts at recording one activity when a concurrent change (the same id recorded, the
/// visitor linked) made an attempt start over.
const RECORD_ATTEMPTS: usize = 4;

/// What recording an activity did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Stored as the activity of this lead (the surviving lead of a merged one); emitted.
    Lead(Uuid),
    /// Stored against its visitor, which no lead is linked to yet; emitted once linked.
    Anonymous,
    /// The person was erased: nothing stored, nothing emitted.
    Suppressed,
}

/// The answer to a recorded activity (the first answer again for a retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredActivity {
    pub activity_id: Uuid,
    pub recorded: Recorded,
    pub occurred_at: DateTime<Utc>,
}

/// Who an activity is for, once the person is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The surviving lead `lead`, named through its family's row `record` (the lead itself, or
    /// a record merged into it).
    Lead {
        lead: Uuid,
        record: Uuid,
    },
    /// The visitor, no lead linked.
    Anonymous,
    Suppressed,
}

/// An activity of a lead as `ListActivities` shows it: what its event says, and more.
#[derive(Debug, sqlx::FromRow)]
pub struct ListedActivity {
    #[sqlx(flatten)]
    pub activity: ActivityRow,
    pub title: String,
    pub recorded_at: DateTime<Utc>,
    pub linked_at: Option<DateTime<Utc>>,
    pub record_id: Option<Uuid>,
}

/// A page of a lead's activities: the lead listed, the activities, and the last one's id when
/// more follow.
pub type ActivityPage = (Uuid, Vec<ListedActivity>, Option<Uuid>);

/// A recorded activity's answer as stored: lead, anonymous, fingerprint, when it happened.
type RecordedRow = (Option<Uuid>, bool, Vec<u8>, DateTime<Utc>);

/// An activity as stored, for its event.
#[derive(Debug, sqlx::FromRow)]
pub struct ActivityRow {
    pub activity_id: Uuid,
    pub kind: String,
    pub name: String,
    pub asset: String,
    pub url: String,
    pub source_id: String,
    pub anonymous: bool,
    pub occurred_at: DateTime<Utc>,
}

impl ActivityRow {
    /// The `lead.activity` of this row for `lead_id`; no personal data.
    fn event(&self, lead_id: Uuid) -> LeadActivity {
        let kind = kind_from_name(&self.kind).unwrap_or(ActivityKind::Unspecified);
        let kind = leadflow_proto::events::v1::ActivityKind::from_str_name(kind.as_str_name())
            .unwrap_or_default();
        LeadActivity {
            lead_id: lead_id.to_string(),
            activity_id: self.activity_id.to_string(),
            kind: kind.into(),
            name: self.name.clone(),
            asset: self.asset.clone(),
            url: self.url.clone(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: self.occurred_at.timestamp(),
                nanos: self.occurred_at.timestamp_subsec_nanos() as i32,
            }),
            source: self.source_id.clone(),
            anonymous: self.anonymous,
        }
    }
}

impl LeadStore {
    /// Returns the keyed fingerprint of a request (its encoded bytes): equal requests have
    /// equal fingerprints, and none reveals what the request held.
    pub fn activity_fingerprint(&self, request: &[u8]) -> Vec<u8> {
        let digest = hex::encode(Sha256::digest(request));
        self.keyring.blind_index("activity-request", &digest)
    }

    /// Records `activity` under `activity_id` for the person it names. A lead merged into
    /// another records for the lead it is part of; an unknown lead or identity is
    /// [`StoreError::NotFound`] (an activity never creates a lead). An id already recorded with
    /// the same `fingerprint` answers as the first time; with another,
    /// [`StoreError::ActivityIdReused`].
    pub async fn record_activity(
        &self,
        activity: &NewActivity,
        activity_id: Uuid,
        fingerprint: &[u8],
        caller: &str,
    ) -> Result<StoredActivity, StoreError> {
        for _ in 0..RECORD_ATTEMPTS {
            let attempt = || async {
                self.record_once(activity, activity_id, fingerprint, caller)
                    .await
            };
            match self.retry_conflicts("activity", attempt).await {
                // Recorded meanwhile under this id, or the visitor was linked: start over.
                Err(StoreError::Replay) => {
                    self.count_retry();
                }
                answered => return answered,
            }
        }
        Err(anyhow::anyhow!("recording activity {activity_id} kept conflicting").into())
    }

    async fn record_once(
        &self,
        activity: &NewActivity,
        activity_id: Uuid,
        fingerprint: &[u8],
        caller: &str,
    ) -> Result<StoredActivity, StoreError> {
        let mut tx = leadflow_platform::postgres::begin(&self.pool).await?;
        if let Some(first) = self
            .recorded_activity(&mut tx, activity_id, fingerprint)
            .await?
        {
            return Ok(first);
        }
        let (owner, visitor_id) = match &activity.person {
            Person::Lead(lead_id) => {
                let Some((root, _)) = self.family(&mut tx, *lead_id).await? else {
                    return Err(StoreError::NotFound);
                };
                (self.lock_lead(&mut tx, root, *lead_id).await?, None)
            }
            Person::Identity { email, phone } => {
                let email_bidx = email
                    .as_ref()
                    .map(|email| self.keyring.blind_index("email", &email.address));
                let phone_bidx = phone
                    .as_ref()
                    .map(|phone| self.keyring.blind_index("phone", &phone.e164));
                (self.owner_of(&mut tx, email_bidx, phone_bidx).await?, None)
            }
            Person::Visitor(visitor_id) => (
                self.visitor_owner(&mut tx, *visitor_id).await?,
                Some(*visitor_id),
            ),
        };
        let (lead_id, record_id) = match owner {
            Owner::Suppressed => {
                tx.rollback().await?;
                return Ok(StoredActivity {
                    activity_id,
                    recorded: Recorded::Suppressed,
                    occurred_at: activity.occurred_at,
                });
            }
            Owner::Anonymous => (None, None),
            Owner::Lead { lead, record } => (Some(lead), Some(record)),
        };
        let inserted = sqlx::query(
            "INSERT INTO capture.activities (activity_id, lead_id, visitor_id, kind, name, asset, url, title, \
               source_id, caller, anonymous, fingerprint, occurred_at, record_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (activity_id) DO NOTHING",
        )
        .bind(activity_id)
        .bind(lead_id)
        .bind(visitor_id)
        .bind(kind_name(activity.kind))
        .bind(&activity.name)
        .bind(&activity.asset)
        .bind(&activity.url)
        .bind(&activity.title)
        .bind(&activity.source)
        .bind(caller)
        .bind(lead_id.is_none())
        .bind(fingerprint)
        .bind(activity.occurred_at)
        .bind(record_id)
        .execute(&mut *tx)
        .await
        .context("insert activity")?;
        if inserted.rows_affected() == 0 {
            // A concurrent first recording of this id committed: answer as it did.
            tx.rollback().await?;
            return Err(StoreError::Replay);
        }
        if let Some(lead_id) = lead_id {
            let row = ActivityRow {
                activity_id,
                kind: kind_name(activity.kind),
                name: activity.name.clone(),
                asset: activity.asset.clone(),
                url: activity.url.clone(),
                source_id: activity.source.clone(),
                anonymous: false,
                occurred_at: activity.occurred_at,
            };
            self.outbox
                .add(
                    &mut tx,
                    event_types::LEAD_ACTIVITY,
                    lead_id,
                    &row.event(lead_id),
                )
                .await?;
        }
        tx.commit().await?;
        Ok(StoredActivity {
            activity_id,
            recorded: lead_id.map_or(Recorded::Anonymous, Recorded::Lead),
            occurred_at: activity.occurred_at,
        })
    }

    /// Returns the first answer for `activity_id` when it was recorded already; the same id
    /// with another request is refused.
    async fn recorded_activity(
        &self,
        tx: &mut PgConnection,
        activity_id: Uuid,
        fingerprint: &[u8],
    ) -> Result<Option<StoredActivity>, StoreError> {
        let row: Option<RecordedRow> = sqlx::query_as(
            "SELECT lead_id, anonymous, fingerprint, occurred_at FROM capture.activities WHERE activity_id = $1",
        )
        .bind(activity_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((lead_id, anonymous, stored_fingerprint, occurred_at)) = row else {
            return Ok(None);
        };
        if stored_fingerprint != fingerprint {
            return Err(StoreError::ActivityIdReused);
        }
        let recorded = match lead_id {
            Some(lead_id) if !anonymous => Recorded::Lead(lead_id),
            _ => Recorded::Anonymous,
        };
        Ok(Some(StoredActivity {
            activity_id,
            recorded,
            occurred_at,
        }))
    }

    /// Locks lead `root` against erasure until the transaction ends (the lock a foreign key to
    /// it takes anyway); says whom the activity, named through row `record` of its family, is
    /// for.
    async fn lock_lead(
        &self,
        tx: &mut PgConnection,
        root: Uuid,
        record: Uuid,
    ) -> Result<Owner, StoreError> {
        let row: Option<(bool,)> = sqlx::query_as(
            "SELECT erased_at IS NOT NULL FROM capture.leads WHERE lead_id = $1 FOR KEY SHARE",
        )
        .bind(root)
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            None => Err(StoreError::NotFound),
            Some((true,)) => Ok(Owner::Suppressed),
            Some((false,)) => Ok(Owner::Lead { lead: root, record }),
        }
    }

    /// Finds the lead holding an email or phone (the email's first), locked; an identity no
    /// lead holds is the erased person's when it is suppressed, else unknown.
    async fn owner_of(
        &self,
        tx: &mut PgConnection,
        email_bidx: Option<Vec<u8>>,
        phone_bidx: Option<Vec<u8>>,
    ) -> Result<Owner, StoreError> {
        // Only a lead of its own claims identities, so the lead found is a root.
        let found: Option<(Uuid,)> = sqlx::query_as(
            "SELECT lead_id FROM capture.leads WHERE (email_bidx = $1 OR phone_bidx = $2) AND erased_at IS NULL \
             ORDER BY (email_bidx = $1) DESC NULLS LAST, created_at LIMIT 1 FOR KEY SHARE",
        )
        .bind(email_bidx.as_deref())
        .bind(phone_bidx.as_deref())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((lead_id,)) = found {
            return Ok(Owner::Lead {
                lead: lead_id,
                record: lead_id,
            });
        }
        let identities: Vec<Vec<u8>> = email_bidx.into_iter().chain(phone_bidx).collect();
        let suppressed: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM capture.suppressions WHERE bidx = ANY($1) LIMIT 1")
                .bind(&identities)
                .fetch_optional(&mut *tx)
                .await?;
        match suppressed {
            Some(_) => Ok(Owner::Suppressed),
            None => Err(StoreError::NotFound),
        }
    }

    /// Finds whom a visitor's activity is for, creating the visitor when new: the surviving
    /// lead of the row it is linked to (locked first, as captures lock), else the visitor
    /// itself. The visitor's row stays locked, so a capture linking it waits for this activity
    /// and then hands it to the lead. A link that changed meanwhile starts the attempt over.
    async fn visitor_owner(
        &self,
        tx: &mut PgConnection,
        visitor_id: Uuid,
    ) -> Result<Owner, StoreError> {
        let seen: Option<(Option<Uuid>,)> =
            sqlx::query_as("SELECT lead_id FROM capture.visitors WHERE visitor_id = $1")
                .bind(visitor_id)
                .fetch_optional(&mut *tx)
                .await?;
        let linked = seen.and_then(|(lead_id,)| lead_id);
        let owner = match linked {
            None => Owner::Anonymous,
            Some(lead_id) => match self.family(tx, lead_id).await? {
                // Erasure deletes a lead's visitors, so this is a leftover: the cookie must
                // not resolve to the erased person.
                None => Owner::Suppressed,
                Some((root, _)) => match self.lock_lead(tx, root, lead_id).await {
                    Err(StoreError::NotFound) => Owner::Suppressed,
                    other => other?,
                },
            },
        };
        let (now_linked,): (Option<Uuid>,) = sqlx::query_as(
            "INSERT INTO capture.visitors (visitor_id) VALUES ($1) \
             ON CONFLICT (visitor_id) DO UPDATE SET last_seen_at = now() RETURNING lead_id",
        )
        .bind(visitor_id)
        .fetch_one(&mut *tx)
        .await
        .context("upsert visitor")?;
        if now_linked != linked {
            // Dropping the transaction rolls it back.
            return Err(StoreError::Replay);
        }
        Ok(owner)
    }

    /// Links visitor `visitor_id` to the row `record_id` a capture in that browser stored,
    /// inside the capture's transaction, after lead `lead_id` (the row itself, or the lead a
    /// re-capture's record was folded into) is locked: the visitor's later activities are the
    /// record's (its lead's while it stays merged), and its anonymous activities so far become
    /// the lead's now, through the record, and are emitted, oldest first. A visitor linked to
    /// another row is linked to this one instead (the latest identification in a browser
    /// wins); what it did before stays where it was.
    pub(super) async fn link_visitor(
        &self,
        tx: &mut PgConnection,
        visitor_id: Uuid,
        record_id: Uuid,
        lead_id: Uuid,
    ) -> Result<(), StoreError> {
        let (previous,): (Option<Uuid>,) = sqlx::query_as(
            "INSERT INTO capture.visitors AS v (visitor_id, lead_id, linked_at) VALUES ($1, $2, now()) \
             ON CONFLICT (visitor_id) DO UPDATE SET lead_id = EXCLUDED.lead_id, last_seen_at = now(), \
               linked_at = CASE WHEN v.lead_id IS DISTINCT FROM EXCLUDED.lead_id THEN now() ELSE v.linked_at END \
             RETURNING (SELECT lead_id FROM capture.visitors WHERE visitor_id = $1)",
        )
        .bind(visitor_id)
        .bind(record_id)
        .fetch_one(&mut *tx)
        .await
        .context("link visitor")?;
        let mut linked: Vec<ActivityRow> = sqlx::query_as(
            "UPDATE capture.activities SET lead_id = $2, record_id = $3, linked_at = now() \
             WHERE visitor_id = $1 AND lead_id IS NULL \
             RETURNING activity_id, kind, name, asset, url, source_id, anonymous, occurred_at",
        )
        .bind(visitor_id)
        .bind(lead_id)
        .bind(record_id)
        .fetch_all(&mut *tx)
        .await
        .context("link anonymous activities")?;
        linked.sort_by_key(|row| (row.occurred_at, row.activity_id));
        let envelopes: Vec<Envelope> = linked
            .iter()
            .map(|row| {
                self.outbox.envelope(
                    event_types::LEAD_ACTIVITY,
                    Some(lead_id),
                    &row.event(lead_id),
                )
            })
            .collect();
        self.outbox.add_many(tx, &envelopes).await?;
        let relinked = previous.is_some_and(|previous| previous != record_id);
        tracing::info!(%lead_id, %record_id, activities = linked.len(), relinked, "visitor linked to lead");
        Ok(())
    }

    /// Returns a page of what the lead `lead_id` is part of did, newest first, after activity
    /// `after` when given: the activities of every row of its family. `None` for an unknown
    /// lead.
    pub async fn list_activities(
        &self,
        lead_id: Uuid,
        page_size: i32,
        after: Option<Uuid>,
    ) -> Result<Option<ActivityPage>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        let Some((root, family)) = self.family(&mut connection, lead_id).await? else {
            return Ok(None);
        };
        let mut activities: Vec<ListedActivity> = sqlx::query_as(
            "SELECT activity_id, kind, name, asset, url, title, source_id, anonymous, occurred_at, recorded_at, \
                    linked_at, record_id \
             FROM capture.activities \
             WHERE lead_id = ANY($1) \
               AND ($2::uuid IS NULL OR (occurred_at, activity_id) < \
                    (SELECT occurred_at, activity_id FROM capture.activities WHERE activity_id = $2)) \
             ORDER BY occurred_at DESC, activity_id DESC LIMIT $3",
        )
        .bind(&family)
        .bind(after)
        .bind(i64::from(page_size) + 1)
        .fetch_all(&mut *connection)
        .await
        .context("list activities")?;
        let page_size = usize::try_from(page_size).unwrap_or_default();
        let next = if activities.len() > page_size {
            activities.truncate(page_size);
            activities.last().map(|listed| listed.activity.activity_id)
        } else {
            None
        };
        Ok(Some((root, activities, next)))
    }

    /// Deletes anonymous activities recorded before `before`, and visitors never linked and not
    /// seen since, a batch at a time; returns how many of each went.
    pub async fn sweep_anonymous_activity(
        &self,
        before: DateTime<Utc>,
    ) -> Result<(u64, u64), StoreError> {
        let activities = delete_in_batches(
            &self.pool,
            "DELETE FROM capture.activities WHERE activity_id IN ( \
               SELECT activity_id FROM capture.activities WHERE lead_id IS NULL AND recorded_at < $1 \
               LIMIT $2 FOR UPDATE SKIP LOCKED)",
            before,
        )
        .await?;
        let visitors = delete_in_batches(
            &self.pool,
            "DELETE FROM capture.visitors WHERE visitor_id IN ( \
               SELECT visitor_id FROM capture.visitors v WHERE lead_id IS NULL AND last_seen_at < $1 \
                 AND NOT EXISTS (SELECT 1 FROM capture.activities a WHERE a.visitor_id = v.visitor_id AND a.lead_id IS NULL) \
               LIMIT $2 FOR UPDATE SKIP LOCKED)",
            before,
        )
        .await?;
        Ok((activities, visitors))
    }
}
