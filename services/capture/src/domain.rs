//! capture's pure domain logic: no I/O, no tonic, no sqlx.

pub mod activity;
pub mod evidence;
pub mod lead;
pub mod phone_patterns;
pub mod source;
