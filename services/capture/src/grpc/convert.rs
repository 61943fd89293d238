//! Conversions between stored values and protobuf messages, with masking of personal data.

use chrono::{DateTime, Utc};
use leadflow_platform::auth::StoredKeyInfo;
use leadflow_proto::capture::v1::{
    Activity, ActivityKind, ApiKey, Attribution, ConsentChannel, ConsentRecord, EmailKind, Lead,
    LegalBasis, Merge, MergeKind, MergeReview as MergeReviewProto, MergeReviewReason,
    MergeReviewStatus, Source, Touch,
};

use crate::domain::activity::kind_from_name;
use crate::store::leads::{ListedActivity, MergeReview, MergeRow};
use crate::store::sources::StoredSource;
use crate::store::{ConsentRow, LeadView, TouchRow};

/// Returns a protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

pub use leadflow_platform::pii::mask;

/// Masks an email's local part, keeping its domain (useful, not personal on its own).
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => format!("{}@{domain}", mask(local)),
        None => mask(email),
    }
}

/// Masks a phone number but for its country code's first digits and last two digits.
pub fn mask_phone(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().collect();
    if digits.len() <= 4 {
        return mask(phone);
    }
    let tail: String = digits[digits.len() - 2..].iter().collect();
    let head: String = digits[..3].iter().collect();
    format!("{head}{}{tail}", "*".repeat(digits.len() - 5))
}

fn touch(row: TouchRow) -> Touch {
    Touch {
        source: row.source_id,
        channel: row.channel,
        campaign: row.campaign,
        attribution: Some(Attribution {
            utm_source: row.utm_source,
            utm_medium: row.utm_medium,
            utm_campaign: row.utm_campaign,
            utm_term: row.utm_term,
            utm_content: row.utm_content,
            gclid: row.gclid,
            fbclid: row.fbclid,
            referrer: row.referrer,
            landing_page: row.landing_page,
        }),
        captured_at: Some(timestamp(row.captured_at)),
    }
}

fn consent(row: ConsentRow, unmask: bool) -> ConsentRecord {
    let channels = row
        .channels
        .iter()
        .filter_map(|name| {
            ConsentChannel::from_str_name(&format!("CONSENT_CHANNEL_{}", name.to_uppercase()))
        })
        .map(i32::from)
        .collect();
    ConsentRecord {
        consent_id: row.consent_id.to_string(),
        channels,
        disclosure_text: row.disclosure_text,
        disclosure_sha256: row.disclosure_sha256,
        form_url: row.form_url,
        form_version: row.form_version,
        ip_address: if unmask {
            row.ip_address
        } else {
            mask(&row.ip_address)
        },
        user_agent: if unmask {
            row.user_agent
        } else {
            mask(&row.user_agent)
        },
        legal_basis: LegalBasis::from_str_name(&row.legal_basis)
            .unwrap_or_default()
            .into(),
        given_at: Some(timestamp(row.given_at)),
    }
}

/// Returns the protobuf activity; its page title masked unless `unmask`.
pub fn activity(row: ListedActivity, unmask: bool) -> Activity {
    let stored = row.activity;
    let kind = kind_from_name(&stored.kind).unwrap_or(ActivityKind::Unspecified);
    Activity {
        activity_id: stored.activity_id.to_string(),
        kind: kind.into(),
        name: stored.name,
        asset: stored.asset,
        url: stored.url,
        title: if unmask { row.title } else { mask(&row.title) },
        source: stored.source_id,
        occurred_at: Some(timestamp(stored.occurred_at)),
        recorded_at: Some(timestamp(row.recorded_at)),
        anonymous: stored.anonymous,
        linked_at: row.linked_at.map(timestamp),
        record_id: row.record_id.map(|id| id.to_string()).unwrap_or_default(),
    }
}

/// Returns the protobuf lead; personal data masked unless `unmask`.
pub fn lead(view: LeadView, unmask: bool) -> Lead {
    let (email, phone, first_name, last_name) = if unmask {
        (view.email, view.phone, view.first_name, view.last_name)
    } else {
        (
            mask_email(&view.email),
            mask_phone(&view.phone),
            mask(&view.first_name),
            mask(&view.last_name),
        )
    };
    let email_kind = match view.email_kind.as_str() {
        "business" => EmailKind::Business,
        "free" => EmailKind::Free,
        "disposable" => EmailKind::Disposable,
        _ => EmailKind::Unspecified,
    };
    Lead {
        lead_id: view.lead_id.to_string(),
        email,
        phone,
        first_name,
        last_name,
        company: view.company,
        source: view.source_id,
        channel: view.channel,
        campaign: view.campaign,
        created_at: Some(timestamp(view.created_at)),
        email_kind: email_kind.into(),
        email_role: view.email_role,
        phone_line_type: view.phone_line_type,
        country: view.country,
        website: view.website,
        job_title: view.job_title,
        quality_score: view.quality_score,
        first_touch: view.first_touch.map(touch),
        latest_touch: view.latest_touch.map(touch),
        consents: view
            .consents
            .into_iter()
            .map(|row| consent(row, unmask))
            .collect(),
        erased: view.erased,
        touch_count: view.touch_count,
        merges: view.merges.into_iter().map(merge).collect(),
    }
}

fn merge(row: MergeRow) -> Merge {
    Merge {
        merge_id: row.merge_id.to_string(),
        lead_id: row.lead_id.to_string(),
        merged_lead_id: row.merged_lead_id.to_string(),
        kind: match row.kind.as_str() {
            "capture" => MergeKind::Capture,
            "lead" => MergeKind::Lead,
            _ => MergeKind::Unspecified,
        }
        .into(),
        source: row.source_id,
        fields_filled: row.fields_filled,
        merged_at: Some(timestamp(row.merged_at)),
        unmerged_at: row.unmerged_at.map(timestamp),
        review_id: row.review_id.map(|id| id.to_string()).unwrap_or_default(),
    }
}

/// Returns the review status stored as `name`.
pub fn review_status(name: &str) -> MergeReviewStatus {
    match name {
        "pending" => MergeReviewStatus::Pending,
        "merged" => MergeReviewStatus::Merged,
        "kept_separate" => MergeReviewStatus::KeptSeparate,
        "discarded" => MergeReviewStatus::Discarded,
        _ => MergeReviewStatus::Unspecified,
    }
}

/// Returns the stored name of a review status.
pub fn review_status_name(status: MergeReviewStatus) -> Option<&'static str> {
    match status {
        MergeReviewStatus::Unspecified => None,
        MergeReviewStatus::Pending => Some("pending"),
        MergeReviewStatus::Merged => Some("merged"),
        MergeReviewStatus::KeptSeparate => Some("kept_separate"),
        MergeReviewStatus::Discarded => Some("discarded"),
    }
}

/// Returns the protobuf review; the held request is decoded while pending.
pub fn merge_review(review: MergeReview) -> MergeReviewProto {
    let capture = review
        .request
        .as_deref()
        .and_then(|raw| prost::Message::decode(raw).ok());
    MergeReviewProto {
        review_id: review.review_id.to_string(),
        reason: match review.reason.as_str() {
            "identity_conflict" => MergeReviewReason::IdentityConflict,
            "consent_mismatch" => MergeReviewReason::ConsentMismatch,
            _ => MergeReviewReason::Unspecified,
        }
        .into(),
        status: review_status(&review.status).into(),
        lead_id: review.lead_id.to_string(),
        other_lead_id: review
            .other_lead_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        source: review.source_id,
        capture,
        lead_consent_channels: review.lead_consent_channels,
        capture_consent_channels: review.capture_consent_channels,
        created_at: Some(timestamp(review.created_at)),
        resolved_at: review.resolved_at.map(timestamp),
        resolved_by: review.resolved_by.unwrap_or_default(),
        note: review.note,
        result_lead_id: review
            .result_lead_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        merge_id: review.merge_id.map(|id| id.to_string()).unwrap_or_default(),
    }
}

/// Returns the protobuf source.
pub fn source(stored: StoredSource) -> Source {
    Source {
        source_id: stored.policy.source_id,
        settings: Some(stored.policy.settings),
        created_at: Some(timestamp(stored.created_at)),
        updated_at: Some(timestamp(stored.updated_at)),
    }
}

/// Returns the protobuf API key (never its secret).
pub fn api_key(info: StoredKeyInfo) -> ApiKey {
    ApiKey {
        key_id: info.key_id,
        name: info.name,
        scopes: info
            .scopes
            .iter()
            .map(|scope| scope.as_str().to_owned())
            .collect(),
        created_at: Some(timestamp(info.created_at)),
        expires_at: info.expires_at.map(timestamp),
        revoked_at: info.revoked_at.map(timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_no_more_than_a_hint() {
        assert_eq!(mask_email("ada.lovelace@example.com"), "a***@example.com");
        assert_eq!(mask_phone("+14155550132"), "+14*******32");
        assert_eq!(mask("Zoë"), "Z***");
        assert_eq!(mask(""), "");
    }
}
