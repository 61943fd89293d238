//! What every leadflow service shares: configuration, telemetry, Postgres and Redis
//! connections, health, gRPC serving, validation errors, the transactional outbox with its
//! relay, and the stream consumer runner.

pub mod auth;
pub mod config;
pub mod events;
pub mod grpc;
pub mod health;
pub mod host;
pub mod pii;
pub mod postgres;
pub mod redis;
pub mod shutdown;
pub mod telemetry;
pub mod validation;

pub use host::{Application, ServiceHost, ServiceSpec};
pub use shutdown::shutdown_signal;
