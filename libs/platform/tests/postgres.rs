//! The services' pool against a real Postgres whose server drops its connections (what a
//! restart or failover does): connections used moments ago are handed out unpinged and fail
//! as unavailable, are then replaced; idle ones are pinged and replaced before use.

mod support;

use std::time::{Duration, Instant};

use leadflow_platform::postgres::{PING_AFTER_IDLE, begin, is_unavailable};
use sqlx::{Connection, PgConnection, PgPool};
use support::{DEADLINE, TestEnv};

/// Runs one statement on the pool so that a connection is opened, then waits until it is back
/// in the pool (its release ping runs after the statement returns).
async fn warm(pool: &PgPool) {
    let _one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(pool)
        .await
        .expect("a statement on a healthy pool");
    let deadline = Instant::now() + DEADLINE;
    while pool.num_idle() == 0 {
        assert!(Instant::now() < deadline, "the connection never came back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Terminates every other backend of the pool's database, as a server restart would, and
/// waits until they are gone; returns how many there were.
async fn drop_server_side(pool: &PgPool) -> i64 {
    let mut outside = PgConnection::connect_with(&pool.connect_options())
        .await
        .expect("a connection outside the pool");
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut outside)
    .await
    .expect("terminate the pool's backends");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut outside)
        .await
        .expect("count backends");
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} backends outlived termination"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    outside.close().await.expect("close");
    terminated
}

#[tokio::test]
async fn connections_used_moments_ago_fail_as_unavailable_once_each_then_are_replaced() {
    let env = TestEnv::new().await;
    warm(&env.pool).await;
    let pooled = env.pool.size();
    let started = Instant::now();
    assert!(drop_server_side(&env.pool).await >= 1);
    // Each connection the server dropped is handed out unpinged once and fails as
    // unavailable; its release ping then closes it, so the failures stop within the pool's
    // size and a new connection answers.
    let mut failures = 0;
    let one = loop {
        match sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&env.pool)
            .await
        {
            Ok(one) => break one,
            Err(error) => {
                assert!(is_unavailable(&error), "{error:?}");
                failures += 1;
                assert!(
                    failures <= pooled,
                    "{failures} failures with {pooled} connections"
                );
            }
        }
    };
    assert_eq!(one, 1);
    assert!(
        started.elapsed() < PING_AFTER_IDLE,
        "too slow to test the unpinged path: {:?}",
        started.elapsed()
    );
    assert!(
        failures >= 1,
        "a dropped connection went out unpinged and failed"
    );
    drop(env);
}

#[tokio::test]
async fn a_transaction_begun_after_the_server_dropped_the_pool_sees_no_error() {
    let env = TestEnv::new().await;
    // Several connections in the pool, all used moments ago.
    let held: Vec<_> = futures::future::join_all((0..4).map(|_| env.pool.acquire()))
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("four connections");
    drop(held);
    warm(&env.pool).await;
    let started = Instant::now();
    assert!(drop_server_side(&env.pool).await >= 4);
    // BEGIN fails on each dropped connection before the transaction did anything, and is
    // tried again on the next one.
    let mut tx = begin(&env.pool)
        .await
        .expect("begin after the server dropped the pool");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *tx)
        .await
        .expect("a statement in it");
    tx.commit().await.expect("commit");
    assert_eq!(one, 1);
    assert!(
        started.elapsed() < PING_AFTER_IDLE,
        "too slow to test the unpinged path: {:?}",
        started.elapsed()
    );
    drop(env);
}

#[tokio::test]
async fn a_connection_idle_past_the_threshold_is_pinged_and_replaced_before_use() {
    let env = TestEnv::new().await;
    warm(&env.pool).await;
    assert!(drop_server_side(&env.pool).await >= 1);
    tokio::time::sleep(PING_AFTER_IDLE + Duration::from_millis(200)).await;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&env.pool)
        .await
        .expect("the dead idle connection is found by its ping and replaced");
    assert_eq!(one, 1);
    drop(env);
}

#[tokio::test]
async fn only_unreachable_database_errors_are_unavailable() {
    let env = TestEnv::new().await;
    let mut connection = env.pool.acquire().await.expect("acquire");
    sqlx::query("CREATE TEMPORARY TABLE once (id INT PRIMARY KEY)")
        .execute(&mut *connection)
        .await
        .expect("create");
    sqlx::query("INSERT INTO once VALUES (1)")
        .execute(&mut *connection)
        .await
        .expect("insert");
    let duplicate = sqlx::query("INSERT INTO once VALUES (1)")
        .execute(&mut *connection)
        .await
        .expect_err("a unique violation");
    assert!(!is_unavailable(&duplicate), "{duplicate:?}");
    let syntax = sqlx::query("SELEC 1")
        .execute(&mut *connection)
        .await
        .expect_err("a syntax error");
    assert!(!is_unavailable(&syntax), "{syntax:?}");
    drop(connection);
    assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
    assert!(is_unavailable(&sqlx::Error::Io(std::io::Error::from(
        std::io::ErrorKind::ConnectionReset
    ))));
    assert!(!is_unavailable(&sqlx::Error::RowNotFound));
    drop(env);
}
