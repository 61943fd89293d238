//! Storage in the `capture` schema: leads with sealed personal data, touches, consent
//! evidence, sources, idempotent answers and suppressions, each change with its events in
//! the same transaction.

pub mod leads;
pub mod sources;

pub use leads::{
    CaptureRequest, Captured, ConsentRow, LeadStore, LeadView, Outcome, ReturnOutcome, StoreError,
    TouchRow,
};
pub use sources::SourceStore;
