//! The `leadflow.capture.v1.CaptureService` handlers: they only translate.

use std::sync::Arc;

use leadflow_platform::validation::{FieldViolations, require_uuid};
use leadflow_proto::capture::v1::capture_service_server::CaptureService;
use leadflow_proto::capture::v1::{
    CaptureLeadRequest, CaptureLeadResponse, GetLeadRequest, GetLeadResponse, Lead,
};
use tonic::{Request, Response, Status};

use crate::domain::lead::{NewLead, NormalizeConfig};
use crate::error::CaptureError;
use crate::store::{LeadStore, StoredLead};

/// Serves capture's RPCs.
#[derive(Clone)]
pub struct CaptureApi {
    config: Arc<NormalizeConfig>,
    store: LeadStore,
}

impl CaptureApi {
    /// Returns the API over `store`.
    pub fn new(config: Arc<NormalizeConfig>, store: LeadStore) -> Self {
        Self { config, store }
    }
}

#[tonic::async_trait]
impl CaptureService for CaptureApi {
    #[tracing::instrument(skip_all, fields(lead_id))]
    async fn capture_lead(
        &self,
        request: Request<CaptureLeadRequest>,
    ) -> Result<Response<CaptureLeadResponse>, Status> {
        let Some(input) = request.into_inner().lead else {
            let mut violations = FieldViolations::new();
            violations.add("lead", "is required");
            return Err(CaptureError::from(violations).into());
        };
        let new_lead = NewLead::parse(&input, &self.config, "lead").map_err(CaptureError::from)?;
        let stored = self
            .store
            .insert(&new_lead, &self.config.identity_hash_key)
            .await
            .map_err(CaptureError::from)?;
        tracing::Span::current().record("lead_id", tracing::field::display(stored.lead_id));
        tracing::info!(source = %stored.source, channel = %stored.channel, "lead captured");
        Ok(Response::new(CaptureLeadResponse {
            lead: Some(to_proto(stored)),
        }))
    }

    #[tracing::instrument(skip_all, fields(lead_id))]
    async fn get_lead(
        &self,
        request: Request<GetLeadRequest>,
    ) -> Result<Response<GetLeadResponse>, Status> {
        let lead_id =
            require_uuid("lead_id", &request.get_ref().lead_id).map_err(CaptureError::from)?;
        tracing::Span::current().record("lead_id", tracing::field::display(lead_id));
        let stored = self.store.get(lead_id).await.map_err(CaptureError::from)?;
        let stored = stored.ok_or(CaptureError::NotFound)?;
        Ok(Response::new(GetLeadResponse {
            lead: Some(to_proto(stored)),
        }))
    }
}

fn to_proto(stored: StoredLead) -> Lead {
    Lead {
        lead_id: stored.lead_id.to_string(),
        email: stored.email.unwrap_or_default(),
        phone: stored.phone.unwrap_or_default(),
        first_name: stored.first_name,
        last_name: stored.last_name,
        company: stored.company,
        source: stored.source,
        channel: stored.channel,
        campaign: stored.campaign,
        created_at: Some(prost_types::Timestamp {
            seconds: stored.created_at.timestamp(),
            nanos: stored.created_at.timestamp_subsec_nanos() as i32,
        }),
        email_free: stored.email_free,
    }
}
