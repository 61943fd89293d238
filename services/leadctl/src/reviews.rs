//! `leadctl reviews`, `resolve`, `unmerge` and the lineage `show` prints: the merge review
//! queue and merge lineage of capture.

use comfy_table::Table;
use leadflow_proto::capture::v1::{
    Lead, ListMergeReviewsRequest, MergeResolution, MergeReviewStatus, ResolveMergeReviewRequest,
    UnmergeLeadRequest,
};

use crate::{CaptureClient, describe};

/// Parses a review status as typed on the command line.
pub fn parse_status(name: &str) -> Result<MergeReviewStatus, String> {
    match name {
        "pending" => Ok(MergeReviewStatus::Pending),
        "merged" => Ok(MergeReviewStatus::Merged),
        "kept-separate" | "kept_separate" => Ok(MergeReviewStatus::KeptSeparate),
        "discarded" => Ok(MergeReviewStatus::Discarded),
        _ => Err("expected pending, merged, kept-separate or discarded".to_owned()),
    }
}

/// Parses a decision as typed on the command line.
pub fn parse_resolution(name: &str) -> Result<MergeResolution, String> {
    match name {
        "merge" => Ok(MergeResolution::Merge),
        "keep" | "keep-separate" => Ok(MergeResolution::KeepSeparate),
        "discard" => Ok(MergeResolution::Discard),
        _ => Err("expected merge, keep or discard".to_owned()),
    }
}

fn short(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_lowercase()
}

/// Prints every review in `status` as a table, page after page.
pub async fn list(client: &mut CaptureClient, status: MergeReviewStatus) -> anyhow::Result<()> {
    let mut table = Table::new();
    table.set_header([
        "review",
        "reason",
        "lead",
        "other lead",
        "source",
        "consent: lead / capture",
        "held email / phone",
        "held since",
        "result",
    ]);
    let mut page_token = String::new();
    let mut shown = 0;
    loop {
        let page = client
            .list_merge_reviews(ListMergeReviewsRequest {
                status: status.into(),
                page_size: 200,
                page_token,
            })
            .await
            .map_err(describe)?
            .into_inner();
        for review in page.reviews {
            shown += 1;
            let held = review
                .capture
                .as_ref()
                .and_then(|capture| capture.lead.as_ref())
                .map(|lead| format!("{} / {}", lead.email, lead.phone))
                .unwrap_or_default();
            table.add_row([
                review.review_id.clone(),
                short(review.reason().as_str_name(), "MERGE_REVIEW_REASON_"),
                review.lead_id.clone(),
                review.other_lead_id.clone(),
                review.source.clone(),
                format!(
                    "{} / {}",
                    review.lead_consent_channels.join(","),
                    review.capture_consent_channels.join(",")
                ),
                held,
                review
                    .created_at
                    .map(|at| at.to_string())
                    .unwrap_or_default(),
                review.result_lead_id.clone(),
            ]);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    println!("{table}");
    println!(
        "{shown} {} review(s)",
        short(status.as_str_name(), "MERGE_REVIEW_STATUS_")
    );
    Ok(())
}

/// Decides a review and prints the outcome.
pub async fn resolve(
    client: &mut CaptureClient,
    review_id: String,
    resolution: MergeResolution,
    note: String,
) -> anyhow::Result<()> {
    let resolved = client
        .resolve_merge_review(ResolveMergeReviewRequest {
            review_id,
            resolution: resolution.into(),
            note,
        })
        .await
        .map_err(describe)?
        .into_inner();
    let review = resolved.review.unwrap_or_default();
    println!(
        "review {}: {}",
        review.review_id,
        short(review.status().as_str_name(), "MERGE_REVIEW_STATUS_")
    );
    if let Some(lead) = resolved.lead {
        println!("lead {} ({} touches)", lead.lead_id, lead.touch_count);
    }
    Ok(())
}

/// Undoes a merge and prints both leads.
pub async fn unmerge(client: &mut CaptureClient, merge_id: String) -> anyhow::Result<()> {
    let undone = client
        .unmerge_lead(UnmergeLeadRequest { merge_id })
        .await
        .map_err(describe)?
        .into_inner();
    for (what, lead) in [("lead", undone.lead), ("restored", undone.restored)] {
        let lead = lead.unwrap_or_default();
        println!(
            "{what:<8} {} ({} touches, source {})",
            lead.lead_id, lead.touch_count, lead.source
        );
    }
    Ok(())
}

/// Prints a lead's lineage, when it has one.
pub fn print_lineage(lead: &Lead) {
    if lead.merges.is_empty() {
        return;
    }
    let mut table = Table::new();
    table.set_header([
        "merge",
        "kind",
        "merged row",
        "source",
        "fields filled",
        "merged at",
        "undone at",
    ]);
    for merge in &lead.merges {
        table.add_row([
            merge.merge_id.clone(),
            short(merge.kind().as_str_name(), "MERGE_KIND_"),
            merge.merged_lead_id.clone(),
            merge.source.clone(),
            merge.fields_filled.join(", "),
            merge
                .merged_at
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            merge
                .unmerged_at
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        ]);
    }
    println!("{table}");
}
