//! The Redis store and the fail modes through the public API, against a real Redis server
//! when `KEEL_TEST_REDIS_URL` is set (`.ci/run` sets it), and against unreachable or
//! silent servers always.

use std::time::Duration;

use keel_ratelimit::{Decision, FailMode, Rate, RateLimiter, RedisStore, StoreError};
use tokio::time::Instant;

const REDIS_URL_VAR: &str = "KEEL_TEST_REDIS_URL";
const TIMEOUT: Duration = Duration::from_millis(500);

/// The Redis URL for tests, or `None` after printing a notice that the test is skipped.
fn redis_url(test: &str) -> Option<String> {
    match std::env::var(REDIS_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("NOTICE: skipping `{test}`: {REDIS_URL_VAR} is not set");
            None
        }
    }
}

/// A route id no other test or run uses, so buckets never collide.
fn unique_route(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("keel-test-{test}-{}-{nanos:x}", std::process::id())
}

async fn limiter(url: &str, mode: FailMode) -> RateLimiter {
    let store = RedisStore::connect(url, TIMEOUT).await.unwrap();
    assert!(store.is_connected(), "cannot reach Redis at {url}");
    RateLimiter::new(store, mode)
}

fn rate(replenish: u32, burst: u32, requested: u32) -> Rate {
    Rate::new(replenish, burst, requested).unwrap()
}

/// Deletes the buckets a test made (their TTL would keep them up to a day).
async fn delete_buckets(url: &str, buckets: &[(&str, &str)]) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = buckets
        .iter()
        .flat_map(|(route, key)| RedisStore::keys(route, key))
        .collect();
    let _: i64 = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

fn assert_answered(d: &Decision) {
    assert!(!d.degraded, "the store failed: {d:?}");
}

#[tokio::test]
async fn two_gateways_share_one_budget() {
    let Some(url) = redis_url("two_gateways_share_one_budget") else {
        return;
    };
    let route = unique_route("share");
    // Two instances with their own connections, as two gateway processes would have.
    let a = limiter(&url, FailMode::Closed).await;
    let b = limiter(&url, FailMode::Closed).await;

    // Ten requests of 1 000 tokens fit; refilling one takes 1 000 s, so timing cannot matter.
    let r = rate(1, 10_000, 1_000);
    let mut allowed = Vec::new();
    for i in 0..20 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        let d = gateway.check(&route, "client-1", &r).await;
        assert_answered(&d);
        if d.allowed {
            allowed.push(d.remaining);
        } else {
            assert_eq!(d.remaining, 0);
            assert!(d.retry_after.is_some_and(|w| w > Duration::from_secs(900)));
        }
    }
    assert_eq!(
        allowed,
        vec![
            9_000, 8_000, 7_000, 6_000, 5_000, 4_000, 3_000, 2_000, 1_000, 0
        ]
    );

    // Another key and another route have budgets of their own.
    assert!(a.check(&route, "client-2", &r).await.allowed);
    let other = format!("{route}-other");
    assert!(b.check(&other, "client-1", &r).await.allowed);
    delete_buckets(
        &url,
        &[
            (&route, "client-1"),
            (&route, "client-2"),
            (&other, "client-1"),
        ],
    )
    .await;
}

#[tokio::test]
async fn concurrent_checks_from_two_gateways_allow_exactly_the_budget() {
    let Some(url) = redis_url("concurrent_checks_from_two_gateways_allow_exactly_the_budget")
    else {
        return;
    };
    let route = unique_route("concurrent");
    let gateways = [
        limiter(&url, FailMode::Closed).await,
        limiter(&url, FailMode::Closed).await,
    ];
    let r = rate(1, 50_000, 1_000);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let gateway = gateways[i % 2].clone();
        let route = route.clone();
        tasks.spawn(async move {
            let mut allowed = 0;
            for _ in 0..20 {
                let d = gateway.check(&route, "hot", &r).await;
                assert!(!d.degraded, "{d:?}");
                allowed += usize::from(d.allowed);
            }
            allowed
        });
    }
    let mut allowed = 0;
    while let Some(n) = tasks.join_next().await {
        allowed += n.unwrap();
    }
    assert_eq!(allowed, 50);
    delete_buckets(&url, &[(&route, "hot")]).await;
}

#[tokio::test]
async fn tokens_refill_from_the_server_clock() {
    let Some(url) = redis_url("tokens_refill_from_the_server_clock") else {
        return;
    };
    let route = unique_route("refill");
    let limiter = limiter(&url, FailMode::Closed).await;
    // Ten tokens a second: one every 100 ms. Upper bounds count the tokens the time taken
    // refills (a stalled machine refills more), so they hold however slow the run is.
    let r = rate(10, 10, 1);
    let refill_bound = |since: Instant| (since.elapsed().as_secs_f64() * 10.0).ceil() as i32 + 1;
    let drain_started = Instant::now();
    let mut allowed = 0;
    while limiter.check(&route, "k", &r).await.allowed {
        allowed += 1;
        assert!(
            allowed <= 10 + refill_bound(drain_started),
            "the bucket never ran dry"
        );
    }
    assert!(allowed >= 10, "{allowed} allowed at once");
    let denied_at = Instant::now();
    let denied = limiter.check(&route, "k", &r).await;
    assert_answered(&denied);
    let wait = denied.retry_after.expect("a wait helps");
    assert!(wait <= Duration::from_millis(100), "retry after {wait:?}");
    assert_eq!(
        denied.headers().find(|(name, _)| *name == "Retry-After"),
        Some(("Retry-After", "1".to_owned()))
    );

    // 350 ms refill three tokens, more only as far as the calls themselves took time.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let mut refilled = 0;
    while limiter.check(&route, "k", &r).await.allowed {
        refilled += 1;
        assert!(
            refilled <= refill_bound(denied_at),
            "refilled past the rate"
        );
    }
    assert!(refilled >= 3, "{refilled} refilled in 350 ms");
}

#[tokio::test]
async fn buckets_use_springs_keys_and_expire() {
    let Some(url) = redis_url("buckets_use_springs_keys_and_expire") else {
        return;
    };
    let route = unique_route("keys");
    let limiter = limiter(&url, FailMode::Closed).await;
    let d = limiter.check(&route, "user-7", &rate(5, 20, 3)).await;
    assert_answered(&d);
    assert!(d.allowed);
    assert_eq!(d.remaining, 17);

    let [tokens_key, timestamp_key] = RedisStore::keys(&route, "user-7");
    assert_eq!(
        tokens_key,
        format!("request_rate_limiter.{{{route}.user-7}}.tokens")
    );
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (tokens, timestamp, ttl): (f64, f64, i64) = redis::pipe()
        .get(&tokens_key)
        .get(&timestamp_key)
        .ttl(&tokens_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((17.0..17.1).contains(&tokens), "tokens {tokens}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (timestamp - now).abs() < 60.0,
        "timestamp {timestamp} is not in seconds"
    );
    // Twice the fill time: 2 × 20 / 5 = 8 s.
    assert!((1..=8).contains(&ttl), "ttl {ttl}");

    // Burst 0 denies and writes nothing, as Spring's script.
    let deny_all = rate(5, 0, 1);
    let d = limiter.check(&route, "nobody", &deny_all).await;
    assert_answered(&d);
    assert!(!d.allowed);
    assert_eq!((d.remaining, d.retry_after), (0, None));
    let [nobody, _] = RedisStore::keys(&route, "nobody");
    let exists: bool = redis::cmd("EXISTS")
        .arg(&nobody)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn unreachable_redis_fails_open_or_closed_quickly() {
    // Port 1: nothing listens, the connection is refused at once.
    let url = "redis://127.0.0.1:1";
    let r = rate(1, 1, 1);
    // A long timeout: a refusal must not wait for it (waiting would take 4 × 5 s).
    let timeout = Duration::from_secs(5);
    for mode in [FailMode::Open, FailMode::Closed] {
        let started = Instant::now();
        let store = RedisStore::connect(url, timeout).await.unwrap();
        assert!(!store.is_connected());
        let limiter = RateLimiter::new(store, mode);
        for _ in 0..3 {
            let d = limiter.check("route", "k", &r).await;
            assert!(d.degraded);
            assert_eq!(d.allowed, mode == FailMode::Open, "{mode:?}");
            assert_eq!((d.remaining, d.retry_after), (-1, None));
        }
        let took = started.elapsed();
        assert!(
            took < timeout,
            "{mode:?}: connect and three checks took {took:?}"
        );
    }
}

#[tokio::test]
async fn a_silent_server_times_out_within_the_timeout() {
    // Accepts connections and never answers: a hung or black-holed Redis.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });

    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let store = RedisStore::connect(&url, timeout).await.unwrap();
    let connect_took = started.elapsed();
    // Upper bounds leave room for a stalled machine: without the timeout these would hang.
    let bound = timeout + Duration::from_secs(2);
    assert!(connect_took < bound, "connect took {connect_took:?}");
    let limiter = RateLimiter::new(store, FailMode::Closed);

    let r = rate(1, 1, 1);
    for _ in 0..3 {
        let started = Instant::now();
        let d = limiter.check("route", "k", &r).await;
        let took = started.elapsed();
        assert!(d.degraded && !d.allowed, "{d:?}");
        assert!(took < bound, "a check took {took:?}");
    }
    held.abort();
}

#[tokio::test]
async fn a_hung_script_times_out_and_the_connection_is_replaced() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Completes the client's connection set-up (`CLIENT SETINFO` → `+OK`) and then never
    // answers: a Redis stuck in a long command.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::clone(&connections);
    let server = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let setinfo = buf[..n].windows(7).filter(|w| w == b"SETINFO").count();
                    for _ in 0..setinfo {
                        if socket.write_all(b"+OK\r\n").await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });

    let timeout = Duration::from_millis(200);
    let store = RedisStore::connect(&url, timeout).await.unwrap();
    assert!(
        store.is_connected(),
        "the fake server's set-up was not accepted"
    );
    let limiter = RateLimiter::new(store.clone(), FailMode::Open);
    let r = rate(1, 1, 1);
    for round in 1..=2 {
        let started = Instant::now();
        let d = limiter.check("route", "k", &r).await;
        let took = started.elapsed();
        assert!(d.degraded && d.allowed, "{d:?}");
        // Without the timeout this would hang; the upper bound leaves room for a stall.
        assert!(
            took >= timeout && took < timeout + Duration::from_secs(2),
            "round {round} took {took:?}"
        );
        assert!(!store.is_connected(), "a timed-out connection is kept");
    }
    // The second check connected afresh.
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    server.abort();
}

#[tokio::test]
async fn invalid_url_is_an_error() {
    let err = RedisStore::connect("http://localhost", TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidUrl(_)), "{err:?}");
}
