//! `leadctl`: capture leads, look them up, record activities and replies, and read the funnel
//! from a shell.

mod import;
mod reviews;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use comfy_table::Table;
use leadflow_platform::grpc::Outgoing;
use leadflow_proto::analytics::v1::GetFunnelRequest;
use leadflow_proto::analytics::v1::analytics_service_client::AnalyticsServiceClient;
use leadflow_proto::capture::v1::capture_service_client::CaptureServiceClient;
use leadflow_proto::capture::v1::{
    ActivityKind, CaptureLeadRequest, EraseLeadRequest, LeadInput, ListActivitiesRequest,
    ListLeadsRequest, RecordActivityRequest,
};
use leadflow_proto::capture::v1::{
    ConsentChannel, ConsentInput, CreateApiKeyRequest, CreateSourceRequest, DedupeMode,
    DedupePolicy, LegalBasis, ListSourcesRequest, SourceKind, SourceSettings,
};
use leadflow_proto::events::v1::{InboundKind, LeadStage, MessageChannel};
use leadflow_proto::messaging::v1::RecordInboundRequest;
use leadflow_proto::messaging::v1::messaging_service_client::MessagingServiceClient;
use leadflow_proto::qualification::v1::GetLeadRequest;
use leadflow_proto::qualification::v1::qualification_service_client::QualificationServiceClient;
use secrecy::SecretString;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A capture client carrying the API key.
type CaptureClient = CaptureServiceClient<InterceptedService<Channel, Outgoing>>;

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
    /// API key sent as `authorization: Bearer <key>` to every service; prefer the environment
    /// variable, which `ps` does not show
    #[arg(long, env = "LEADCTL_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
}

impl Endpoints {
    async fn channel(&self, url: &str) -> anyhow::Result<InterceptedService<Channel, Outgoing>> {
        let channel = Endpoint::from_shared(url.to_owned())?
            .connect()
            .await
            .with_context(|| format!("connect to {url}"))?;
        let outgoing = match &self.api_key {
            Some(key) => Outgoing::with_api_key(&SecretString::from(key.clone()))?,
            None => Outgoing::default(),
        };
        Ok(InterceptedService::new(channel, outgoing))
    }

    async fn capture(&self) -> anyhow::Result<CaptureClient> {
        Ok(CaptureServiceClient::new(
            self.channel(&self.capture_url).await?,
        ))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Capture one lead and print its id.
    Capture(CaptureArgs),
    /// Import a CSV (header row of field names) through ImportLeads, with a progress bar and a
    /// summary; rejected rows go to <file>.rejects.csv.
    Import {
        /// The CSV file
        file: std::path::PathBuf,
        /// Registered source the rows come through
        #[arg(long)]
        source: String,
        /// Channel of rows without a `channel` column
        #[arg(long, default_value = "import")]
        channel: String,
    },
    /// List leads, newest first.
    List {
        /// Only this source
        #[arg(long, default_value = "")]
        source: String,
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    /// Erase a lead's personal data (keeps a hashed suppression record).
    Erase {
        lead_id: String,
        /// Why, e.g. `gdpr-request`
        #[arg(long)]
        reason: String,
    },
    /// Register the `demo` source (if missing) and capture a handful of demo leads.
    Demo,
    /// Register a source.
    SourceCreate {
        /// Source id, a token such as `web-contact`
        source_id: String,
        #[arg(long)]
        name: String,
        /// form, vendor, partner or import
        #[arg(long, default_value = "form")]
        kind: String,
        /// merge, or reject (vendor dedupe within --window-seconds)
        #[arg(long, default_value = "merge")]
        dedupe: String,
        #[arg(long, default_value_t = 0)]
        window_seconds: i64,
        #[arg(long, default_value_t = 0)]
        cost_micros: i64,
        #[arg(long, default_value = "USD")]
        currency: String,
        #[arg(long, default_value_t = 0)]
        return_days: i32,
    },
    /// List the registered sources.
    Sources,
    /// Create an API key and print it once.
    KeyCreate {
        #[arg(long)]
        name: String,
        /// leads:write, leads:read, pii:read or admin (repeatable)
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// Show a lead's stage, score and history.
    Show {
        /// The lead's id
        lead_id: String,
    },
    /// List captures held for merge review (admin).
    Reviews {
        /// pending, merged, kept-separate or discarded
        #[arg(long, default_value = "pending", value_parser = reviews::parse_status)]
        status: leadflow_proto::capture::v1::MergeReviewStatus,
    },
    /// Decide a held capture: merge, keep (as a lead of its own) or discard (admin).
    Resolve {
        /// The review's id (see `leadctl reviews`)
        review_id: String,
        /// merge, keep or discard
        #[arg(value_parser = reviews::parse_resolution)]
        resolution: leadflow_proto::capture::v1::MergeResolution,
        /// Why, kept with the review
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Undo a merge from a lead's lineage (see `leadctl show`) (admin).
    Unmerge {
        /// The merge's id
        merge_id: String,
    },
    /// Record what a person did (a page visit, a download, a webinar, …) and print its id and
    /// outcome; name the person by --lead-id, --visitor-id, or --email and/or --phone.
    Activity(ActivityArgs),
    /// List what a lead did, newest first.
    Activities {
        /// The lead's id (or a row merged into it)
        lead_id: String,
        #[arg(long, default_value_t = 20)]
        limit: i32,
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

#[derive(Debug, Args, Clone)]
struct ActivityArgs {
    /// page-visit, pricing-page-view, download, webinar-registered, webinar-attended,
    /// video-watched or other (with --name)
    #[arg(value_parser = parse_activity_kind)]
    kind: ActivityKind,
    /// Registered source the activity came through
    #[arg(long)]
    source: String,
    #[arg(long, default_value = "")]
    lead_id: String,
    /// The browser's tracking cookie (lf_vid)
    #[arg(long, default_value = "")]
    visitor_id: String,
    #[arg(long, default_value = "")]
    email: String,
    #[arg(long, default_value = "")]
    phone: String,
    /// The page (only scheme, host and path are kept)
    #[arg(long, default_value = "")]
    url: String,
    #[arg(long, default_value = "")]
    title: String,
    /// The file, webinar or video
    #[arg(long, default_value = "")]
    asset: String,
    /// What an `other` activity was, a token such as trial_started
    #[arg(long, default_value = "")]
    name: String,
    /// A UUID making a retry of this command idempotent
    #[arg(long, default_value = "")]
    activity_id: String,
}

/// Parses `page-visit` (or `page_visit`, any case) into its kind.
fn parse_activity_kind(name: &str) -> Result<ActivityKind, String> {
    let upper = name.trim().replace('-', "_").to_uppercase();
    ActivityKind::from_str_name(&format!("ACTIVITY_KIND_{upper}"))
        .filter(|kind| *kind != ActivityKind::Unspecified)
        .ok_or_else(|| {
            "page-visit, pricing-page-view, download, webinar-registered, webinar-attended, \
             video-watched or other"
                .to_owned()
        })
}

impl From<ActivityArgs> for RecordActivityRequest {
    fn from(args: ActivityArgs) -> Self {
        RecordActivityRequest {
            lead_id: args.lead_id,
            visitor_id: args.visitor_id,
            email: args.email,
            phone: args.phone,
            kind: args.kind.into(),
            name: args.name,
            url: args.url,
            title: args.title,
            asset: args.asset,
            source: args.source,
            activity_id: args.activity_id,
            ..RecordActivityRequest::default()
        }
    }
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
            ..LeadInput::default()
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
        Command::SourceCreate {
            source_id,
            name,
            kind,
            dedupe,
            window_seconds,
            cost_micros,
            currency,
            return_days,
        } => {
            let kind = SourceKind::from_str_name(&format!("SOURCE_KIND_{}", kind.to_uppercase()))
                .context("kind must be form, vendor, partner or import")?;
            let mode = DedupeMode::from_str_name(&format!("DEDUPE_MODE_{}", dedupe.to_uppercase()))
                .context("dedupe must be merge or reject")?;
            let settings = SourceSettings {
                name,
                kind: kind.into(),
                dedupe: Some(DedupePolicy {
                    mode: mode.into(),
                    window_seconds,
                }),
                cost_per_lead_micros: cost_micros,
                currency,
                return_window_days: return_days,
                ..SourceSettings::default()
            };
            let created = cli
                .endpoints
                .capture()
                .await?
                .create_source(CreateSourceRequest {
                    source_id,
                    settings: Some(settings),
                })
                .await
                .map_err(describe)?;
            println!(
                "{}",
                created
                    .into_inner()
                    .source
                    .map(|source| source.source_id)
                    .unwrap_or_default()
            );
        }
        Command::Sources => {
            let sources = cli
                .endpoints
                .capture()
                .await?
                .list_sources(ListSourcesRequest {})
                .await
                .map_err(describe)?;
            let mut table = Table::new();
            table.set_header([
                "source",
                "name",
                "kind",
                "dedupe",
                "cost/lead",
                "return days",
            ]);
            for source in sources.into_inner().sources {
                let settings = source.settings.unwrap_or_default();
                let dedupe = settings.dedupe.unwrap_or_default();
                table.add_row([
                    source.source_id,
                    settings.name.clone(),
                    settings
                        .kind()
                        .as_str_name()
                        .trim_start_matches("SOURCE_KIND_")
                        .to_lowercase(),
                    dedupe
                        .mode()
                        .as_str_name()
                        .trim_start_matches("DEDUPE_MODE_")
                        .to_lowercase(),
                    format!(
                        "{:.2} {}",
                        settings.cost_per_lead_micros as f64 / 1e6,
                        settings.currency
                    ),
                    settings.return_window_days.to_string(),
                ]);
            }
            println!("{table}");
        }
        Command::KeyCreate { name, scopes } => {
            let created = cli
                .endpoints
                .capture()
                .await?
                .create_api_key(CreateApiKeyRequest {
                    name,
                    scopes,
                    expires_at: None,
                })
                .await
                .map_err(describe)?
                .into_inner();
            eprintln!(
                "key {} created; it is shown once:",
                created.key.map(|key| key.key_id).unwrap_or_default()
            );
            println!("{}", created.secret);
        }
        Command::Show { lead_id } => show(&cli.endpoints, lead_id).await?,
        Command::Import {
            file,
            source,
            channel,
        } => {
            let mut client = cli.endpoints.capture().await?;
            let summary = import::run(&mut client, &file, &source, &channel).await?;
            import::print(&summary);
        }
        Command::List { source, limit } => {
            let page = cli
                .endpoints
                .capture()
                .await?
                .list_leads(ListLeadsRequest {
                    source,
                    page_size: limit,
                    page_token: String::new(),
                })
                .await
                .map_err(describe)?
                .into_inner();
            let mut table = Table::new();
            table.set_header([
                "lead id", "email", "phone", "name", "source", "channel", "quality", "touches",
            ]);
            for lead in page.leads {
                table.add_row([
                    lead.lead_id,
                    lead.email,
                    lead.phone,
                    format!("{} {}", lead.first_name, lead.last_name)
                        .trim()
                        .to_owned(),
                    lead.source,
                    lead.channel,
                    lead.quality_score.to_string(),
                    lead.touch_count.to_string(),
                ]);
            }
            println!("{table}");
        }
        Command::Reviews { status } => {
            reviews::list(&mut cli.endpoints.capture().await?, status).await?;
        }
        Command::Resolve {
            review_id,
            resolution,
            note,
        } => {
            let mut client = cli.endpoints.capture().await?;
            reviews::resolve(&mut client, review_id, resolution, note).await?;
        }
        Command::Unmerge { merge_id } => {
            reviews::unmerge(&mut cli.endpoints.capture().await?, merge_id).await?;
        }
        Command::Erase { lead_id, reason } => {
            let erased = cli
                .endpoints
                .capture()
                .await?
                .erase_lead(EraseLeadRequest { lead_id, reason })
                .await
                .map_err(describe)?
                .into_inner();
            println!("erased {}", erased.lead_id);
        }
        Command::Activity(args) => {
            let recorded = cli
                .endpoints
                .capture()
                .await?
                .record_activity(RecordActivityRequest::from(args))
                .await
                .map_err(describe)?
                .into_inner();
            let outcome = recorded
                .outcome()
                .as_str_name()
                .trim_start_matches("ACTIVITY_OUTCOME_")
                .to_lowercase();
            if recorded.lead_id.is_empty() {
                println!("{} {outcome}", recorded.activity_id);
            } else {
                println!("{} {outcome} {}", recorded.activity_id, recorded.lead_id);
            }
        }
        Command::Activities { lead_id, limit } => {
            let page = cli
                .endpoints
                .capture()
                .await?
                .list_activities(ListActivitiesRequest {
                    lead_id,
                    page_size: limit,
                    page_token: String::new(),
                })
                .await
                .map_err(describe)?
                .into_inner();
            println!("lead {}", page.lead_id);
            let mut table = Table::new();
            table.set_header([
                "occurred at",
                "kind",
                "what",
                "source",
                "through",
                "activity id",
            ]);
            for activity in page.activities {
                let kind = activity
                    .kind()
                    .as_str_name()
                    .trim_start_matches("ACTIVITY_KIND_")
                    .to_lowercase()
                    .replace('_', "-");
                let what = [&activity.name, &activity.asset, &activity.url]
                    .into_iter()
                    .find(|text| !text.is_empty())
                    .cloned()
                    .unwrap_or_default();
                let through = if activity.anonymous {
                    format!("{} (linked browser)", activity.record_id)
                } else {
                    activity.record_id
                };
                table.add_row([
                    activity.occurred_at.map(format_time).unwrap_or_default(),
                    kind,
                    what,
                    activity.source,
                    through,
                    activity.activity_id,
                ]);
            }
            println!("{table}");
        }
        Command::Reply { lead_id, text } => {
            let mut client = MessagingServiceClient::new(
                cli.endpoints.channel(&cli.endpoints.messaging_url).await?,
            );
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
    if status.code() == tonic::Code::Unauthenticated {
        message.push_str(
            "\n  every service needs an api key registered in it: set LEADCTL_API_KEY (see README, API keys)",
        );
    }
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
    let mut client = endpoints.capture().await?;
    let consent = ConsentInput {
        channels: vec![ConsentChannel::Email.into()],
        disclosure_text: "I agree that leadflow may email me about my enquiry.".into(),
        legal_basis: LegalBasis::Consent.into(),
        ..ConsentInput::default()
    };
    let response = client
        .capture_lead(CaptureLeadRequest {
            lead: Some(lead),
            attribution: None,
            consent: Some(consent),
        })
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
    let demo_source = CreateSourceRequest {
        source_id: "demo".into(),
        settings: Some(SourceSettings {
            name: "Demo web form".into(),
            kind: SourceKind::Form.into(),
            dedupe: Some(DedupePolicy {
                mode: DedupeMode::Merge.into(),
                window_seconds: 0,
            }),
            ..SourceSettings::default()
        }),
    };
    match endpoints.capture().await?.create_source(demo_source).await {
        Ok(_) => eprintln!("registered source `demo`"),
        Err(status) if status.code() == tonic::Code::AlreadyExists => {}
        Err(status) => return Err(describe(status)),
    }
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
            ..LeadInput::default()
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
    let captured = endpoints
        .capture()
        .await?
        .get_lead(leadflow_proto::capture::v1::GetLeadRequest {
            lead_id: lead_id.clone(),
        })
        .await
        .map_err(describe)?
        .into_inner()
        .lead
        .context("empty response")?;
    let mut contact = Table::new();
    contact.set_header(["field", "value"]);
    let first = captured.first_touch.clone().unwrap_or_default();
    let latest = captured.latest_touch.clone().unwrap_or_default();
    for (field, value) in [
        ("email", captured.email.clone()),
        ("phone", captured.phone.clone()),
        (
            "name",
            format!("{} {}", captured.first_name, captured.last_name)
                .trim()
                .to_owned(),
        ),
        ("company", captured.company.clone()),
        (
            "source / channel",
            format!("{} / {}", captured.source, captured.channel),
        ),
        ("quality", captured.quality_score.to_string()),
        ("touches", captured.touch_count.to_string()),
        (
            "first touch",
            format!("{} {} {}", first.source, first.channel, first.campaign),
        ),
        (
            "latest touch",
            format!("{} {} {}", latest.source, latest.channel, latest.campaign),
        ),
        ("consents", captured.consents.len().to_string()),
        ("erased", captured.erased.to_string()),
    ] {
        contact.add_row([field.to_owned(), value]);
    }
    println!("{contact}");
    reviews::print_lineage(&captured);
    let mut client =
        QualificationServiceClient::new(endpoints.channel(&endpoints.qualification_url).await?);
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
    let mut client =
        AnalyticsServiceClient::new(endpoints.channel(&endpoints.analytics_url).await?);
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

/// Formats a timestamp as RFC 3339 in UTC, to the second.
fn format_time(at: leadflow_proto::prost_types::Timestamp) -> String {
    chrono::DateTime::from_timestamp(at.seconds, 0)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
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
