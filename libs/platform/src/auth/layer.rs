//! The tower layer that puts an [`Authenticator`] in front of every RPC of a tonic server:
//! `Server::builder().layer(AuthLayer::new(authenticator))`.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::codegen::http;
use tower::{Layer, Service};

use super::authenticator::Authenticator;

/// Wraps services in [`AuthService`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Authenticator,
}

impl AuthLayer {
    /// Returns a layer deciding every call with `authenticator`.
    pub fn new(authenticator: Authenticator) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// Authorizes each request before passing it on: a refused call is answered with its gRPC
/// status and never reaches `inner`; an admitted one carries its
/// [`Caller`](super::Caller) (if the RPC is not open) in the request extensions.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Authenticator,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The service that was polled ready serves this call; the clone waits for the next
        // (tower's documented pattern for services that call `inner` from a future).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let decided = authenticator
                .authorize(request.uri().path(), request.headers())
                .await;
            match decided {
                Ok(caller) => {
                    if let Some(caller) = caller {
                        // The call's span ([`crate::grpc::server_span`]) names its caller.
                        tracing::Span::current().record("key_id", caller.key_id.as_str());
                        request.extensions_mut().insert(caller);
                    }
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}
