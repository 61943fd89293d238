//! The outbox relay and the consumer runner against real Postgres and Redis
//! (reliability §1.1–1.4). Each test has a database and stream prefix of its own.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use leadflow_platform::events::consumer::{Consumer, EventHandler, HandleError};
use leadflow_platform::events::outbox::{Outbox, OutboxWake};
use leadflow_platform::events::relay::Relay;
use leadflow_platform::events::{DLQ_SUFFIX, ENVELOPE_FIELD, types};
use leadflow_proto::events::v1::{Envelope, LeadCaptured, LeadScored};
use support::{Recorder, SCHEMA, Stuck, TestEnv, event_id, lead_captured, wait_until};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const GROUP: &str = "testsvc";

/// A poll interval no test waits out: only a wake can get an event published within
/// [`support::DEADLINE`].
const LONG_POLL: Duration = Duration::from_secs(30);

/// A relay polling every 100 ms that nothing wakes.
fn relay(env: &TestEnv) -> Relay {
    woken_relay(env, Duration::from_millis(100), OutboxWake::new())
}

fn woken_relay(env: &TestEnv, poll_interval: Duration, wake: OutboxWake) -> Relay {
    Relay::new(
        env.pool.clone(),
        env.redis.clone(),
        SCHEMA,
        poll_interval,
        1_000_000,
        wake,
    )
}

/// Runs `relay` until the returned token is cancelled, once its first pass is over.
async fn start(relay: Relay) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let task = tokio::spawn(relay.run(token.clone()));
    // The first pass publishes whatever is there when the relay starts; what a test commits
    // afterwards must be woken or polled for.
    tokio::time::sleep(Duration::from_millis(500)).await;
    (token, task)
}

/// Drains `relay`, bounded: a relay that never empties the outbox fails the test.
async fn drain(relay: &Relay) -> usize {
    tokio::time::timeout(support::DEADLINE, relay.drain())
        .await
        .expect("drain finishes within the deadline")
        .expect("drain")
}

/// An outbox whose commits wake no relay of the test.
fn outbox(stream: &str) -> Outbox {
    woken_outbox(stream, OutboxWake::new())
}

fn woken_outbox(stream: &str, wake: OutboxWake) -> Outbox {
    Outbox::new(SCHEMA, support::PRODUCER, stream.to_owned(), wake)
}

/// Adds one `lead.captured` event in a transaction of its own, committed without waking any
/// relay; returns its event id.
async fn add_committed(env: &TestEnv, outbox: &Outbox) -> String {
    let mut tx = env.pool.begin().await.expect("begin");
    let envelope = add(&mut tx, outbox).await;
    tx.commit().await.expect("commit");
    envelope
}

/// Adds one `lead.captured` event in a transaction of its own, committed through the outbox
/// (which wakes its relay); returns its event id.
async fn add_committed_through(env: &TestEnv, outbox: &Outbox) -> String {
    let mut tx = env.pool.begin().await.expect("begin");
    let envelope = add(&mut tx, outbox).await;
    outbox.commit(tx).await.expect("commit through the outbox");
    envelope
}

async fn add(tx: &mut sqlx::PgConnection, outbox: &Outbox) -> String {
    let lead_id = Uuid::now_v7();
    let payload = LeadCaptured {
        lead_id: lead_id.to_string(),
        channel: "web".to_owned(),
        ..LeadCaptured::default()
    };
    outbox
        .add(tx, types::LEAD_CAPTURED, lead_id, &payload)
        .await
        .expect("add outbox row")
        .event_id
}

fn consumer<H: EventHandler>(
    env: &TestEnv,
    settings: leadflow_platform::events::consumer::ConsumerSettings,
    handler: Arc<H>,
) -> Consumer<H> {
    woken_consumer(env, settings, handler, OutboxWake::new())
}

fn woken_consumer<H: EventHandler>(
    env: &TestEnv,
    settings: leadflow_platform::events::consumer::ConsumerSettings,
    handler: Arc<H>,
    wake: OutboxWake,
) -> Consumer<H> {
    Consumer::new(
        env.pool.clone(),
        env.redis_client.clone(),
        env.redis.clone(),
        SCHEMA,
        settings,
        handler,
        wake,
    )
}

/// Cancels `stop` and waits (bounded) for the runner to return.
async fn stop(stop: &CancellationToken, task: tokio::task::JoinHandle<()>) {
    stop.cancel();
    tokio::time::timeout(support::DEADLINE, task)
        .await
        .expect("runner stops within the deadline after cancellation")
        .expect("runner task does not panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_committed_while_the_relay_is_stopped_arrives_once_after_restart() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let outbox = outbox(&stream);

    let event = add_committed(&env, &outbox).await;
    assert!(
        !env.exists(&stream).await,
        "nothing is published while no relay runs"
    );

    let token = CancellationToken::new();
    let task = tokio::spawn(relay(&env).run(token.clone()));
    wait_until("the stream has the event", || async {
        env.xlen(&stream).await >= 1
    })
    .await;
    stop(&token, task).await;

    // A second instance, started and stopped, and one more drain publish nothing new.
    let token = CancellationToken::new();
    let task = tokio::spawn(relay(&env).run(token.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(&token, task).await;
    assert_eq!(drain(&relay(&env)).await, 0);

    let envelopes = env.envelopes(&stream).await;
    assert_eq!(
        envelopes.len(),
        1,
        "the stream holds the event exactly once"
    );
    assert_eq!(envelopes[0].event_id, event);
    assert_eq!(envelopes[0].event_type, types::LEAD_CAPTURED);
    let (_, published) = env.outbox_row(&event).await;
    assert!(published, "the outbox row is marked published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_publish_each_row_exactly_once() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let outbox = outbox(&stream);
    let mut added = HashSet::new();
    let mut tx = env.pool.begin().await.expect("begin");
    for _ in 0..500 {
        added.insert(add(&mut tx, &outbox).await);
    }
    tx.commit().await.expect("commit");

    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let drains: Vec<_> = (0..2)
        .map(|_| {
            let relay = relay(&env);
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                drain(&relay).await
            })
        })
        .collect();
    let mut published = 0;
    for drain in drains {
        published += tokio::time::timeout(support::DEADLINE, drain)
            .await
            .expect("drain finishes")
            .expect("drain task");
    }

    assert_eq!(
        published, 500,
        "the relays report 500 publications between them"
    );
    let ids = env.event_ids(&stream).await;
    assert_eq!(ids.len(), 500, "the stream has one entry per row");
    let distinct: HashSet<String> = ids.into_iter().collect();
    assert_eq!(distinct, added, "every row is published, none twice");
    assert_eq!(env.unpublished().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_committing_after_a_higher_id_is_still_published() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let outbox = outbox(&stream);
    let relay = relay(&env);

    let mut slow = env.pool.begin().await.expect("begin slow transaction");
    let early = add(&mut slow, &outbox).await;
    let late = add_committed(&env, &outbox).await;
    assert_eq!(drain(&relay).await, 1, "only the committed row is visible");
    slow.commit().await.expect("commit slow transaction");
    assert_eq!(drain(&relay).await, 1, "the slow row is published");

    let (early_id, early_published) = env.outbox_row(&early).await;
    let (late_id, late_published) = env.outbox_row(&late).await;
    assert!(
        early_id < late_id,
        "the slow row holds the lower id ({early_id} vs {late_id})"
    );
    assert!(early_published && late_published);
    let ids = env.event_ids(&stream).await;
    assert_eq!(ids, [late, early], "both rows are on the stream, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_whose_xadd_failed_stay_unpublished_and_the_next_pass_sends_them_once() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let outbox = outbox(&stream);
    let relay = relay(&env);
    let first = add_committed(&env, &outbox).await;
    assert_eq!(drain(&relay).await, 1, "the first row is published");

    // A string where the stream should be: Redis refuses the XADD (WRONGTYPE).
    let mut redis = env.conn();
    let () = redis::cmd("SET")
        .arg(&stream)
        .arg("not a stream")
        .query_async(&mut redis)
        .await
        .expect("set a string key");
    let added = [
        add_committed(&env, &outbox).await,
        add_committed(&env, &outbox).await,
    ];
    let failed = relay.publish_batch().await;
    assert!(failed.is_err(), "the pass fails with the XADD: {failed:?}");
    assert_eq!(
        env.unpublished().await,
        2,
        "the marks of the failed pass were rolled back"
    );

    let () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .expect("delete the string key");
    assert_eq!(drain(&relay).await, 2, "the next pass publishes both rows");
    assert_eq!(drain(&relay).await, 0, "and nothing twice");
    assert_eq!(env.event_ids(&stream).await, added, "in commit order");
    assert!(
        env.outbox_row(&first).await.1,
        "the first row stays published"
    );
    assert_eq!(env.unpublished().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_entry_delivered_twice_is_applied_once() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let envelope = lead_captured();
    env.publish(&stream, &envelope).await;
    let second = env.publish(&stream, &envelope).await;

    let token = CancellationToken::new();
    let handler = Arc::new(Recorder::default());
    let task = tokio::spawn(
        consumer(&env, env.settings(GROUP, "c1", &[&stream]), handler).run(token.clone()),
    );
    wait_until("both entries are delivered and acknowledged", || async {
        env.group(&stream, GROUP)
            .await
            .is_some_and(|group| group.last_delivered_id == second && group.pending == 0)
    })
    .await;
    stop(&token, task).await;

    let effects = env.effects().await;
    assert_eq!(effects.len(), 1);
    assert_eq!(
        effects.get(&event_id(&envelope)),
        Some(&1),
        "the effect happened once"
    );
    assert_eq!(env.processed_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entry_that_always_fails_is_dead_lettered_and_does_not_block_the_next_ones() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let dlq = format!("{stream}{DLQ_SUFFIX}");
    let poison = lead_captured();
    let poison_entry = env.publish(&stream, &poison).await;
    let mut good = Vec::new();
    for _ in 0..5 {
        let envelope = lead_captured();
        env.publish(&stream, &envelope).await;
        good.push(event_id(&envelope));
    }

    let mut settings = env.settings(GROUP, "c1", &[&stream]);
    settings.min_idle = Duration::from_millis(200);
    settings.block = Duration::from_millis(200);
    settings.max_deliveries = 3;
    let handler = Arc::new(Recorder {
        poison: vec![event_id(&poison)],
        ..Recorder::default()
    });
    let token = CancellationToken::new();
    let task = tokio::spawn(consumer(&env, settings, handler.clone()).run(token.clone()));

    wait_until("the good events are applied", || async {
        let effects = env.effects().await;
        good.iter().all(|id| effects.contains_key(id))
    })
    .await;
    wait_until("the poison is dead-lettered", || async {
        env.xlen(&dlq).await >= 1
    })
    .await;
    wait_until("nothing is pending", || async {
        env.pending(&stream, GROUP).await == 0
    })
    .await;
    stop(&token, task).await;

    let effects = env.effects().await;
    assert_eq!(
        effects.len(),
        5,
        "only the good events have effects: {effects:?}"
    );
    assert!(
        effects.values().all(|n| *n == 1),
        "each good event applied once: {effects:?}"
    );
    assert_eq!(
        handler.poison_attempts.load(Ordering::SeqCst),
        3,
        "the poison is handed to the handler max_deliveries times"
    );
    let parked = env.entries(&dlq).await;
    assert_eq!(parked.len(), 1, "the poison is parked once");
    let parked = &parked[0];
    assert_eq!(
        parked.get::<String>("entry_id").as_deref(),
        Some(poison_entry.as_str())
    );
    assert_eq!(
        parked.get::<String>("error_class").as_deref(),
        Some("max_deliveries")
    );
    let deliveries: usize = parked.get("deliveries").expect("deliveries field");
    assert!(
        deliveries > 3,
        "parked after more than max_deliveries deliveries, got {deliveries}"
    );
    let error: String = parked.get("error").expect("error field");
    assert!(
        error.contains("poison event"),
        "the last handler error is kept: {error}"
    );
    assert_eq!(
        parked.get::<Vec<u8>>(ENVELOPE_FIELD),
        Some(prost::Message::encode_to_vec(&poison)),
        "the parked entry carries the original envelope"
    );
    assert_eq!(
        env.processed_count().await,
        5,
        "the poison is not recorded as processed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undecodable_entry_is_dead_lettered_at_once() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let dlq = format!("{stream}{DLQ_SUFFIX}");
    // A varint longer than ten bytes: never a valid protobuf message.
    let garbage = vec![0xff_u8; 16];
    assert!(
        <leadflow_proto::events::v1::Envelope as prost::Message>::decode(garbage.as_slice())
            .is_err()
    );
    let garbage_entry = env.xadd(&stream, types::LEAD_CAPTURED, &garbage).await;
    let good = lead_captured();
    env.publish(&stream, &good).await;

    let mut settings = env.settings(GROUP, "c1", &[&stream]);
    // A min idle far beyond the test: only an immediate dead-lettering can park the entry.
    settings.min_idle = Duration::from_secs(60);
    let token = CancellationToken::new();
    let task =
        tokio::spawn(consumer(&env, settings, Arc::new(Recorder::default())).run(token.clone()));

    wait_until("the good event is applied", || async {
        env.effects().await.contains_key(&event_id(&good))
    })
    .await;
    wait_until("the garbage is dead-lettered", || async {
        env.xlen(&dlq).await >= 1
    })
    .await;
    wait_until("nothing is pending", || async {
        env.pending(&stream, GROUP).await == 0
    })
    .await;
    stop(&token, task).await;

    let parked = env.entries(&dlq).await;
    assert_eq!(parked.len(), 1);
    let parked = &parked[0];
    assert_eq!(
        parked.get::<String>("entry_id").as_deref(),
        Some(garbage_entry.as_str())
    );
    assert_eq!(
        parked.get::<String>("error_class").as_deref(),
        Some("undecodable")
    );
    assert_eq!(parked.get::<usize>("deliveries"), Some(1));
    assert_eq!(parked.get::<Vec<u8>>(ENVELOPE_FIELD), Some(garbage));
    assert_eq!(env.effects().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_entries_of_a_killed_consumer_are_taken_over_via_xautoclaim() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let mut events = HashSet::new();
    for _ in 0..20 {
        let envelope = lead_captured();
        env.publish(&stream, &envelope).await;
        events.insert(event_id(&envelope));
    }

    // Consumer "a" reads all 20 in one batch and hangs inside the handler on the first.
    let stuck = Arc::new(Stuck::default());
    let a_token = CancellationToken::new();
    let a = tokio::spawn(
        consumer(&env, env.settings(GROUP, "a", &[&stream]), stuck.clone()).run(a_token.clone()),
    );
    wait_until("consumer a holds the 20 entries", || async {
        env.pending_of(&stream, GROUP, "a").await.len() == 20
    })
    .await;
    wait_until("consumer a is inside its handler", || async {
        stuck.entered.load(Ordering::SeqCst) >= 1
    })
    .await;
    a.abort();
    let killed = a.await.expect_err("consumer a was aborted");
    assert!(killed.is_cancelled());
    assert_eq!(
        stuck.entered.load(Ordering::SeqCst),
        1,
        "a never got past its first entry"
    );

    let mut settings = env.settings(GROUP, "b", &[&stream]);
    settings.min_idle = Duration::from_millis(300);
    let b_token = CancellationToken::new();
    let b =
        tokio::spawn(consumer(&env, settings, Arc::new(Recorder::default())).run(b_token.clone()));
    wait_until("b applied all 20 events", || async {
        env.effects().await.len() == 20
    })
    .await;
    wait_until("nothing is pending", || async {
        env.pending(&stream, GROUP).await == 0
    })
    .await;
    stop(&b_token, b).await;

    let effects = env.effects().await;
    assert_eq!(effects.keys().copied().collect::<HashSet<_>>(), events);
    assert!(
        effects.values().all(|n| *n == 1),
        "each event applied once: {effects:?}"
    );
    assert_eq!(env.processed_count().await, 20);
    assert!(env.pending_of(&stream, GROUP, "a").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_recreates_its_group_after_redis_loses_it() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let token = CancellationToken::new();
    let task = tokio::spawn(
        consumer(
            &env,
            env.settings(GROUP, "c1", &[&stream]),
            Arc::new(Recorder::default()),
        )
        .run(token.clone()),
    );

    let first = lead_captured();
    env.publish(&stream, &first).await;
    wait_until("the first event is applied", || async {
        env.effects().await.contains_key(&event_id(&first))
    })
    .await;

    let destroyed: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&stream)
        .arg(GROUP)
        .query_async(&mut env.conn())
        .await
        .expect("xgroup destroy");
    assert_eq!(destroyed, 1, "the group existed and is gone");
    let second = lead_captured();
    env.publish(&stream, &second).await;

    wait_until("the second event is applied", || async {
        env.effects().await.contains_key(&event_id(&second))
    })
    .await;
    wait_until("the recreated group has nothing pending", || async {
        env.group(&stream, GROUP)
            .await
            .is_some_and(|group| group.pending == 0)
    })
    .await;
    stop(&token, task).await;

    let effects = env.effects().await;
    assert_eq!(effects.len(), 2);
    assert!(
        effects.values().all(|n| *n == 1),
        "redelivery after recreation is not reapplied: {effects:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_relay_publishes_an_event_committed_through_the_outbox_before_it_polls() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let wake = OutboxWake::new();
    let outbox = woken_outbox(&stream, wake.clone());
    let (token, task) = start(woken_relay(&env, LONG_POLL, wake)).await;

    let event = add_committed_through(&env, &outbox).await;
    wait_until("the event is published", || async {
        env.xlen(&stream).await >= 1
    })
    .await;
    stop(&token, task).await;

    let envelopes = env.envelopes(&stream).await;
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0].event_id, event);
}

/// Spacing of relay passes in the test below: far longer than a pass, and than the checks
/// made inside it.
const MIN_INTERVAL: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_publishes_at_once_when_idle_and_gathers_what_commits_right_after_a_pass() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let wake = OutboxWake::new();
    let outbox = woken_outbox(&stream, wake.clone());
    let relay = woken_relay(&env, LONG_POLL, wake).with_min_interval(MIN_INTERVAL);
    let (token, task) = start(relay).await;
    // Let the starting pass be longer ago than the interval: the relay is idle.
    tokio::time::sleep(MIN_INTERVAL).await;

    let committed = Instant::now();
    let first = add_committed_through(&env, &outbox).await;
    wait_until("the first event is published", || async {
        env.xlen(&stream).await >= 1
    })
    .await;
    assert!(
        committed.elapsed() < MIN_INTERVAL,
        "an idle relay publishes a woken event without waiting ({:?})",
        committed.elapsed()
    );

    // Right after that pass: both wait for the interval to pass, then go out together.
    let second = add_committed_through(&env, &outbox).await;
    let third = add_committed_through(&env, &outbox).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let published_so_far = env.xlen(&stream).await;
    // The first pass started after `committed`: until then plus the interval, no other pass.
    assert!(
        committed.elapsed() < MIN_INTERVAL,
        "checked within the interval ({:?})",
        committed.elapsed()
    );
    assert_eq!(published_so_far, 1, "the relay waits out its interval");
    wait_until("all three are published", || async {
        env.unpublished().await == 0
    })
    .await;
    stop(&token, task).await;

    let published = env.event_ids(&stream).await;
    assert_eq!(published, [first, second, third]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_relay_publishes_another_replicas_events_by_polling() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let (token, task) = start(woken_relay(
        &env,
        Duration::from_millis(200),
        OutboxWake::new(),
    ))
    .await;

    // The other replica's commit wakes that replica's relay, not this one.
    let other_replica = woken_outbox(&stream, OutboxWake::new());
    let event = add_committed_through(&env, &other_replica).await;
    wait_until("the event is published", || async {
        env.xlen(&stream).await >= 1
    })
    .await;
    stop(&token, task).await;

    let envelopes = env.envelopes(&stream).await;
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0].event_id, event);
    assert_eq!(env.unpublished().await, 0);
}

/// Advisory lock the test holds to stop the relay at [`GATE`].
const GATE_LOCK: i64 = 7041;
/// Makes the relay's marking statement wait for the advisory lock [`GATE_LOCK`], then fail
/// the first time: the pass it belongs to ends without claiming again.
const GATE: &str = "
CREATE SEQUENCE testsvc.gate_passes;
CREATE FUNCTION testsvc.gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7041);
    IF nextval('testsvc.gate_passes') = 1 THEN
        RAISE EXCEPTION 'the test gate fails the first marking';
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER gate BEFORE UPDATE ON testsvc.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION testsvc.gate();
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wake_given_while_the_relay_is_mid_pass_is_kept_for_its_next_wait() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    sqlx::raw_sql(GATE)
        .execute(&env.pool)
        .await
        .expect("create the gate");
    let mut gate = env.pool.begin().await.expect("begin gate transaction");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(GATE_LOCK)
        .execute(&mut *gate)
        .await
        .expect("close the gate");
    let wake = OutboxWake::new();
    let outbox = woken_outbox(&stream, wake.clone());
    let (token, task) = start(woken_relay(&env, LONG_POLL, wake)).await;

    let first = add_committed_through(&env, &outbox).await;
    wait_until("the relay's pass waits at the gate", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
        )
        .fetch_one(&env.pool)
        .await
        .expect("read pg_stat_activity")
            == 1
    })
    .await;
    // Committed after the pass claimed its rows: that pass cannot publish it, and fails at
    // the gate without claiming again. Only the wake, kept until the relay next waits, can
    // get it published before the poll interval.
    let second = add_committed_through(&env, &outbox).await;
    gate.rollback().await.expect("open the gate");

    wait_until("both events are published", || async {
        env.unpublished().await == 0
    })
    .await;
    stop(&token, task).await;

    let published: HashSet<String> = env.event_ids(&stream).await.into_iter().collect();
    assert_eq!(
        published,
        HashSet::from([first, second]),
        "both events are on the stream (the first twice: its failed pass had added it)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_a_handler_adds_is_published_before_the_relay_polls() {
    let env = TestEnv::new().await;
    let input = env.stream("capture");
    let output = env.stream("qualification");
    let wake = OutboxWake::new();
    let (relay_token, relay_task) = start(woken_relay(&env, LONG_POLL, wake.clone())).await;
    let handler = Arc::new(Scorer {
        outbox: woken_outbox(&output, wake.clone()),
    });
    let consumer_token = CancellationToken::new();
    let consumer_task = tokio::spawn(
        woken_consumer(&env, env.settings(GROUP, "c1", &[&input]), handler, wake)
            .run(consumer_token.clone()),
    );

    let captured = lead_captured();
    env.publish(&input, &captured).await;
    wait_until("the handler's event is published", || async {
        env.xlen(&output).await >= 1
    })
    .await;
    stop(&consumer_token, consumer_task).await;
    stop(&relay_token, relay_task).await;

    let envelopes = env.envelopes(&output).await;
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0].event_type, types::LEAD_SCORED);
    assert_eq!(envelopes[0].lead_id, captured.lead_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_outbox_has_no_notify_trigger_after_migrating() {
    let env = TestEnv::new().await;

    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT t.tgname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = 'outbox' AND NOT t.tgisinternal",
    )
    .bind(SCHEMA)
    .fetch_all(&env.pool)
    .await
    .expect("read the outbox's triggers");
    let functions: Vec<String> = sqlx::query_scalar(
        "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = $1",
    )
    .bind(SCHEMA)
    .fetch_all(&env.pool)
    .await
    .expect("read the schema's functions");

    assert!(
        triggers.is_empty(),
        "no trigger runs at an outbox insert (its NOTIFY serialized commits): {triggers:?}"
    );
    assert!(
        functions.is_empty(),
        "outbox_notify() is gone: {functions:?}"
    );
}

/// Scores each lead it sees: adds a `lead.scored` event through its outbox inside the
/// consumer's transaction, as qualification does.
struct Scorer {
    outbox: Outbox,
}

#[async_trait::async_trait]
impl EventHandler for Scorer {
    async fn handle(
        &self,
        tx: &mut sqlx::PgConnection,
        _stream: &str,
        envelope: &Envelope,
    ) -> Result<(), HandleError> {
        let lead_id =
            Uuid::parse_str(&envelope.lead_id).map_err(|err| HandleError::Permanent(err.into()))?;
        let scored = LeadScored {
            lead_id: envelope.lead_id.clone(),
            total_score: 50,
            ..LeadScored::default()
        };
        self.outbox
            .add(tx, types::LEAD_SCORED, lead_id, &scored)
            .await
            .map_err(HandleError::Transient)?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_consumer_finishes_its_own_pending_entries_first() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let mut events = HashSet::new();
    for _ in 0..5 {
        let envelope = lead_captured();
        env.publish(&stream, &envelope).await;
        events.insert(event_id(&envelope));
    }
    // No takeover within the test: only reading its own pending entries can finish them.
    let mut settings = env.settings(GROUP, "c1", &[&stream]);
    settings.min_idle = Duration::from_secs(60);

    let stuck = Arc::new(Stuck::default());
    let first =
        tokio::spawn(consumer(&env, settings.clone(), stuck.clone()).run(CancellationToken::new()));
    wait_until("c1 holds the 5 entries", || async {
        env.pending_of(&stream, GROUP, "c1").await.len() == 5
    })
    .await;
    wait_until("c1 is inside its handler", || async {
        stuck.entered.load(Ordering::SeqCst) >= 1
    })
    .await;
    first.abort();
    assert!(first.await.expect_err("c1 was aborted").is_cancelled());

    let token = CancellationToken::new();
    let restarted =
        tokio::spawn(consumer(&env, settings, Arc::new(Recorder::default())).run(token.clone()));
    wait_until("the restarted c1 applied all 5 events", || async {
        env.effects().await.len() == 5
    })
    .await;
    wait_until("nothing is pending", || async {
        env.pending(&stream, GROUP).await == 0
    })
    .await;
    stop(&token, restarted).await;

    let effects = env.effects().await;
    assert_eq!(effects.keys().copied().collect::<HashSet<_>>(), events);
    assert!(
        effects.values().all(|n| *n == 1),
        "each event applied once: {effects:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_events_added_in_one_statement_are_published_once_in_the_given_order() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let outbox = outbox(&stream);
    let envelopes: Vec<_> = (0..500)
        .map(|n| {
            let lead_id = Uuid::now_v7();
            let payload = LeadCaptured {
                lead_id: lead_id.to_string(),
                channel: format!("channel-{n}"),
                ..LeadCaptured::default()
            };
            // Odd rows carry no lead, as rejections do.
            let lead = (n % 2 == 0).then_some(lead_id);
            outbox.envelope(types::LEAD_CAPTURED, lead, &payload)
        })
        .collect();
    let mut tx = env.pool.begin().await.expect("begin");
    outbox
        .add_many(&mut tx, &envelopes)
        .await
        .expect("add many");
    outbox.add_many(&mut tx, &[]).await.expect("add none");
    tx.commit().await.expect("commit");

    assert_eq!(drain(&relay(&env)).await, 500);
    assert_eq!(drain(&relay(&env)).await, 0, "nothing is published twice");
    let published = env.envelopes(&stream).await;
    let sent: Vec<(&str, &str)> = envelopes
        .iter()
        .map(|envelope| (envelope.event_id.as_str(), envelope.lead_id.as_str()))
        .collect();
    let arrived: Vec<(&str, &str)> = published
        .iter()
        .map(|envelope| (envelope.event_id.as_str(), envelope.lead_id.as_str()))
        .collect();
    assert_eq!(
        arrived, sent,
        "every event arrives once, in the given order"
    );
    let decoded = <LeadCaptured as prost::Message>::decode(published[499].payload.as_slice())
        .expect("decode");
    assert_eq!(decoded.channel, "channel-499");
}

/// Event ids of the outbox rows left, oldest first.
async fn outbox_rows(env: &TestEnv) -> Vec<String> {
    sqlx::query_scalar::<_, Uuid>(sqlx::AssertSqlSafe(format!(
        "SELECT event_id FROM {SCHEMA}.outbox ORDER BY id"
    )))
    .fetch_all(&env.pool)
    .await
    .expect("read the outbox")
    .into_iter()
    .map(|id| id.to_string())
    .collect()
}

/// Moves the row of `event_id` `days` into the past: created and (if published) published.
async fn age(env: &TestEnv, event_id: &str, days: i32) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {SCHEMA}.outbox SET created_at = created_at - make_interval(days => $2), \
           published_at = published_at - make_interval(days => $2) WHERE event_id = $1::uuid"
    )))
    .bind(event_id)
    .bind(days)
    .execute(&env.pool)
    .await
    .expect("age the row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn published_rows_past_the_retention_are_swept_and_unpublished_ones_kept() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let outbox = outbox(&stream);
    let relay = relay(&env);
    let old = add_committed(&env, &outbox).await;
    let recent = add_committed(&env, &outbox).await;
    assert_eq!(drain(&relay).await, 2);
    let old_unpublished = add_committed(&env, &outbox).await;
    age(&env, &old, 8).await;
    age(&env, &old_unpublished, 8).await;

    let week_ago = chrono::Utc::now() - chrono::Duration::days(7);
    let swept = relay.sweep_published(week_ago).await.expect("sweep");
    assert_eq!(swept, 1);
    assert_eq!(outbox_rows(&env).await, [recent, old_unpublished.clone()]);
    // However old, an unpublished row is published, never swept.
    assert_eq!(drain(&relay).await, 1);
    let published = env.event_ids(&stream).await;
    assert_eq!(published.last(), Some(&old_unpublished));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_relay_with_a_retention_sweeps_what_is_past_it() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let outbox = outbox(&stream);
    let old = add_committed(&env, &outbox).await;
    let recent = add_committed(&env, &outbox).await;
    assert_eq!(drain(&relay(&env)).await, 2);
    age(&env, &old, 2).await;

    let relay = relay(&env).with_retention(Some(Duration::from_secs(24 * 3_600)));
    let (token, task) = start(relay).await;
    wait_until("the row past the retention is swept", || async {
        outbox_rows(&env).await == [recent.clone()]
    })
    .await;
    stop(&token, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn republishing_since_a_time_sends_those_events_again_in_order() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let outbox = outbox(&stream);
    let relay = relay(&env);
    let before = add_committed(&env, &outbox).await;
    let first = add_committed(&env, &outbox).await;
    let second = add_committed(&env, &outbox).await;
    assert_eq!(drain(&relay).await, 3);
    age(&env, &before, 2).await;

    let since = chrono::Utc::now() - chrono::Duration::days(1);
    let marked = leadflow_platform::events::relay::republish_since(&env.pool, SCHEMA, since)
        .await
        .expect("republish");
    assert_eq!(marked, 2);
    assert_eq!(env.unpublished().await, 2);
    assert_eq!(drain(&relay).await, 2);

    let published = env.event_ids(&stream).await;
    assert_eq!(
        published,
        [
            before,
            first.clone(),
            second.clone(),
            first.clone(),
            second.clone()
        ],
        "the events since then, again, in their order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_committing_far_behind_the_floor_is_published_while_wakes_keep_coming() {
    let env = TestEnv::new().await;
    let stream = env.stream("capture");
    let wake = OutboxWake::new();
    let outbox = woken_outbox(&stream, wake.clone());
    let (token, task) = start(woken_relay(&env, Duration::from_millis(300), wake)).await;

    // A transaction takes its outbox id first and commits last.
    let mut straggler = env.pool.begin().await.expect("begin");
    let late = add(&mut straggler, &outbox).await;
    // More than the floor's margin of newer rows are published meanwhile: woken passes now
    // start above the straggler's id.
    let newer =
        usize::try_from(leadflow_platform::events::relay::FLOOR_MARGIN).expect("margin") + 500;
    let envelopes: Vec<_> = (0..newer).map(|_| lead_captured()).collect();
    let mut tx = env.pool.begin().await.expect("begin");
    outbox
        .add_many(&mut tx, &envelopes)
        .await
        .expect("add rows");
    outbox.commit(tx).await.expect("commit");
    wait_until("the newer rows are published", || async {
        env.event_ids(&stream).await.len() >= newer
    })
    .await;

    // Under load: a woken commit every 5 ms, so the relay's poll timer never fires first.
    let loading = CancellationToken::new();
    let load = {
        let (env_pool, outbox, loading) = (env.pool.clone(), outbox.clone(), loading.clone());
        tokio::spawn(async move {
            let mut added = 0usize;
            while !loading.is_cancelled() {
                let mut tx = env_pool.begin().await.expect("begin");
                add(&mut tx, &outbox).await;
                outbox.commit(tx).await.expect("commit");
                added += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            added
        })
    };
    straggler.commit().await.expect("commit the straggler");
    wait_until(
        "a pass from the start publishes the straggler while wakes keep coming",
        || async { env.event_ids(&stream).await.contains(&late) },
    )
    .await;
    loading.cancel();
    let added = load.await.expect("load task");
    assert!(added > 10, "wakes kept coming ({added} commits)");
    stop(&token, task).await;
    let published = env.event_ids(&stream).await;
    assert_eq!(
        published.iter().filter(|id| **id == late).count(),
        1,
        "published once"
    );
    assert_eq!(
        published.len(),
        newer + 1 + added,
        "every row published once"
    );
}
