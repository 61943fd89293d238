//! The `leadflow.analytics.v1.AnalyticsService` handlers.

use leadflow_platform::auth::{Caller, Scope};
use leadflow_platform::validation::FieldViolations;
use leadflow_proto::analytics::v1::analytics_service_server::AnalyticsService;
use leadflow_proto::analytics::v1::{
    ChannelStageCount, GetFunnelRequest, GetFunnelResponse, StageCount,
};
use leadflow_proto::events::v1::LeadStage;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

/// Stages in lifecycle order, as the funnel lists them.
const FUNNEL_STAGES: [LeadStage; 7] = [
    LeadStage::Lead,
    LeadStage::Prospect,
    LeadStage::Mql,
    LeadStage::Sql,
    LeadStage::Opportunity,
    LeadStage::Customer,
    LeadStage::Disqualified,
];

/// Serves analytics' RPCs.
#[derive(Clone)]
pub struct AnalyticsApi {
    pool: PgPool,
}

impl AnalyticsApi {
    /// Returns the API over the analytics schema.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl AnalyticsService for AnalyticsApi {
    async fn get_funnel(
        &self,
        request: Request<GetFunnelRequest>,
    ) -> Result<Response<GetFunnelResponse>, Status> {
        Caller::require(&request, Scope::LeadsRead)?;
        let channel = request.get_ref().channel.trim().to_lowercase();
        if channel.chars().count() > 64 {
            let mut violations = FieldViolations::new();
            violations.add("channel", "must be at most 64 characters");
            return Err(violations.into_status("request rejected"));
        }
        let rows: Vec<(String, i16, i64)> = sqlx::query_as(
            "SELECT COALESCE(channel, ''), stage, count(*) FROM analytics.lead_funnel \
             WHERE $1 = '' OR channel = $1 GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(&channel)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| leadflow_platform::grpc::failure_status(&err.into(), "read funnel"))?;
        let stages = FUNNEL_STAGES
            .iter()
            .map(|stage| StageCount {
                stage: (*stage).into(),
                leads: rows
                    .iter()
                    .filter(|(_, row_stage, _)| i32::from(*row_stage) == *stage as i32)
                    .map(|(_, _, leads)| leads)
                    .sum(),
            })
            .collect();
        let total_leads = rows.iter().map(|(_, _, leads)| leads).sum();
        let channels = rows
            .into_iter()
            .map(|(channel, stage, leads)| ChannelStageCount {
                channel,
                stage: stage.into(),
                leads,
            })
            .collect();
        Ok(Response::new(GetFunnelResponse {
            stages,
            channels,
            total_leads,
        }))
    }
}
