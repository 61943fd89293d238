//! capture through its public gRPC interface, against the real binary: dedupe and merge and
//! the dedupe race (R9, I3), imports answered as capturing each row would (and `leadctl
//! import`), idempotent retries (I2), personal data sealed, masked and erased (I8, R13), the
//! merge review queue and unmerge, returns, source rules, consent evidence, the auth matrix
//! (R12), rotation of the key-encryption key of personal data, and activity tracking
//! (`RecordActivity`, visitors linked by captures, `ListActivities`, activities given back by
//! `UnmergeLead`), rate limits per source and per key, and `capture republish`.
//!
//! Direct SQL only asserts what is stored; Redis `XRANGE` only asserts what was published.

#[path = "capture/activity.rs"]
mod activity;
#[path = "capture/activity_history.rs"]
mod activity_history;
#[path = "capture/auth.rs"]
mod auth;
#[path = "capture/idempotency.rs"]
mod idempotency;
#[path = "capture/import.rs"]
mod import;
#[path = "capture/key_rotation.rs"]
mod key_rotation;
#[path = "capture/limits.rs"]
mod limits;
#[path = "capture/merge.rs"]
mod merge;
#[path = "capture/privacy.rs"]
mod privacy;
#[path = "capture/republish.rs"]
mod republish;
#[path = "capture/review.rs"]
mod review;
#[path = "capture/sources.rs"]
mod sources;
#[path = "capture/support.rs"]
mod support;
