//! `grpc.health.v1` status that follows the reachability of Postgres and Redis.

use std::time::Duration;

use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Checks the service's dependencies and reports `SERVING` only while all answer.
pub struct HealthMonitor {
    reporter: HealthReporter,
    pool: PgPool,
    redis: ConnectionManager,
    interval: Duration,
    /// Fully qualified gRPC service names; the empty name (the whole server) is always set.
    services: Vec<&'static str>,
}

impl HealthMonitor {
    /// Returns a monitor reporting for `services` and for the server as a whole.
    pub fn new(
        reporter: HealthReporter,
        pool: PgPool,
        redis: ConnectionManager,
        interval: Duration,
        services: Vec<&'static str>,
    ) -> Self {
        Self {
            reporter,
            pool,
            redis,
            interval,
            services,
        }
    }

    /// Sets every reported name to `status`.
    pub async fn report(
        reporter: &HealthReporter,
        services: &[&'static str],
        status: ServingStatus,
    ) {
        reporter.set_service_status("", status).await;
        for service in services {
            reporter.set_service_status(*service, status).await;
        }
    }

    /// Checks until `stop` is cancelled, then reports `NOT_SERVING`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut last: Option<bool> = None;
        loop {
            let healthy = self.check().await;
            if last != Some(healthy) {
                let status = if healthy {
                    tracing::info!("dependencies reachable; serving");
                    ServingStatus::Serving
                } else {
                    tracing::warn!("a dependency is unreachable; not serving");
                    ServingStatus::NotServing
                };
                Self::report(&self.reporter, &self.services, status).await;
                last = Some(healthy);
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
        Self::report(&self.reporter, &self.services, ServingStatus::NotServing).await;
    }

    async fn check(&mut self) -> bool {
        let limit = Duration::from_secs(2);
        let postgres = tokio::time::timeout(limit, sqlx::query("SELECT 1").execute(&self.pool));
        let postgres_ok = matches!(postgres.await, Ok(Ok(_)));
        if !postgres_ok {
            tracing::warn!(dependency = "postgres", "health check failed");
        }
        let ping_command = redis::cmd("PING");
        let ping = ping_command.query_async::<String>(&mut self.redis);
        let redis_ok = matches!(tokio::time::timeout(limit, ping).await, Ok(Ok(_)));
        if !redis_ok {
            tracing::warn!(dependency = "redis", "health check failed");
        }
        postgres_ok && redis_ok
    }
}
