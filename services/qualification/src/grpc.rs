//! The `leadflow.qualification.v1.QualificationService` handlers.

use leadflow_platform::auth::{Caller, Scope};
use leadflow_platform::validation::{FieldViolations, require_uuid};
use leadflow_proto::events::v1::{LeadStage, RuleHit};
use leadflow_proto::qualification::v1::qualification_service_server::QualificationService;
use leadflow_proto::qualification::v1::{
    GetLeadRequest, GetLeadResponse, QualifiedLead, StageTransition,
};
use tonic::{Request, Response, Status};

use crate::domain::stage::Stage;
use crate::store::{self, LeadStore};

/// Serves qualification's RPCs.
#[derive(Clone)]
pub struct QualificationApi {
    store: LeadStore,
}

impl QualificationApi {
    /// Returns the API over `store`.
    pub fn new(store: LeadStore) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl QualificationService for QualificationApi {
    async fn get_lead(
        &self,
        request: Request<GetLeadRequest>,
    ) -> Result<Response<GetLeadResponse>, Status> {
        Caller::require(&request, Scope::LeadsRead)?;
        let lead_id = require_uuid("lead_id", &request.get_ref().lead_id)
            .map_err(|violations: FieldViolations| violations.into_status("request rejected"))?;
        tracing::Span::current().record("lead_id", tracing::field::display(lead_id));
        let lead = self
            .store
            .get(lead_id)
            .await
            .map_err(|err| leadflow_platform::grpc::failure_status(&err, "get lead failed"))?;
        let lead = lead.ok_or_else(|| Status::not_found("lead not found"))?;
        Ok(Response::new(GetLeadResponse {
            lead: Some(to_proto(lead)),
        }))
    }
}

fn stage_of(name: Option<&str>) -> i32 {
    name.and_then(Stage::parse)
        .map_or(LeadStage::Unspecified, LeadStage::from)
        .into()
}

fn to_proto(lead: store::QualifiedLead) -> QualifiedLead {
    QualifiedLead {
        lead_id: lead.lead_id.to_string(),
        stage: LeadStage::from(lead.stage).into(),
        channel: lead.channel,
        model_version: lead.model_version,
        fit_score: lead.fit_score,
        engagement_score: lead.engagement_score,
        total_score: lead.total_score,
        hits: lead
            .hits
            .into_iter()
            .map(|hit| RuleHit {
                rule_id: hit.rule_id,
                points: hit.points,
                description: hit.description,
            })
            .collect(),
        history: lead
            .history
            .into_iter()
            .map(|row| StageTransition {
                from_stage: stage_of(row.from_stage.as_deref()),
                to_stage: stage_of(Some(&row.to_stage)),
                entered_at: Some(prost_types::Timestamp {
                    seconds: row.entered_at.timestamp(),
                    nanos: row.entered_at.timestamp_subsec_nanos() as i32,
                }),
                actor: row.actor,
                cause_event_id: row
                    .cause_event_id
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
            })
            .collect(),
    }
}
