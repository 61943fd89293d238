//! gRPC plumbing shared by servers and clients: trace-context propagation both ways.

use tonic::codegen::http;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// Returns the server span of one call, parented to the caller's `traceparent`.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!("grpc", rpc = %request.uri().path(), otel.kind = "server");
    crate::telemetry::set_parent_from_headers(&span, request.headers());
    span
}

/// Adds the current span's `traceparent` to an outgoing call.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateTrace;

impl tonic::service::Interceptor for PropagateTrace {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
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
