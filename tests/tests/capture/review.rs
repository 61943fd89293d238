//! The merge review queue, merge lineage and `UnmergeLead`: a capture that would mix two leads
//! or two consent states is held until someone decides; every merge can be undone, giving
//! back both leads as they were.

use leadflow_e2e::Suite;
use leadflow_proto::capture::v1::{
    CaptureLeadRequest, CaptureLeadResponse, CaptureOutcome, ConsentChannel, EraseLeadRequest,
    LeadInput, ListMergeReviewsRequest, MergeKind, MergeResolution, MergeReview, MergeReviewReason,
    MergeReviewStatus, ResolveMergeReviewRequest, UnmergeLeadRequest,
};
use leadflow_proto::events::v1::{LeadMerged, LeadUnmerged};
use tonic::Code;

use crate::support::{
    Client, assert_no_canary, capture_of, capture_rows, consent, count, get_lead, person,
    violated_fields, wait_for_event,
};

async fn capture(
    client: &mut Client,
    request: CaptureLeadRequest,
) -> anyhow::Result<CaptureLeadResponse> {
    Ok(client.capture_lead(request).await?.into_inner())
}

async fn pending(client: &mut Client) -> anyhow::Result<Vec<MergeReview>> {
    Ok(client
        .list_merge_reviews(ListMergeReviewsRequest::default())
        .await?
        .into_inner()
        .reviews)
}

fn resolve(review_id: &str, resolution: MergeResolution) -> ResolveMergeReviewRequest {
    ResolveMergeReviewRequest {
        review_id: review_id.to_owned(),
        resolution: resolution.into(),
        note: "checked by hand".into(),
    }
}

fn held_for_review(answer: &CaptureLeadResponse) -> anyhow::Result<String> {
    anyhow::ensure!(
        answer.outcome() == CaptureOutcome::InReview && !answer.review_id.is_empty(),
        "expected a held capture, got {:?} (review {:?})",
        answer.outcome(),
        answer.review_id
    );
    Ok(answer.review_id.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capture_matching_two_leads_is_held_merged_on_decision_and_unmerged() -> anyhow::Result<()>
{
    let suite = Suite::start().await?;
    let mut client = suite.capture().await?;
    let mut db = suite.env.connect().await?;
    let by_email = capture(&mut client, capture_of(person("ada@engine.example", ""))).await?;
    let lead_a = by_email.lead.expect("lead").lead_id;
    let by_phone = capture(&mut client, capture_of(person("", "+44 20 7946 0018"))).await?;
    let lead_b = by_phone.lead.expect("lead").lead_id;

    // Email of A, phone of B: merging would mix two leads, so the capture waits.
    let held = capture(
        &mut client,
        capture_of(LeadInput {
            first_name: "Ada".into(),
            ..person("ADA@engine.example", "+442079460018")
        }),
    )
    .await?;
    let review_id = held_for_review(&held)?;
    assert_eq!(held.lead.expect("matched lead").lead_id, lead_a);
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.leads").await?,
        2,
        "nothing stored but the review"
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.touches").await?,
        2
    );

    let [review] = pending(&mut client)
        .await?
        .try_into()
        .map_err(|reviews| anyhow::anyhow!("one pending review, got {reviews:?}"))?;
    assert_eq!(review.review_id, review_id);
    assert_eq!(review.reason(), MergeReviewReason::IdentityConflict);
    assert_eq!(review.status(), MergeReviewStatus::Pending);
    assert_eq!(
        (review.lead_id.as_str(), review.other_lead_id.as_str()),
        (lead_a.as_str(), lead_b.as_str())
    );
    let shown = review
        .capture
        .and_then(|capture| capture.lead)
        .expect("the held request");
    assert_eq!(
        (shown.email.as_str(), shown.first_name.as_str()),
        ("ADA@engine.example", "Ada")
    );

    let decided = client
        .resolve_merge_review(resolve(&review_id, MergeResolution::Merge))
        .await?
        .into_inner();
    let decided_review = decided.review.clone().expect("review");
    assert_eq!(decided_review.status(), MergeReviewStatus::Merged);
    assert_eq!(decided_review.result_lead_id, lead_a);
    assert_eq!(decided_review.note, "checked by hand");
    assert!(
        decided_review.capture.is_none(),
        "the sealed copy is gone once decided"
    );
    let merged = decided.lead.expect("merged lead");
    assert_eq!(merged.lead_id, lead_a);
    assert_eq!(
        (merged.email.as_str(), merged.phone.as_str()),
        ("ada@engine.example", "+442079460018")
    );
    assert_eq!(merged.first_name, "Ada", "filled from the held capture");
    assert_eq!(merged.touch_count, 3, "A, B and the capture");
    let kinds: Vec<(MergeKind, &str)> = merged
        .merges
        .iter()
        .map(|merge| (merge.kind(), merge.review_id.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (MergeKind::Lead, review_id.as_str()),
            (MergeKind::Capture, review_id.as_str())
        ]
    );
    let absorbed = merged.merges[0].clone();
    assert_eq!(absorbed.merged_lead_id, lead_b);
    assert_eq!(absorbed.fields_filled, ["phone"]);
    assert_eq!(decided_review.merge_id, merged.merges[1].merge_id);
    assert_eq!(
        get_lead(&mut client, &lead_b).await?.lead_id,
        lead_a,
        "B's id now answers with A"
    );

    // Deciding again the same way answers as before; deciding otherwise is refused.
    let again = client
        .resolve_merge_review(resolve(&review_id, MergeResolution::Merge))
        .await?
        .into_inner();
    assert_eq!(again.review, decided.review);
    let refused = client
        .resolve_merge_review(resolve(&review_id, MergeResolution::Discard))
        .await
        .expect_err("a decided review cannot be decided otherwise");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(pending(&mut client).await?.is_empty());
    let merged_reviews = client
        .list_merge_reviews(ListMergeReviewsRequest {
            status: MergeReviewStatus::Merged.into(),
            ..ListMergeReviewsRequest::default()
        })
        .await?
        .into_inner()
        .reviews;
    assert_eq!(merged_reviews.len(), 1);
    let (_, event) = wait_for_event::<LeadMerged, _>(&suite, "lead.merged", |event| {
        event.merged_lead_id == lead_b
    })
    .await?;
    assert!(event.merged_lead_was_lead && event.lead_id == lead_a);

    // Undo folding B in: A loses B's phone, B is a lead again and owns its phone again.
    let undone = client
        .unmerge_lead(UnmergeLeadRequest {
            merge_id: absorbed.merge_id.clone(),
        })
        .await?
        .into_inner();
    let (a, b) = (
        undone.lead.expect("lead"),
        undone.restored.expect("restored"),
    );
    assert_eq!(
        (a.lead_id.as_str(), a.phone.as_str(), a.touch_count),
        (lead_a.as_str(), "", 2)
    );
    assert_eq!(a.first_name, "Ada", "what the capture merge filled stays");
    assert!(
        a.merges[0].unmerged_at.is_some(),
        "the lineage keeps the undone merge"
    );
    assert_eq!(
        (b.lead_id.as_str(), b.phone.as_str(), b.touch_count),
        (lead_b.as_str(), "+442079460018", 1)
    );
    let again = client
        .unmerge_lead(UnmergeLeadRequest {
            merge_id: absorbed.merge_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        again.restored.map(|lead| lead.lead_id),
        Some(lead_b.clone())
    );
    let by_phone_again = capture(&mut client, capture_of(person("", "+442079460018"))).await?;
    assert_eq!(by_phone_again.outcome(), CaptureOutcome::Merged);
    assert_eq!(by_phone_again.lead.expect("lead").lead_id, lead_b);
    let (_, unmerged) = wait_for_event::<LeadUnmerged, _>(&suite, "lead.unmerged", |event| {
        event.merge_id == absorbed.merge_id
    })
    .await?;
    let restored = unmerged.restored.expect("restored lead described");
    assert_eq!(
        (unmerged.lead_id.as_str(), restored.lead_id.as_str()),
        (lead_a.as_str(), lead_b.as_str())
    );
    assert!(restored.has_phone && !restored.phone_hash.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capture_with_other_consent_is_held_kept_separate_or_discarded() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let mut client = suite.capture().await?;
    let mut db = suite.env.connect().await?;
    let first = capture(
        &mut client,
        CaptureLeadRequest {
            consent: Some(consent("203.0.113.9", "Firefox")),
            ..capture_of(person("grace@navy.example", ""))
        },
    )
    .await?;
    let lead_id = first.lead.expect("lead").lead_id;
    let email_only = || CaptureLeadRequest {
        consent: Some(leadflow_proto::capture::v1::ConsentInput {
            channels: vec![ConsentChannel::Email.into()],
            ..consent("198.51.100.4", "Safari")
        }),
        ..capture_of(LeadInput {
            company: "Navy".into(),
            ..person("grace@navy.example", "")
        })
    };
    let kept = held_for_review(&capture(&mut client, email_only()).await?)?;
    // Without consent nothing is mixed: it merges.
    let plain = capture(&mut client, capture_of(person("grace@navy.example", ""))).await?;
    assert_eq!(plain.outcome(), CaptureOutcome::Merged);
    let dropped = held_for_review(&capture(&mut client, email_only()).await?)?;

    let reviews = pending(&mut client).await?;
    assert_eq!(reviews.len(), 2);
    assert_eq!(reviews[0].review_id, kept, "oldest first");
    assert_eq!(reviews[0].reason(), MergeReviewReason::ConsentMismatch);
    assert_eq!(reviews[0].lead_consent_channels, ["email", "sms"]);
    assert_eq!(reviews[0].capture_consent_channels, ["email"]);
    let page = client
        .list_merge_reviews(ListMergeReviewsRequest {
            page_size: 1,
            ..ListMergeReviewsRequest::default()
        })
        .await?
        .into_inner();
    assert_eq!(page.reviews.len(), 1);
    let next = client
        .list_merge_reviews(ListMergeReviewsRequest {
            page_size: 1,
            page_token: page.next_page_token,
            ..ListMergeReviewsRequest::default()
        })
        .await?
        .into_inner();
    assert_eq!(next.reviews[0].review_id, dropped);

    // Kept separate: a lead of its own, with its consent, claiming no identity the first holds.
    let separate = client
        .resolve_merge_review(resolve(&kept, MergeResolution::KeepSeparate))
        .await?
        .into_inner();
    assert_eq!(
        separate.review.expect("review").status(),
        MergeReviewStatus::KeptSeparate
    );
    let own = separate.lead.expect("the new lead");
    assert_ne!(own.lead_id, lead_id);
    assert_eq!(
        (own.email.as_str(), own.company.as_str()),
        ("grace@navy.example", "Navy")
    );
    assert_eq!(own.consents.len(), 1);
    assert_eq!(own.consents[0].ip_address, "198.51.100.4");
    let again = capture(&mut client, capture_of(person("grace@navy.example", ""))).await?;
    assert_eq!(
        again.lead.expect("lead").lead_id,
        lead_id,
        "the email still finds the first lead"
    );

    let discarded = client
        .resolve_merge_review(resolve(&dropped, MergeResolution::Discard))
        .await?
        .into_inner();
    assert_eq!(
        discarded.review.expect("review").status(),
        MergeReviewStatus::Discarded
    );
    assert!(discarded.lead.is_none());
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM capture.merge_reviews WHERE data_key IS NOT NULL OR request_sealed IS NOT NULL"
        )
        .await?,
        0,
        "no decided review keeps its sealed copy"
    );
    let first_lead = get_lead(&mut client, &lead_id).await?;
    assert_eq!(
        first_lead.consents.len(),
        1,
        "the first lead got no other consent"
    );
    assert_eq!(first_lead.company, "", "nor the held captures' company");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unmerging_a_recapture_gives_back_both_as_they_were() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let mut client = suite.capture().await?;
    let first = capture(
        &mut client,
        capture_of(person("alan@bletchley.example", "")),
    )
    .await?;
    let lead_id = first.lead.expect("lead").lead_id;
    let merged = capture(
        &mut client,
        capture_of(LeadInput {
            company: "GC&CS".into(),
            last_name: "Turing".into(),
            ..person("alan@bletchley.example", "+44 1908 640404")
        }),
    )
    .await?
    .lead
    .expect("lead");
    assert_eq!(
        (
            merged.phone.as_str(),
            merged.company.as_str(),
            merged.touch_count
        ),
        ("+441908640404", "GC&CS", 2)
    );
    let merge = merged.merges.last().expect("lineage").clone();
    assert_eq!(merge.fields_filled, ["phone", "last_name", "company"]);

    let undone = client
        .unmerge_lead(UnmergeLeadRequest {
            merge_id: merge.merge_id.clone(),
        })
        .await?
        .into_inner();
    let (lead, restored) = (
        undone.lead.expect("lead"),
        undone.restored.expect("restored"),
    );
    assert_eq!(
        (
            lead.phone.as_str(),
            lead.company.as_str(),
            lead.last_name.as_str(),
            lead.touch_count
        ),
        ("", "", "", 1),
        "the lead as before the merge"
    );
    assert_eq!(restored.lead_id, merge.merged_lead_id);
    assert_eq!(
        (
            restored.email.as_str(),
            restored.phone.as_str(),
            restored.company.as_str(),
            restored.last_name.as_str()
        ),
        ("alan@bletchley.example", "+441908640404", "GC&CS", "Turing"),
        "the re-capture as it was captured"
    );
    assert_eq!(restored.touch_count, 1);
    assert!(restored.first_touch.is_some());
    // The phone is the restored lead's now; the email stays with the first lead.
    let by_phone = capture(&mut client, capture_of(person("", "+441908640404"))).await?;
    assert_eq!(by_phone.lead.expect("lead").lead_id, restored.lead_id);
    let by_email = capture(
        &mut client,
        capture_of(person("alan@bletchley.example", "")),
    )
    .await?;
    assert_eq!(by_email.lead.expect("lead").lead_id, lead_id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn erasing_a_lead_erases_its_merged_rows_and_its_held_captures() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let mut client = suite.capture().await?;
    let mut db = suite.env.connect().await?;
    let (email, phone) = ("canary.erase@merge.example", "+14155550177");
    let first = capture(
        &mut client,
        CaptureLeadRequest {
            consent: Some(consent("203.0.113.77", "CanaryAgent/1.0")),
            ..capture_of(person(email, ""))
        },
    )
    .await?;
    let lead_id = first.lead.expect("lead").lead_id;
    let merged = capture(
        &mut client,
        capture_of(LeadInput {
            first_name: "Canaryfirst".into(),
            ..person(email, phone)
        }),
    )
    .await?;
    let record = merged.lead.expect("lead").merges[0].merged_lead_id.clone();
    let held = CaptureLeadRequest {
        consent: Some(leadflow_proto::capture::v1::ConsentInput {
            channels: vec![ConsentChannel::Call.into()],
            ..consent("203.0.113.78", "CanaryAgent/2.0")
        }),
        ..capture_of(person(email, phone))
    };
    held_for_review(&capture(&mut client, held.clone()).await?)?;

    // Erasing through the record's id erases the whole person.
    client
        .erase_lead(EraseLeadRequest {
            lead_id: record,
            reason: "gdpr-request".into(),
        })
        .await?;
    let erased = get_lead(&mut client, &lead_id).await?;
    assert!(erased.erased && erased.email.is_empty());
    assert!(
        pending(&mut client).await?.is_empty(),
        "the held capture was discarded"
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM capture.leads WHERE data_key IS NOT NULL"
        )
        .await?,
        0,
        "every row's data key is destroyed"
    );
    assert_no_canary(
        &capture_rows(&mut db).await?,
        &[
            email,
            phone,
            "14155550177",
            "Canaryfirst",
            "203.0.113.77",
            "CanaryAgent",
        ],
    );
    // The merged row's phone is suppressed too.
    let refused = client
        .capture_lead(capture_of(person("", phone)))
        .await
        .expect_err("the erased person's phone is suppressed");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let unmerge = client
        .unmerge_lead(UnmergeLeadRequest {
            merge_id: erased.merges[0].merge_id.clone(),
        })
        .await
        .expect_err("an erased lead's merges stay");
    assert_eq!(unmerge.code(), Code::FailedPrecondition);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn review_and_unmerge_requests_are_validated() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let mut client = suite.capture().await?;
    let bad = client
        .resolve_merge_review(ResolveMergeReviewRequest {
            review_id: "not-a-uuid".into(),
            resolution: MergeResolution::Unspecified.into(),
            note: "bad\u{0}note".into(),
        })
        .await
        .expect_err("bad input");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&bad), ["review_id", "resolution", "note"]);
    let unknown = client
        .resolve_merge_review(resolve(
            &uuid::Uuid::now_v7().to_string(),
            MergeResolution::Merge,
        ))
        .await
        .expect_err("no such review");
    assert_eq!(unknown.code(), Code::NotFound);
    let bad = client
        .unmerge_lead(UnmergeLeadRequest {
            merge_id: String::new(),
        })
        .await
        .expect_err("bad input");
    assert_eq!(violated_fields(&bad), ["merge_id"]);
    let unknown = client
        .unmerge_lead(UnmergeLeadRequest {
            merge_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("no such merge");
    assert_eq!(unknown.code(), Code::NotFound);
    let bad = client
        .list_merge_reviews(ListMergeReviewsRequest {
            status: 99,
            page_size: 501,
            page_token: "nope".into(),
        })
        .await
        .expect_err("bad input");
    assert_eq!(violated_fields(&bad), ["status", "page_size", "page_token"]);
    Ok(())
}
