//! capture's pure domain logic: no I/O, no tonic, no sqlx.

pub mod lead;
