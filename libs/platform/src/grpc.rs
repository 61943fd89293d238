//! gRPC plumbing shared by servers and clients: trace-context propagation both ways, and the
//! API key of outgoing calls.

use tonic::codegen::http;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

/// Returns the server span of one call, parented to the caller's `traceparent` and named
/// `package.Service/Method` in traces.
///
/// It is the call's only span: the authenticator records the caller's `key_id` in it and
/// handlers the `lead_id`, `merge_id` or `review_id` they act on (a span of each handler's
/// own beside it cost every call a second span to open, enter, export and close).
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let span = tracing::info_span!(
        "grpc",
        rpc = %path,
        otel.name = path.trim_start_matches('/'),
        otel.kind = "server",
        key_id = tracing::field::Empty,
        lead_id = tracing::field::Empty,
        merge_id = tracing::field::Empty,
        review_id = tracing::field::Empty,
    );
    crate::telemetry::set_parent_from_headers(&span, request.headers());
    span
}

/// Returns the status of a call that failed on the server's side, and logs the failure:
/// `UNAVAILABLE` when the database could not be reached or went away
/// ([`crate::postgres::caused_by_unavailable`]: a retry may succeed), else `INTERNAL`, whose
/// detail stays in the log. `what` names the failed operation in the log line.
pub fn failure_status(error: &anyhow::Error, what: &str) -> tonic::Status {
    if crate::postgres::caused_by_unavailable(error) {
        tracing::warn!(
            error = format!("{error:#}"),
            "{what}: the database is unreachable"
        );
        return tonic::Status::unavailable("the database is unavailable; retry with backoff");
    }
    tracing::error!(error = format!("{error:#}"), "{what}");
    tonic::Status::internal("internal error")
}

/// Adds the current span's `traceparent`, and an API key when configured, to outgoing calls.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    authorization: Option<MetadataValue<Ascii>>,
}

impl Outgoing {
    /// Returns an interceptor sending `api_key` as `authorization: Bearer <key>`.
    pub fn with_api_key(api_key: &secrecy::SecretString) -> anyhow::Result<Self> {
        let value = format!("Bearer {}", secrecy::ExposeSecret::expose_secret(api_key));
        let mut value = MetadataValue::try_from(value.as_str())
            .map_err(|_| anyhow::anyhow!("api key is not printable ascii"))?;
        value.set_sensitive(true);
        Ok(Self {
            authorization: Some(value),
        })
    }
}

impl tonic::service::Interceptor for Outgoing {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        let traceparent = crate::telemetry::current_traceparent();
        if let Ok(value) = MetadataValue::try_from(traceparent.as_str())
            && !traceparent.is_empty()
        {
            request.metadata_mut().insert("traceparent", value);
        }
        Ok(request)
    }
}

/// Returns a lazily connecting channel to `url` (e.g. `http://capture:50051`).
pub fn lazy_channel(url: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(10));
    Ok(endpoint.connect_lazy())
}
