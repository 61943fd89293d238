//! `leadctl`: capture leads, look them up, record replies and read the funnel from a shell.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use comfy_table::Table;
use leadflow_proto::analytics::v1::GetFunnelRequest;
use leadflow_proto::analytics::v1::analytics_service_client::AnalyticsServiceClient;
use leadflow_proto::capture::v1::capture_service_client::CaptureServiceClient;
use leadflow_proto::capture::v1::{CaptureLeadRequest, LeadInput};
use leadflow_proto::events::v1::{InboundKind, LeadStage, MessageChannel};
use leadflow_proto::messaging::v1::RecordInboundRequest;
use leadflow_proto::messaging::v1::messaging_service_client::MessagingServiceClient;
use leadflow_proto::qualification::v1::GetLeadRequest;
use leadflow_proto::qualification::v1::qualification_service_client::QualificationServiceClient;

#[derive(Debug, Parser)]
#[command(version, about = "The leadflow command line")]
struct Cli {
    #[command(flatten)]
    endpoints: Endpoints,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Endpoints {
    /// capture's gRPC URL
    #[arg(
        long,
        env = "LEADCTL_CAPTURE_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    capture_url: String,
    /// qualification's gRPC URL
    #[arg(
        long,
        env = "LEADCTL_QUALIFICATION_URL",
        default_value = "http://127.0.0.1:50052",
        global = true
    )]
    qualification_url: String,
    /// messaging's gRPC URL
    #[arg(
        long,
        env = "LEADCTL_MESSAGING_URL",
        default_value = "http://127.0.0.1:50053",
        global = true
    )]
    messaging_url: String,
    /// analytics' gRPC URL
    #[arg(
        long,
        env = "LEADCTL_ANALYTICS_URL",
        default_value = "http://127.0.0.1:50054",
        global = true
    )]
    analytics_url: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Capture one lead and print its id.
    Capture(CaptureArgs),
    /// Capture a handful of demo leads across channels.
    Demo,
    /// Show a lead's stage, score and history.
    Show {
        /// The lead's id
        lead_id: String,
    },
    /// Record a reply from a lead (two-way contact).
    Reply {
        /// The lead's id
        lead_id: String,
        /// What they wrote
        #[arg(default_value = "Thanks, let's talk")]
        text: String,
    },
    /// Check every service's health; exits non-zero unless all are SERVING.
    Health {
        /// Keep checking up to this many seconds until all are SERVING
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Print the funnel: leads per stage and channel.
    Funnel {
        /// Only this channel
        #[arg(long, default_value = "")]
        channel: String,
    },
}

#[derive(Debug, Args, Clone)]
struct CaptureArgs {
    #[arg(long, default_value = "")]
    email: String,
    #[arg(long, default_value = "")]
    phone: String,
    #[arg(long, default_value = "")]
    first_name: String,
    #[arg(long, default_value = "")]
    last_name: String,
    #[arg(long, default_value = "")]
    company: String,
    #[arg(long, default_value = "leadctl")]
    source: String,
    #[arg(long, default_value = "web")]
    channel: String,
    #[arg(long, default_value = "")]
    campaign: String,
}

impl From<CaptureArgs> for LeadInput {
    fn from(args: CaptureArgs) -> Self {
        LeadInput {
            email: args.email,
            phone: args.phone,
            first_name: args.first_name,
            last_name: args.last_name,
            company: args.company,
            source: args.source,
            channel: args.channel,
            campaign: args.campaign,
            phone_region: String::new(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Capture(args) => {
            let lead_id = capture(&cli.endpoints, args.into()).await?;
            println!("{lead_id}");
        }
        Command::Demo => demo(&cli.endpoints).await?,
        Command::Show { lead_id } => show(&cli.endpoints, lead_id).await?,
        Command::Reply { lead_id, text } => {
            let mut client = MessagingServiceClient::connect(cli.endpoints.messaging_url.clone())
                .await
                .context("connect to messaging")?;
            let response = client
                .record_inbound(RecordInboundRequest {
                    lead_id,
                    channel: MessageChannel::Email.into(),
                    kind: InboundKind::Reply.into(),
                    text,
                    idempotency_key: String::new(),
                })
                .await
                .map_err(describe)?;
            println!("{}", response.into_inner().inbound_id);
        }
        Command::Funnel { channel } => funnel(&cli.endpoints, channel).await?,
        Command::Health { wait } => health(&cli.endpoints, wait).await?,
    }
    Ok(())
}

fn describe(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let mut message = format!("{:?}: {}", status.code(), status.message());
    if let Some(bad_request) = status.get_details_bad_request() {
        for violation in bad_request.field_violations {
            message.push_str(&format!(
                "\n  {}: {}",
                violation.field, violation.description
            ));
        }
    }
    anyhow::anyhow!(message)
}

async fn capture(endpoints: &Endpoints, lead: LeadInput) -> anyhow::Result<String> {
    let mut client = CaptureServiceClient::connect(endpoints.capture_url.clone())
        .await
        .context("connect to capture")?;
    let response = client
        .capture_lead(CaptureLeadRequest { lead: Some(lead) })
        .await
        .map_err(describe)?;
    Ok(response
        .into_inner()
        .lead
        .map(|lead| lead.lead_id)
        .unwrap_or_default())
}

async fn demo(endpoints: &Endpoints) -> anyhow::Result<()> {
    let people = [
        (
            "ada@analytical-engines.example",
            "+44 20 7946 0018",
            "Ada",
            "Lovelace",
            "Analytical Engines",
            "referral",
            "spring-launch",
        ),
        (
            "grace@cobol.example",
            "(415) 555-0132",
            "Grace",
            "Hopper",
            "Navy Computing",
            "web",
            "spring-launch",
        ),
        (
            "alan.t@gmail.com",
            "",
            "Alan",
            "Turing",
            "",
            "paid_search",
            "brand-search",
        ),
        (
            "",
            "+49 30 901820",
            "Emmy",
            "Noether",
            "Göttingen Algebra",
            "partner",
            "",
        ),
        (
            "margaret@apollo.example",
            "",
            "Margaret",
            "Hamilton",
            "Apollo Guidance",
            "web",
            "webinar-q4",
        ),
    ];
    let mut table = Table::new();
    table.set_header(["lead id", "channel", "campaign"]);
    for (email, phone, first_name, last_name, company, channel, campaign) in people {
        let lead = LeadInput {
            email: email.into(),
            phone: phone.into(),
            first_name: first_name.into(),
            last_name: last_name.into(),
            company: company.into(),
            source: "demo".into(),
            channel: channel.into(),
            campaign: campaign.into(),
            phone_region: String::new(),
        };
        let lead_id = capture(endpoints, lead).await?;
        table.add_row([lead_id, channel.to_owned(), campaign.to_owned()]);
    }
    println!("{table}");
    Ok(())
}

fn stage_name(stage: i32) -> String {
    LeadStage::try_from(stage)
        .map(|stage| {
            stage
                .as_str_name()
                .trim_start_matches("LEAD_STAGE_")
                .to_owned()
        })
        .unwrap_or_else(|_| stage.to_string())
}

async fn show(endpoints: &Endpoints, lead_id: String) -> anyhow::Result<()> {
    let mut client = QualificationServiceClient::connect(endpoints.qualification_url.clone())
        .await
        .context("connect to qualification")?;
    let lead = client
        .get_lead(GetLeadRequest { lead_id })
        .await
        .map_err(describe)?
        .into_inner()
        .lead
        .context("empty response")?;
    println!(
        "lead {}  stage {}  channel {}  score {} (fit {}, engagement {}, model {})",
        lead.lead_id,
        stage_name(lead.stage),
        lead.channel,
        lead.total_score,
        lead.fit_score,
        lead.engagement_score,
        lead.model_version
    );
    let mut rules = Table::new();
    rules.set_header(["rule", "points", "why"]);
    for hit in lead.hits {
        rules.add_row([hit.rule_id, hit.points.to_string(), hit.description]);
    }
    println!("{rules}");
    let mut history = Table::new();
    history.set_header(["from", "to", "actor"]);
    for transition in lead.history {
        history.add_row([
            stage_name(transition.from_stage),
            stage_name(transition.to_stage),
            transition.actor,
        ]);
    }
    println!("{history}");
    Ok(())
}

async fn funnel(endpoints: &Endpoints, channel: String) -> anyhow::Result<()> {
    let mut client = AnalyticsServiceClient::connect(endpoints.analytics_url.clone())
        .await
        .context("connect to analytics")?;
    let funnel = client
        .get_funnel(GetFunnelRequest { channel })
        .await
        .map_err(describe)?
        .into_inner();
    let mut stages = Table::new();
    stages.set_header(["stage", "leads"]);
    for stage in funnel.stages {
        stages.add_row([stage_name(stage.stage), stage.leads.to_string()]);
    }
    println!("{stages}");
    let mut channels = Table::new();
    channels.set_header(["channel", "stage", "leads"]);
    for cell in funnel.channels {
        channels.add_row([cell.channel, stage_name(cell.stage), cell.leads.to_string()]);
    }
    println!("{channels}");
    println!("total leads: {}", funnel.total_leads);
    Ok(())
}

async fn check_health(url: &str) -> String {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url.to_owned()) else {
        return "BAD URL".to_owned();
    };
    let Ok(channel) = endpoint
        .connect_timeout(std::time::Duration::from_secs(1))
        .connect()
        .await
    else {
        return "UNREACHABLE".to_owned();
    };
    let mut client = HealthClient::new(channel);
    match client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(response) => response.into_inner().status().as_str_name().to_owned(),
        Err(status) => format!("{:?}", status.code()),
    }
}

async fn health(endpoints: &Endpoints, wait_seconds: u64) -> anyhow::Result<()> {
    let services = [
        ("capture", &endpoints.capture_url),
        ("qualification", &endpoints.qualification_url),
        ("messaging", &endpoints.messaging_url),
        ("analytics", &endpoints.analytics_url),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_seconds);
    loop {
        let mut statuses = Vec::new();
        for (name, url) in services {
            statuses.push((name, url, check_health(url).await));
        }
        let all_serving = statuses.iter().all(|(_, _, status)| status == "SERVING");
        if all_serving || std::time::Instant::now() >= deadline {
            let mut table = Table::new();
            table.set_header(["service", "url", "health"]);
            for (name, url, status) in &statuses {
                table.add_row([name.to_string(), url.to_string(), status.clone()]);
            }
            println!("{table}");
            if all_serving {
                return Ok(());
            }
            anyhow::bail!("not every service is serving");
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
