//! Storage of leads and their stage history in the `qualification` schema.

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::scoring::{Hit, Score};
use crate::domain::stage::Stage;

/// A move to record.
#[derive(Debug, Clone)]
pub struct Transition {
    pub lead_id: Uuid,
    pub from: Option<Stage>,
    pub to: Stage,
    pub actor: String,
    pub cause_event_id: Option<Uuid>,
}

/// A lead's current stage, locked for an update.
#[derive(Debug, Clone)]
pub struct Current {
    pub stage: Stage,
    pub stage_sequence: i32,
    pub channel: String,
}

/// A lead with its score and history, as `GetLead` answers.
#[derive(Debug, Clone)]
pub struct QualifiedLead {
    pub lead_id: Uuid,
    pub stage: Stage,
    pub channel: String,
    pub model_version: String,
    pub fit_score: i32,
    pub engagement_score: i32,
    pub total_score: i32,
    pub hits: Vec<Hit>,
    pub history: Vec<HistoryRow>,
}

/// One recorded move.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HistoryRow {
    pub from_stage: Option<String>,
    pub to_stage: String,
    pub entered_at: DateTime<Utc>,
    pub actor: String,
    pub cause_event_id: Option<Uuid>,
}

/// Inserts a new lead at its first stage with its score; returns the history sequence, or
/// `None` when the lead was already there.
pub async fn insert_lead(
    tx: &mut PgConnection,
    transition: &Transition,
    channel: &str,
    score: &Score,
) -> Result<Option<i32>, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO qualification.leads \
           (lead_id, stage, stage_sequence, channel, model_version, fit_score, engagement_score, total_score, hits) \
         VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8) ON CONFLICT (lead_id) DO NOTHING",
    )
    .bind(transition.lead_id)
    .bind(transition.to.as_str())
    .bind(channel)
    .bind(score.model_version)
    .bind(score.fit)
    .bind(score.engagement)
    .bind(score.total())
    .bind(Json(&score.hits))
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(None);
    }
    insert_history(tx, transition, 1).await?;
    Ok(Some(1))
}

/// Locks a lead's row and returns its current stage.
pub async fn lock_lead(
    tx: &mut PgConnection,
    lead_id: Uuid,
) -> Result<Option<Current>, sqlx::Error> {
    let row: Option<(String, i32, String)> = sqlx::query_as(
        "SELECT stage, stage_sequence, channel FROM qualification.leads WHERE lead_id = $1 FOR UPDATE",
    )
    .bind(lead_id)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(row.and_then(|(stage, stage_sequence, channel)| {
        Stage::parse(&stage).map(|stage| Current {
            stage,
            stage_sequence,
            channel,
        })
    }))
}

/// Moves a locked lead and records the move; returns the new history sequence.
pub async fn move_lead(
    tx: &mut PgConnection,
    transition: &Transition,
    current_sequence: i32,
) -> Result<i32, sqlx::Error> {
    let sequence = current_sequence + 1;
    sqlx::query(
        "UPDATE qualification.leads SET stage = $2, stage_sequence = $3, updated_at = now() WHERE lead_id = $1",
    )
    .bind(transition.lead_id)
    .bind(transition.to.as_str())
    .bind(sequence)
    .execute(&mut *tx)
    .await?;
    insert_history(tx, transition, sequence).await?;
    Ok(sequence)
}

async fn insert_history(
    tx: &mut PgConnection,
    transition: &Transition,
    sequence: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO qualification.stage_history (lead_id, sequence, from_stage, to_stage, actor, cause_event_id) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(transition.lead_id)
    .bind(sequence)
    .bind(transition.from.map(Stage::as_str))
    .bind(transition.to.as_str())
    .bind(&transition.actor)
    .bind(transition.cause_event_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Reads leads for the API.
#[derive(Debug, Clone)]
pub struct LeadStore {
    pool: PgPool,
}

impl LeadStore {
    /// Returns a store on `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Returns the lead with its history, oldest move first.
    pub async fn get(&self, lead_id: Uuid) -> anyhow::Result<Option<QualifiedLead>> {
        type LeadRow = (String, String, String, i32, i32, i32, Json<Vec<Hit>>);
        let row: Option<LeadRow> = sqlx::query_as(
            "SELECT stage, channel, model_version, fit_score, engagement_score, total_score, hits \
             FROM qualification.leads WHERE lead_id = $1",
        )
        .bind(lead_id)
        .fetch_optional(&self.pool)
        .await
        .context("select lead")?;
        let Some((stage, channel, model_version, fit_score, engagement_score, total_score, hits)) =
            row
        else {
            return Ok(None);
        };
        let stage =
            Stage::parse(&stage).with_context(|| format!("unknown stored stage {stage}"))?;
        let history: Vec<HistoryRow> = sqlx::query_as(
            "SELECT from_stage, to_stage, entered_at, actor, cause_event_id \
             FROM qualification.stage_history WHERE lead_id = $1 ORDER BY sequence",
        )
        .bind(lead_id)
        .fetch_all(&self.pool)
        .await
        .context("select stage history")?;
        Ok(Some(QualifiedLead {
            lead_id,
            stage,
            channel,
            model_version,
            fit_score,
            engagement_score,
            total_score,
            hits: hits.0,
            history,
        }))
    }
}
