//! qualification's pure domain logic: stages and scoring; no I/O.

pub mod scoring;
pub mod stage;
