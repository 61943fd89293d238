//! `leadctl import FILE.csv`: streams a CSV through `ImportLeads` with a progress bar, then
//! prints a summary table and writes the rejected rows beside the input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use comfy_table::Table;
use indicatif::{ProgressBar, ProgressStyle};
use leadflow_proto::capture::v1::{
    Attribution, CaptureLeadRequest, ConsentChannel, ConsentInput, ImportLeadsRequest,
    ImportOutcome, LeadInput, LegalBasis,
};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// Rows in flight between the reader and the server.
const IN_FLIGHT: usize = 256;

/// What an import did, by outcome and by rejection reason.
#[derive(Debug, Default)]
pub struct Summary {
    pub outcomes: BTreeMap<String, u64>,
    pub reasons: BTreeMap<String, u64>,
    pub rejects_file: Option<PathBuf>,
    /// A rejects file of an earlier run, removed so none is mistaken for this run's.
    pub stale_rejects_removed: Option<PathBuf>,
}

/// Builds a capture request from one CSV record; headers are our field names
/// (`email`, `phone`, `first_name`, …, `visitor_id`, `utm_source`, …, `consent_email`,
/// `consent_text`).
pub fn to_request(
    headers: &csv::StringRecord,
    record: &csv::StringRecord,
    source: &str,
    default_channel: &str,
) -> CaptureLeadRequest {
    let field = |name: &str| -> String {
        headers
            .iter()
            .position(|header| header.trim().eq_ignore_ascii_case(name))
            .and_then(|index| record.get(index))
            .unwrap_or_default()
            .to_owned()
    };
    let ticked = |name: &str| {
        matches!(
            field(name).trim().to_lowercase().as_str(),
            "1" | "true" | "yes" | "y" | "on" | "x"
        )
    };
    let channel = Some(field("channel"))
        .filter(|channel| !channel.trim().is_empty())
        .unwrap_or_else(|| default_channel.to_owned());
    let lead = LeadInput {
        email: field("email"),
        phone: field("phone"),
        first_name: field("first_name"),
        last_name: field("last_name"),
        company: field("company"),
        source: source.to_owned(),
        channel,
        campaign: field("campaign"),
        phone_region: field("phone_region"),
        country: field("country"),
        website: field("website"),
        job_title: field("job_title"),
        visitor_id: field("visitor_id"),
    };
    let attribution = Attribution {
        utm_source: field("utm_source"),
        utm_medium: field("utm_medium"),
        utm_campaign: field("utm_campaign"),
        utm_term: field("utm_term"),
        utm_content: field("utm_content"),
        gclid: field("gclid"),
        fbclid: field("fbclid"),
        referrer: field("referrer"),
        landing_page: field("landing_page"),
    };
    let channels: Vec<i32> = [
        ("consent_email", ConsentChannel::Email),
        ("consent_sms", ConsentChannel::Sms),
        ("consent_call", ConsentChannel::Call),
    ]
    .into_iter()
    .filter(|(name, _)| ticked(name))
    .map(|(_, channel)| channel.into())
    .collect();
    let consent = (!channels.is_empty()).then(|| ConsentInput {
        channels,
        disclosure_text: field("consent_text"),
        form_url: field("form_url"),
        form_version: field("form_version"),
        legal_basis: LegalBasis::Consent.into(),
        ..ConsentInput::default()
    });
    CaptureLeadRequest {
        lead: Some(lead),
        attribution: Some(attribution),
        consent,
    }
}

/// Returns `<input stem>.rejects.csv` beside `input`.
pub fn rejects_path(input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_else(|| "import".to_owned());
    input.with_file_name(format!("{stem}.rejects.csv"))
}

/// Streams `path` into `client.import_leads` and returns what happened.
pub async fn run<T>(
    client: &mut leadflow_proto::capture::v1::capture_service_client::CaptureServiceClient<T>,
    path: &Path,
    source: &str,
    default_channel: &str,
) -> anyhow::Result<Summary>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let total = csv::Reader::from_path(path)
        .with_context(|| format!("open {}", path.display()))?
        .records()
        .count() as u64;
    let progress = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows ({per_sec}, eta {eta})",
        )
        .context("progress template")?,
    );
    let (sender, receiver) = tokio::sync::mpsc::channel::<ImportLeadsRequest>(IN_FLIGHT);
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("open {}", path.display()))?;
    let headers = reader.headers().context("read the header row")?.clone();
    let source_id = source.to_owned();
    let channel = default_channel.to_owned();
    let rows_by_number = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<
        i64,
        csv::StringRecord,
    >::new()));
    let kept = rows_by_number.clone();
    let feeder = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for (index, record) in reader.records().enumerate() {
            let record = record.with_context(|| format!("read row {}", index + 2))?;
            // CSV line numbers: the header is line 1.
            let row = i64::try_from(index).unwrap_or(i64::MAX).saturating_add(2);
            let request = ImportLeadsRequest {
                row,
                capture: Some(to_request(&headers, &record, &source_id, &channel)),
            };
            // Keep the raw row until its result arrives, to write rejects; bounded by IN_FLIGHT.
            if let Ok(mut kept) = kept.lock() {
                kept.insert(row, record);
            }
            if sender.blocking_send(request).is_err() {
                break;
            }
        }
        Ok(())
    });
    let mut results = client
        .import_leads(ReceiverStream::new(receiver))
        .await
        .map_err(|status| anyhow::anyhow!("{:?}: {}", status.code(), status.message()))?
        .into_inner();
    let mut summary = Summary::default();
    let rejects_file = rejects_path(path);
    match std::fs::remove_file(&rejects_file) {
        Ok(()) => summary.stale_rejects_removed = Some(rejects_file.clone()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err).with_context(|| format!("remove old {}", rejects_file.display()));
        }
    }
    let mut rejects: Option<csv::Writer<std::fs::File>> = None;
    while let Some(result) = results.next().await {
        let result = result
            .map_err(|status| anyhow::anyhow!("{:?}: {}", status.code(), status.message()))?;
        progress.inc(1);
        let outcome = result
            .outcome()
            .as_str_name()
            .trim_start_matches("IMPORT_OUTCOME_")
            .to_lowercase();
        *summary.outcomes.entry(outcome.clone()).or_default() += 1;
        let raw = rows_by_number
            .lock()
            .ok()
            .and_then(|mut kept| kept.remove(&result.row));
        if matches!(
            result.outcome(),
            ImportOutcome::Rejected | ImportOutcome::Failed | ImportOutcome::Duplicate
        ) {
            let reasons: Vec<String> = result
                .violations
                .iter()
                .map(|violation| format!("{} {}", violation.field, violation.reason))
                .collect();
            for violation in &result.violations {
                *summary.reasons.entry(violation.reason.clone()).or_default() += 1;
            }
            if rejects.is_none() {
                let mut writer = csv::Writer::from_path(&rejects_file)
                    .with_context(|| format!("create {}", rejects_file.display()))?;
                let mut header = vec!["row".to_owned(), "outcome".to_owned(), "reasons".to_owned()];
                header.extend(
                    csv::Reader::from_path(path)?
                        .headers()?
                        .iter()
                        .map(str::to_owned),
                );
                writer.write_record(&header)?;
                rejects = Some(writer);
            }
            if let Some(writer) = rejects.as_mut() {
                let detail = if reasons.is_empty() {
                    result.message.clone()
                } else {
                    reasons.join("; ")
                };
                let mut line = vec![result.row.to_string(), outcome, detail];
                line.extend(
                    raw.iter()
                        .flat_map(|record| record.iter().map(str::to_owned)),
                );
                writer.write_record(&line)?;
            }
        }
    }
    progress.finish();
    feeder.await.context("join csv reader")??;
    if let Some(mut writer) = rejects {
        writer.flush()?;
        summary.rejects_file = Some(rejects_file);
    }
    Ok(summary)
}

/// Prints the summary as tables.
pub fn print(summary: &Summary) {
    let mut outcomes = Table::new();
    outcomes.set_header(["outcome", "rows"]);
    for (outcome, rows) in &summary.outcomes {
        outcomes.add_row([outcome.clone(), rows.to_string()]);
    }
    println!("{outcomes}");
    if !summary.reasons.is_empty() {
        let mut reasons = Table::new();
        reasons.set_header(["rejection reason", "rows"]);
        for (reason, rows) in &summary.reasons {
            reasons.add_row([reason.clone(), rows.to_string()]);
        }
        println!("{reasons}");
    }
    if let Some(file) = &summary.rejects_file {
        println!("rejected rows written to {}", file.display());
    } else if let Some(file) = &summary.stale_rejects_removed {
        println!(
            "no row rejected; removed {} left by an earlier import",
            file.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_map_onto_leads_consent_and_attribution() {
        let headers = csv::StringRecord::from(vec![
            "Email",
            "phone",
            "first_name",
            "utm_source",
            "consent_sms",
            "consent_text",
        ]);
        let record = csv::StringRecord::from(vec![
            "ada@example.com",
            "+44 7400 123456",
            "Ada",
            "newsletter",
            "yes",
            "Text me",
        ]);
        let request = to_request(&headers, &record, "import-2026", "import");
        let lead = request.lead.expect("lead");
        assert_eq!(
            (
                lead.email.as_str(),
                lead.source.as_str(),
                lead.channel.as_str()
            ),
            ("ada@example.com", "import-2026", "import")
        );
        assert_eq!(
            request.attribution.expect("attribution").utm_source,
            "newsletter"
        );
        let consent = request.consent.expect("consent");
        assert_eq!(consent.channels, [i32::from(ConsentChannel::Sms)]);
        assert_eq!(consent.disclosure_text, "Text me");
    }

    #[test]
    fn rejects_land_beside_the_input() {
        assert_eq!(
            rejects_path(Path::new("/tmp/leads.csv")),
            PathBuf::from("/tmp/leads.rejects.csv")
        );
    }
}
