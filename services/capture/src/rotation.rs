//! Key rotation (`capture rotate-keys`): re-wraps every stored data key under the primary
//! key-encryption key, so that previous keys can then be dropped; or, as a dry run, reports
//! how many data keys each key wrapped.
//!
//! It runs beside a serving capture: each batch is a short transaction that skips rows a
//! capture holds, and a column gets further passes until only keys that cannot be unwrapped
//! are left. Interrupted, it keeps what it committed; run again, it goes on from there.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use leadflow_platform::pii::{Keyring, WrappedBy};

use leadflow_platform::pii::PiiError;
use uuid::Uuid;

use crate::store::data_keys::KeyCount;
use crate::store::{DataKeyStore, WrappedKeyColumn};

/// Passes over a column before rows still not under the primary key count as left behind.
const MAX_PASSES: u32 = 5;
/// Pause before another pass, for the captures holding the skipped rows to finish.
const PASS_PAUSE: Duration = Duration::from_millis(500);
/// Least time between two progress lines of one column.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Rows named as examples of each reason a data key could not be unwrapped.
const EXAMPLES: usize = 5;

/// How to run the rotation.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Only count data keys per key; change nothing.
    pub dry_run: bool,
    /// Rows per transaction.
    pub batch_size: u32,
}

/// What a run did (or, in a dry run, would do), summed over every column.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Data keys now wrapped by the primary key that were not before.
    pub rewrapped: u64,
    /// Data keys the primary key wrapped already.
    pub already_current: u64,
    /// Data keys that no configured key unwraps; left as they are.
    pub failed: u64,
    /// Data keys still under another key after every pass (held by captures throughout, or
    /// written meanwhile by a capture still running with the old primary key).
    pub left_behind: u64,
    /// In a dry run: data keys a run would re-wrap (or fail on).
    pub to_rewrap: u64,
}

/// Rotates (or with `dry_run`, counts) the data keys of `columns`, reporting to `out`.
pub async fn rotate_keys(
    store: &DataKeyStore,
    columns: &[WrappedKeyColumn],
    options: Options,
    out: &mut impl Write,
) -> anyhow::Result<Totals> {
    let keyring = store.keyring();
    let previous: Vec<String> = keyring
        .previous_key_ids()
        .iter()
        .map(ToString::to_string)
        .collect();
    writeln!(
        out,
        "primary key {}; previous keys: {}",
        keyring.primary_key_id(),
        if previous.is_empty() {
            "none".to_owned()
        } else {
            previous.join(", ")
        }
    )?;
    let mut totals = Totals::default();
    for &column in columns {
        let counts = store.count_by_key(column).await?;
        report_counts(out, keyring, column, &counts)?;
        let already_current = current(keyring, &counts);
        totals.already_current += already_current;
        if options.dry_run {
            totals.to_rewrap += not_current(keyring, &counts);
            continue;
        }
        let outcome = rotate_column(store, column, options.batch_size, out).await?;
        writeln!(
            out,
            "{column}: re-wrapped {}, already current {already_current}, failed {}",
            outcome.rewrapped, outcome.failed,
        )?;
        totals.rewrapped += outcome.rewrapped;
        totals.failed += outcome.failed;
        totals.left_behind += outcome.left_behind;
    }
    if options.dry_run {
        writeln!(
            out,
            "dry run: {} data keys to re-wrap, {} already under the primary key",
            totals.to_rewrap, totals.already_current
        )?;
    } else {
        writeln!(
            out,
            "done: re-wrapped {}, already current {}, failed {}",
            totals.rewrapped, totals.already_current, totals.failed
        )?;
    }
    Ok(totals)
}

/// What rotating one column did.
#[derive(Debug, Default)]
struct ColumnOutcome {
    rewrapped: u64,
    failed: u64,
    left_behind: u64,
}

async fn rotate_column(
    store: &DataKeyStore,
    column: WrappedKeyColumn,
    batch_size: u32,
    out: &mut impl Write,
) -> anyhow::Result<ColumnOutcome> {
    let mut outcome = ColumnOutcome::default();
    let mut last_progress = Instant::now();
    for pass in 1..=MAX_PASSES {
        let mut failures = Failures::default();
        let mut after = None;
        loop {
            let batch = store.rewrap_batch(column, after, batch_size).await?;
            if batch.scanned == 0 {
                break;
            }
            after = batch.last_id;
            outcome.rewrapped += batch.rewrapped;
            for (row_id, err) in batch.failed {
                failures.add(row_id, &err);
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                writeln!(out, "{column}: re-wrapped {} so far", outcome.rewrapped)?;
                last_progress = Instant::now();
            }
        }
        let counts = store.count_by_key(column).await?;
        let remaining = not_current(store.keyring(), &counts);
        outcome.failed = failures.count;
        outcome.left_behind = remaining.saturating_sub(outcome.failed);
        if outcome.left_behind == 0 {
            failures.report(out, column)?;
            return Ok(outcome);
        }
        if pass < MAX_PASSES {
            writeln!(
                out,
                "{column}: {} data keys were held by captures or written under another key during pass {pass}; another pass",
                outcome.left_behind
            )?;
            tokio::time::sleep(PASS_PAUSE).await;
        } else {
            failures.report(out, column)?;
        }
    }
    Ok(outcome)
}

/// Prints how many data keys each key wrapped in `column`.
fn report_counts(
    out: &mut impl Write,
    keyring: &Keyring,
    column: WrappedKeyColumn,
    counts: &[KeyCount],
) -> anyhow::Result<()> {
    let total: i64 = counts.iter().map(|count| count.count).sum();
    writeln!(out, "{column}: {total} data keys")?;
    for count in counts {
        let (key, state) = match count.wrapped_by {
            Some(WrappedBy::Key(id)) if id == keyring.primary_key_id() => {
                (id.to_string(), "primary")
            }
            Some(WrappedBy::Key(id)) if keyring.holds(id) => (id.to_string(), "previous"),
            Some(WrappedBy::Key(id)) => (id.to_string(), "NOT CONFIGURED: cannot be unwrapped"),
            Some(WrappedBy::Legacy) => ("legacy".to_owned(), "no key id, from before key ids"),
            None => ("damaged".to_owned(), "in no known layout"),
        };
        writeln!(out, "  {key:<16}  {:>10}  {state}", count.count)?;
    }
    Ok(())
}

/// The data keys of one pass that could not be unwrapped: how many, by reason, with a few row
/// ids each (ids only, never data), so a pass over millions of them stays small.
#[derive(Debug, Default)]
struct Failures {
    count: u64,
    by_reason: BTreeMap<String, (u64, Vec<Uuid>)>,
}

impl Failures {
    fn add(&mut self, row_id: Uuid, err: &PiiError) {
        self.count += 1;
        let (count, examples) = self.by_reason.entry(err.to_string()).or_default();
        *count += 1;
        if examples.len() < EXAMPLES {
            examples.push(row_id);
        }
    }

    fn report(&self, out: &mut impl Write, column: WrappedKeyColumn) -> anyhow::Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        writeln!(
            out,
            "{column}: {} data keys cannot be unwrapped with the configured keys and were left as they are:",
            self.count
        )?;
        for (reason, (count, examples)) in &self.by_reason {
            let examples: Vec<String> = examples.iter().map(Uuid::to_string).collect();
            writeln!(
                out,
                "  {count} × {reason} (e.g. {} {})",
                column.id,
                examples.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Returns how many data keys of `counts` the primary key wrapped.
fn current(keyring: &Keyring, counts: &[KeyCount]) -> u64 {
    counts
        .iter()
        .filter(|count| count.wrapped_by == Some(WrappedBy::Key(keyring.primary_key_id())))
        .map(|count| u64::try_from(count.count).unwrap_or_default())
        .sum()
}

/// Returns how many data keys of `counts` the primary key did not wrap.
fn not_current(keyring: &Keyring, counts: &[KeyCount]) -> u64 {
    let total: u64 = counts
        .iter()
        .map(|count| u64::try_from(count.count).unwrap_or_default())
        .sum();
    total - current(keyring, counts)
}
