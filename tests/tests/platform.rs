//! Platform behaviour of a real service binary: health following Redis, configuration
//! errors, reflection and request size limits.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use leadflow_e2e::{Running, Service, TestEnv, binary_path, eventually};
use leadflow_proto::capture::v1::capture_service_client::CaptureServiceClient;
use leadflow_proto::capture::v1::{CaptureLeadRequest, LeadInput};
use tokio::process::{Child, Command};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_redis(port: u16, dir: &std::path::Path) -> anyhow::Result<Child> {
    Ok(Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

async fn wait_for_redis(url: &str) -> anyhow::Result<()> {
    eventually("redis accepts connections", WAIT, || async {
        let client = redis::Client::open(url)?;
        Ok(match client.get_multiplexed_async_connection().await {
            Ok(mut connection) => redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .ok()
                .map(|_| ()),
            Err(_) => None,
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_not_serving_while_redis_is_down_and_serving_after_it_returns()
-> anyhow::Result<()> {
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("leadflow-e2e-redis-{port}"));
    std::fs::create_dir_all(&dir)?;
    let redis_url = format!("redis://127.0.0.1:{port}");
    let mut redis_server = start_redis(port, &dir)?;
    wait_for_redis(&redis_url).await?;

    let mut env = TestEnv::create().await?;
    env.redis_url = redis_url.clone();
    let capture = Running::start(Service::Capture, &env.service_env(Service::Capture)).await?;
    let serving = |wanted: ServingStatus| {
        let capture = &capture;
        async move {
            eventually(&format!("health {wanted:?}"), WAIT, || async move {
                Ok(Some(capture.health().await?).filter(|status| *status == wanted))
            })
            .await
        }
    };
    serving(ServingStatus::Serving).await?;

    redis_server.kill().await?;
    redis_server.wait().await?;
    serving(ServingStatus::NotServing).await?;

    let _restarted = start_redis(port, &dir)?;
    wait_for_redis(&redis_url).await?;
    serving(ServingStatus::Serving).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_variable_stops_start_up_naming_it() -> anyhow::Result<()> {
    let output = Command::new(binary_path("capture")?)
        .arg("serve")
        .env_clear()
        .env("CAPTURE_REDIS_URL", "redis://127.0.0.1:6379")
        .env("CAPTURE_IDENTITY_HASH_KEY", leadflow_e2e::IDENTITY_HASH_KEY)
        .output()
        .await?;
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CAPTURE_DATABASE_URL"), "{stderr}");

    let output = Command::new(binary_path("qualification")?)
        .arg("serve")
        .env_clear()
        .env(
            "QUALIFICATION_DATABASE_URL",
            "postgres://postgres@127.0.0.1/x",
        )
        .env("QUALIFICATION_REDIS_URL", "redis://127.0.0.1:6379")
        .env("QUALIFICATION_CONSUMER_MAX_DELIVERIES", "many")
        .output()
        .await?;
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("QUALIFICATION_CONSUMER_MAX_DELIVERIES"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_the_services_in_both_versions() -> anyhow::Result<()> {
    use tonic_reflection::pb::v1alpha;
    let env = TestEnv::create().await?;
    let capture = Running::start(Service::Capture, &env.service_env(Service::Capture)).await?;

    let names = capture.reflected_services().await?;
    for expected in [
        "leadflow.capture.v1.CaptureService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} missing from {names:?}"
        );
    }

    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(capture.channel().await?);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = alpha
        .server_reflection_info(tokio_stream_once(request))
        .await?
        .into_inner();
    let response = responses.message().await?.expect("a reflection response");
    assert!(matches!(
        response.message_response,
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(_))
    ));
    Ok(())
}

fn tokio_stream_once<T: Send + 'static>(item: T) -> impl tonic::IntoStreamingRequest<Message = T> {
    futures_once(item)
}

fn futures_once<T: Send + 'static>(
    item: T,
) -> impl tokio_stream::Stream<Item = T> + Send + 'static {
    tokio_stream::once(item)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_request_is_refused_without_harm() -> anyhow::Result<()> {
    let env = TestEnv::create().await?;
    let capture = Running::start(Service::Capture, &env.service_env(Service::Capture)).await?;
    let admin_key = env.create_api_key("e2e-admin", &["admin"]).await?;
    let mut client =
        CaptureServiceClient::new(leadflow_e2e::authed(capture.channel().await?, &admin_key)?);
    let status = client
        .capture_lead(CaptureLeadRequest {
            lead: Some(LeadInput {
                email: "big@example.org".into(),
                first_name: "x".repeat(1024 * 1024),
                source: "website".into(),
                channel: "web".into(),
                ..LeadInput::default()
            }),
            ..CaptureLeadRequest::default()
        })
        .await
        .expect_err("an oversized request is refused");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(capture.health().await?, ServingStatus::Serving);
    Ok(())
}
