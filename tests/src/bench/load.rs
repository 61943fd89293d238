//! Load generators: a closed loop (N clients, back to back) and an open model (a constant
//! arrival rate, latency measured from each call's *intended* send time, so a stalled server
//! is not hidden by a generator that waits for it: coordinated-omission correction). Both
//! are bounded in time and count.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::task::JoinSet;

/// One operation of a client: `Ok` when it did what it should.
pub type OpFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
/// Makes the next operation of client number `client`.
pub type Op = Arc<dyn Fn(usize) -> OpFuture + Send + Sync>;

/// Longest any one call may take before it counts as an error.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns an empty latency histogram in microseconds (1 µs – 60 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 60_000_000, 3) {
        Ok(histogram) => histogram,
        Err(_) => unreachable!("1 µs – 60 s at 3 significant digits is a valid histogram"),
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// What a closed-loop phase did.
#[derive(Debug, Clone)]
pub struct Closed {
    /// Calls that succeeded and finished inside the window.
    pub ok: u64,
    pub errors: u64,
    pub window: Duration,
    /// Latency of every successful call, µs.
    pub latency: Histogram<u64>,
    pub first_error: Option<String>,
}

impl Closed {
    /// Successful calls per second inside the window.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }

    pub fn p(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64
    }
}

/// Runs `clients` tasks calling `op` back to back for `window`; a call finishing after the
/// window is not counted in the rate (each task stops starting calls at the deadline).
pub async fn closed_loop(clients: usize, window: Duration, op: Op) -> Closed {
    let start = Instant::now();
    let deadline = start + window;
    let mut tasks = JoinSet::new();
    for client in 0..clients {
        let op = op.clone();
        tasks.spawn(async move {
            let mut latency = histogram();
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            // Bounded in count as well as time.
            for _ in 0..10_000_000u64 {
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                let result = tokio::time::timeout(CALL_TIMEOUT, op(client)).await;
                let done = Instant::now();
                match result {
                    Ok(Ok(())) => {
                        let _recorded = latency.record(micros(done - sent));
                        if done <= deadline {
                            ok += 1;
                        }
                    }
                    Ok(Err(err)) => {
                        errors += 1;
                        first_error.get_or_insert(err);
                    }
                    Err(_) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| "call timed out".to_owned());
                    }
                }
            }
            (ok, errors, first_error, latency)
        });
    }
    let mut total = Closed {
        ok: 0,
        errors: 0,
        window,
        latency: histogram(),
        first_error: None,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((ok, errors, first_error, latency)) => {
                total.ok += ok;
                total.errors += errors;
                if total.first_error.is_none() {
                    total.first_error = first_error;
                }
                let _added = total.latency.add(&latency);
            }
            Err(err) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert_with(|| format!("client task failed: {err}"));
            }
        }
    }
    total
}

/// What an open-model phase did.
#[derive(Debug, Clone)]
pub struct Open {
    pub offered_rate: f64,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    /// Calls still unanswered at the hard deadline (not in the histograms: any is a failure).
    pub unfinished: u64,
    pub duration: Duration,
    /// From intended send time to answer (coordinated-omission corrected), µs.
    pub latency: Histogram<u64>,
    /// From actual send to answer, µs.
    pub service: Histogram<u64>,
    /// How late the generator sent, µs.
    pub lag: Histogram<u64>,
    pub first_error: Option<String>,
}

impl Open {
    /// Calls that failed or were never answered.
    pub fn failures(&self) -> u64 {
        self.errors + self.unfinished
    }

    /// Whether every call was answered without an error (and there were calls).
    pub fn answered_cleanly(&self) -> bool {
        self.failures() == 0 && !self.latency.is_empty()
    }

    /// Answered calls per second over the schedule.
    pub fn achieved_rate(&self) -> f64 {
        self.ok as f64 / self.duration.as_secs_f64()
    }
}

/// Sends `op` at `rate` per second for `duration` (at most `max_in_flight` at once: a call
/// waiting for a slot is late, and its lateness counts), then waits up to [`CALL_TIMEOUT`]
/// for the last answers.
///
/// The schedule is kept by a thread of its own that sleeps with the operating system's
/// timer (tens of µs late) and hands each call to the runtime as its time comes: tokio's
/// timer fires on whole milliseconds, so pacing with it sent calls up to a millisecond or
/// two late, and that lateness, the generator's and not the server's, was counted in every
/// latency measured from the intended send time.
pub async fn open_loop(rate: f64, duration: Duration, max_in_flight: usize, op: Op) -> Open {
    let count = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let start = Instant::now() + Duration::from_millis(20);
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel::<Answer>();
    let runtime = tokio::runtime::Handle::current();
    let pacer = std::thread::Builder::new()
        .name("open-loop-pacer".to_owned())
        .spawn(move || {
            let mut tasks = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
            for index in 0..count {
                let intended = start + interval.mul_f64(index as f64);
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                let (slots, op, answers) = (slots.clone(), op.clone(), answers.clone());
                tasks.push(runtime.spawn(async move {
                    let Ok(_permit) = slots.acquire_owned().await else {
                        return;
                    };
                    let sent = Instant::now();
                    let call = op(usize::try_from(index).unwrap_or(usize::MAX));
                    let outcome = match tokio::time::timeout(CALL_TIMEOUT, call).await {
                        Ok(outcome) => outcome,
                        Err(_) => Err("call timed out".to_owned()),
                    };
                    let done = Instant::now();
                    let _gone = answers.send(Answer {
                        latency: micros(done - intended),
                        service: micros(done - sent),
                        lag: micros(sent.saturating_duration_since(intended)),
                        outcome,
                    });
                }));
            }
            tasks
        });
    let mut result = Open {
        offered_rate: rate,
        sent: 0,
        ok: 0,
        errors: 0,
        unfinished: 0,
        duration,
        latency: histogram(),
        service: histogram(),
        lag: histogram(),
        first_error: None,
    };
    let pacer = match pacer {
        Ok(pacer) => pacer,
        Err(err) => {
            result.first_error = Some(format!("start the pacer thread: {err}"));
            return result;
        }
    };
    result.sent = count;
    let hard_deadline = start + duration + CALL_TIMEOUT + Duration::from_secs(1);
    let mut received = 0;
    while received < count {
        match tokio::time::timeout_at(hard_deadline.into(), answered.recv()).await {
            Ok(Some(answer)) => {
                received += 1;
                absorb(&mut result, answer);
            }
            Ok(None) | Err(_) => break,
        }
    }
    result.unfinished = count - received;
    // The pacer is done by now (its schedule ended before the deadline); what is still
    // running past the deadline is stopped.
    match tokio::task::spawn_blocking(move || pacer.join()).await {
        Ok(Ok(tasks)) => tasks.iter().for_each(tokio::task::JoinHandle::abort),
        Ok(Err(_)) | Err(_) => {
            result
                .first_error
                .get_or_insert_with(|| "the pacer thread panicked".to_owned());
        }
    }
    result
}

/// One answered call of the open model, µs.
struct Answer {
    /// From the intended send time.
    latency: u64,
    /// From the actual send.
    service: u64,
    /// How late the call was sent.
    lag: u64,
    outcome: Result<(), String>,
}

fn absorb(result: &mut Open, answer: Answer) {
    let _recorded = result.latency.record(answer.latency);
    let _recorded = result.service.record(answer.service);
    let _recorded = result.lag.record(answer.lag);
    match answer.outcome {
        Ok(()) => result.ok += 1,
        Err(err) => {
            result.errors += 1;
            result.first_error.get_or_insert(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeping_op(pause: Duration) -> Op {
        Arc::new(move |client| {
            Box::pin(async move {
                tokio::time::sleep(pause).await;
                if client % 10 == 9 {
                    Err(format!("call {client} refused"))
                } else {
                    Ok(())
                }
            })
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_scheduled_call_is_sent_once_and_answered() {
        let open = open_loop(
            400.0,
            Duration::from_millis(250),
            64,
            sleeping_op(Duration::ZERO),
        )
        .await;
        assert_eq!(open.sent, 100);
        assert_eq!((open.ok, open.errors, open.unfinished), (90, 10, 0));
        assert_eq!(open.latency.len(), 100);
        assert_eq!(open.lag.len(), 100);
        assert_eq!(
            open.first_error.as_deref().map(|e| e.ends_with("refused")),
            Some(true)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_waiting_for_a_slot_is_late_from_its_intended_time() {
        // 20 calls due every 5 ms, one slot, 20 ms each: the last one cannot answer before
        // 20 × 20 ms after the start, 305 ms after it was due; measured from its own send it
        // took 20 ms.
        let open = open_loop(
            200.0,
            Duration::from_millis(100),
            1,
            sleeping_op(Duration::from_millis(20)),
        )
        .await;
        assert_eq!((open.sent, open.unfinished), (20, 0));
        assert!(open.latency.max() >= 305_000, "{} µs", open.latency.max());
        assert!(open.lag.max() >= 280_000, "{} µs", open.lag.max());
        assert!(open.service.min() >= 20_000, "{} µs", open.service.min());
    }
}
