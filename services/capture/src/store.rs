//! Storage in the `capture` schema: leads with sealed personal data, touches, consent
//! evidence, sources, idempotent answers and suppressions, activities and visitors, each change with its events in
//! the same transaction; and the wrapped data keys of all of them, for key rotation.

pub mod data_keys;
pub mod leads;
pub mod sources;

pub use data_keys::{DataKeyStore, WRAPPED_KEY_COLUMNS, WrappedKeyColumn};
pub use leads::{
    CaptureRequest, Captured, ConsentRow, LeadStore, LeadView, Outcome, Recorded, ReturnOutcome,
    StoreError, StoredActivity, TouchRow,
};
pub use sources::SourceStore;
