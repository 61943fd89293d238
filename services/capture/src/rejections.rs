//! `lead.rejected` events, written off the request path.
//!
//! A rejected capture stores nothing, so its answer does not wait for its event: the event is
//! queued in process and a writer adds queued events to the outbox in batches (one statement
//! and one commit for the events queued within 10 ms of the first, or while the previous
//! batch was written). The queue is bounded: when the database is slow or down, rejections
//! wait for room rather than pile up.
//!
//! On shutdown the writer closes the queue and writes what it holds; a rejection answered
//! after that writes its own event. What a crash (not a shutdown) can lose is the events
//! queued and not yet committed, some 10 milliseconds' worth: analytics' count of rejections
//! may then fall short by those. No lead or consent is involved.

use std::time::Duration;

use backon::BackoffBuilder;
use leadflow_proto::events::v1::LeadRejected;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::LeadStore;

/// Rejections queued at most before a rejected capture waits for room.
const QUEUE: usize = 8_192;
/// Events written in one statement at most.
const BATCH: usize = 1_000;
/// How long the writer lets events gather after the first of a batch: a steady trickle of
/// rejections then costs one write (and one relay pass) per interval, not one per rejection
/// taking CPU from the captures being answered.
const LINGER: Duration = Duration::from_millis(10);

/// Queues `lead.rejected` events for the [`RejectionWriter`].
#[derive(Clone)]
pub struct Rejections {
    queue: mpsc::Sender<LeadRejected>,
    leads: LeadStore,
}

/// Writes queued `lead.rejected` events into the outbox.
pub struct RejectionWriter {
    queue: mpsc::Receiver<LeadRejected>,
    leads: LeadStore,
}

impl Rejections {
    /// Returns the queue and the writer that empties it into `leads`' outbox.
    pub fn new(leads: LeadStore) -> (Self, RejectionWriter) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        (
            Self {
                queue: sender,
                leads: leads.clone(),
            },
            RejectionWriter {
                queue: receiver,
                leads,
            },
        )
    }

    /// Records a rejection: queued, or written at once once the writer has stopped.
    pub async fn record(&self, event: LeadRejected) {
        if let Err(mpsc::error::SendError(event)) = self.queue.send(event).await
            && let Err(err) = self.leads.record_rejections(&[event]).await
        {
            tracing::warn!(error = format!("{err:#}"), "record lead.rejected");
        }
    }
}

impl RejectionWriter {
    /// Writes queued events until `stop`, retrying a failed write with backoff; then closes
    /// the queue and writes what is left.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                received = self.queue.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        return;
                    }
                }
            }
            if batch.len() < BATCH {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(LINGER) => {}
                }
                while batch.len() < BATCH
                    && let Ok(event) = self.queue.try_recv()
                {
                    batch.push(event);
                }
            }
            self.write(&mut batch, &stop).await;
        }
        self.queue.close();
        while self.queue.recv_many(&mut batch, BATCH).await > 0 {
            self.write(&mut batch, &stop).await;
        }
    }

    /// Writes `batch` and empties it; retries until written, or once more after `stop`.
    async fn write(&self, batch: &mut Vec<LeadRejected>, stop: &CancellationToken) {
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            match self.leads.record_rejections(batch).await {
                Ok(()) => break,
                Err(err) if stop.is_cancelled() => {
                    tracing::error!(
                        error = format!("{err:#}"),
                        lost = batch.len(),
                        "lead.rejected events not recorded at shutdown"
                    );
                    break;
                }
                Err(err) => {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        queued = batch.len(),
                        "record lead.rejected; retrying"
                    );
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        batch.clear();
    }
}
