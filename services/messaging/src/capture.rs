//! The capture client messaging uses to read a lead's contact details at send time, so that
//! personal data never travels on the streams.

use leadflow_platform::grpc::Outgoing;
use leadflow_proto::capture::v1::GetLeadRequest;
use leadflow_proto::capture::v1::capture_service_client::CaptureServiceClient;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::domain::template::LeadContext;

/// A lead's contact details, as far as messaging needs them.
#[derive(Debug, Clone)]
pub struct Contact {
    pub email: Option<String>,
    pub context: LeadContext,
}

/// Why a lead's contact details could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("lead not found")]
    NotFound,
    #[error("capture unavailable: {0:#}")]
    Unavailable(anyhow::Error),
}

/// Reads leads from capture.
#[derive(Clone)]
pub struct CaptureClient {
    client: CaptureServiceClient<InterceptedService<Channel, Outgoing>>,
}

impl CaptureClient {
    /// Returns a client of capture at `url` calling with `api_key` (scopes `leads:read` and
    /// `pii:read`); it connects on first use.
    pub fn new(url: &str, api_key: &secrecy::SecretString) -> anyhow::Result<Self> {
        let channel = leadflow_platform::grpc::lazy_channel(url)?;
        Ok(Self {
            client: CaptureServiceClient::with_interceptor(
                channel,
                Outgoing::with_api_key(api_key)?,
            ),
        })
    }

    /// Returns the contact details of `lead_id`.
    pub async fn contact(&self, lead_id: Uuid) -> Result<Contact, LookupError> {
        let mut client = self.client.clone();
        let response = client
            .get_lead(GetLeadRequest {
                lead_id: lead_id.to_string(),
            })
            .await;
        let lead = match response {
            Ok(response) => response.into_inner().lead,
            Err(status) if status.code() == Code::NotFound => return Err(LookupError::NotFound),
            Err(status) => {
                return Err(LookupError::Unavailable(anyhow::anyhow!(
                    "get lead: {:?} {}",
                    status.code(),
                    status.message()
                )));
            }
        };
        let lead = lead.ok_or(LookupError::NotFound)?;
        Ok(Contact {
            email: Some(lead.email).filter(|email| !email.is_empty()),
            context: LeadContext {
                first_name: lead.first_name,
                last_name: lead.last_name,
                company: lead.company,
            },
        })
    }
}
