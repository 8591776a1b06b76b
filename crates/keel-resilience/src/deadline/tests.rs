use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{HeaderMap, Request};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::BoxError;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.insert(*k, v.parse().unwrap());
    }
    map
}

#[tokio::test(start_paused = true)]
async fn header_round_trip_is_relative_and_rounds_down() {
    let now = Instant::now();
    let deadline = Deadline::at(now + Duration::from_micros(1_500_900));
    let mut map = HeaderMap::new();
    deadline.to_headers_at(&mut map, now);
    assert_eq!(map[DEADLINE_HEADER], "1500");
    // Received 10 s later by a host whose clock is elsewhere: still 1.5 s from arrival.
    let later = now + Duration::from_secs(10);
    let read = Deadline::from_headers(&map, later).unwrap();
    assert_eq!(read.remaining_at(later), Duration::from_millis(1500));
}

#[tokio::test(start_paused = true)]
async fn reads_grpc_timeout_and_takes_the_nearer() {
    let now = Instant::now();
    let cases = [
        ("100m", Some(Duration::from_millis(100))),
        ("2S", Some(Duration::from_secs(2))),
        ("1M", Some(Duration::from_secs(60))),
        ("1H", Some(Duration::from_secs(3600))),
        ("5000u", Some(Duration::from_millis(5))),
        ("7n", Some(Duration::from_nanos(7))),
        ("123456789m", None),
        ("10x", None),
        ("m", None),
        ("-1S", None),
        ("", None),
    ];
    for (value, expected) in cases {
        let map = headers(&[(GRPC_TIMEOUT_HEADER, value)]);
        assert_eq!(
            Deadline::from_headers(&map, now).map(|d| d.remaining_at(now)),
            expected,
            "{value:?}"
        );
    }
    let both = headers(&[(DEADLINE_HEADER, "300"), (GRPC_TIMEOUT_HEADER, "200m")]);
    assert_eq!(
        Deadline::from_headers(&both, now)
            .unwrap()
            .remaining_at(now),
        Duration::from_millis(200)
    );
}

#[tokio::test(start_paused = true)]
async fn malformed_or_absurd_headers_are_ignored() {
    let now = Instant::now();
    for value in [
        "",
        "abc",
        "-5",
        "1.5",
        "12 34",
        "9999999999999",
        "99999999999",
    ] {
        let map = headers(&[(DEADLINE_HEADER, value)]);
        assert_eq!(Deadline::from_headers(&map, now), None, "{value:?}");
    }
    assert_eq!(Deadline::from_headers(&HeaderMap::new(), now), None);
}

#[tokio::test(start_paused = true)]
async fn message_headers_round_trip() {
    let deadline = Deadline::after(Duration::from_secs(3));
    let mut btree = BTreeMap::new();
    deadline.to_message_headers(&mut btree);
    assert_eq!(btree[DEADLINE_HEADER], "3000");
    assert!(btree.contains_key(DEADLINE_UNIX_MS_HEADER));
    let now = Instant::now();
    let read = Deadline::from_message_headers(&btree, now).unwrap();
    let left = read.remaining_at(now);
    assert!(
        left <= Duration::from_secs(3) && left >= Duration::from_millis(2_990),
        "{left:?}"
    );

    let mut hash: HashMap<String, String> = HashMap::new();
    deadline.to_message_headers(&mut hash);
    assert_eq!(hash.header(DEADLINE_HEADER), Some("3000"));
}

#[tokio::test(start_paused = true)]
async fn message_that_waited_in_a_queue_uses_the_absolute_deadline() {
    let now = Instant::now();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let mut headers = BTreeMap::new();
    // Published with 60 s left, but its absolute deadline is only 5 s from now.
    headers.insert(DEADLINE_HEADER.to_owned(), "60000".to_owned());
    headers.insert(
        DEADLINE_UNIX_MS_HEADER.to_owned(),
        (wall + 5_000).to_string(),
    );
    let left = Deadline::from_message_headers(&headers, now)
        .unwrap()
        .remaining_at(now);
    assert!(
        left <= Duration::from_secs(5) && left > Duration::from_secs(4),
        "{left:?}"
    );
    // Already past.
    headers.insert(
        DEADLINE_UNIX_MS_HEADER.to_owned(),
        (wall - 1_000).to_string(),
    );
    assert_eq!(
        Deadline::from_message_headers(&headers, now)
            .unwrap()
            .remaining_at(now),
        Duration::ZERO
    );
}

#[tokio::test(start_paused = true)]
async fn http_request_carries_deadline_in_extensions_and_header() {
    let mut request = Request::new(());
    assert_eq!(request.deadline(), None);
    let deadline = Deadline::after(Duration::from_millis(750));
    request.set_deadline(deadline);
    assert_eq!(request.deadline(), Some(deadline));
    assert_eq!(request.headers()[DEADLINE_HEADER], "750");
    // A request that came off the wire has only the header.
    let mut incoming = Request::new(());
    incoming
        .headers_mut()
        .insert(DEADLINE_HEADER, "250".parse().unwrap());
    assert_eq!(
        incoming.deadline().unwrap().remaining(),
        Duration::from_millis(250)
    );
}

fn slow_service(
    calls: Arc<AtomicU32>,
    work: Duration,
) -> impl Service<Request<()>, Response = (Option<String>, Option<Deadline>), Error = BoxError> + Clone
{
    tower::service_fn(move |request: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let header = request
                .headers()
                .get(DEADLINE_HEADER)
                .map(|v| v.to_str().unwrap().to_owned());
            tokio::time::sleep(work).await;
            Ok::<_, BoxError>((header, Deadline::current()))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn layer_enforces_its_budget() {
    let calls = Arc::new(AtomicU32::new(0));
    let svc = DeadlineLayer::new(Duration::from_secs(1))
        .layer(slow_service(calls.clone(), Duration::from_secs(2)));
    let started = Instant::now();
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    assert!(err.is::<DeadlineExceeded>());
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn layer_enforces_the_nearer_incoming_deadline_and_propagates_it() {
    let calls = Arc::new(AtomicU32::new(0));
    let svc = DeadlineLayer::new(Duration::from_secs(10))
        .layer(slow_service(calls.clone(), Duration::from_millis(100)));
    let mut request = Request::new(());
    request
        .headers_mut()
        .insert(DEADLINE_HEADER, "400".parse().unwrap());
    let (header, current) = svc.clone().oneshot(request).await.unwrap();
    assert_eq!(header.as_deref(), Some("400"));
    assert!(
        current.is_some(),
        "the inner future runs with the deadline as Deadline::current()"
    );

    let mut request = Request::new(());
    request
        .headers_mut()
        .insert(DEADLINE_HEADER, "50".parse().unwrap());
    let started = Instant::now();
    let err = svc.oneshot(request).await.unwrap_err();
    assert!(err.is::<DeadlineExceeded>());
    assert_eq!(started.elapsed(), Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn expired_deadline_fails_without_calling_the_service() {
    let calls = Arc::new(AtomicU32::new(0));
    let svc = DeadlineLayer::propagate().layer(slow_service(calls.clone(), Duration::ZERO));
    let mut request = Request::new(());
    request
        .headers_mut()
        .insert(DEADLINE_HEADER, "0".parse().unwrap());
    let err = svc.oneshot(request).await.unwrap_err();
    assert!(err.is::<DeadlineExceeded>());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn without_any_deadline_the_call_is_unbounded() {
    let calls = Arc::new(AtomicU32::new(0));
    let svc = DeadlineLayer::propagate().layer(slow_service(calls, Duration::from_secs(3600)));
    let (header, current) = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!((header, current), (None, None));
}

/// A → B → C: A gives the call 1 s. B spends 300 ms, then calls C through a client that has no
/// budget of its own; C sees 700 ms left and, spending 200 ms, answers in time. B's second call
/// to C, after another 350 ms, has 150 ms left; C needs 200 ms and is cut off by B's client
/// (not by A), so B still answers.
#[tokio::test(start_paused = true)]
async fn deadline_travels_across_hops() {
    let service_c = tower::service_fn(|request: Request<()>| async move {
        let left = request.headers()[DEADLINE_HEADER]
            .to_str()
            .unwrap()
            .to_owned();
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<_, BoxError>(left)
    });
    // C's server stack reads the header.
    let server_c = DeadlineLayer::propagate().layer(service_c);
    let service_b = tower::service_fn(move |_request: Request<()>| {
        let server_c = server_c.clone();
        async move {
            // B's outgoing client: no budget, inherits Deadline::current().
            let client =
                DeadlineLayer::propagate().layer(tower::service_fn(move |outgoing: Request<()>| {
                    // "Send" it: only the headers cross the wire.
                    let mut wire = Request::new(());
                    *wire.headers_mut() = outgoing.headers().clone();
                    server_c.clone().oneshot(wire)
                }));
            tokio::time::sleep(Duration::from_millis(300)).await;
            let first = client.clone().oneshot(Request::new(())).await?;
            tokio::time::sleep(Duration::from_millis(350)).await;
            let second = client.oneshot(Request::new(())).await;
            Ok::<_, BoxError>((first, second.map_err(|e| e.to_string())))
        }
    });
    let service_a = DeadlineLayer::new(Duration::from_secs(1)).layer(service_b);
    let (first, second) = service_a.oneshot(Request::new(())).await.unwrap();
    assert_eq!(first, "700");
    assert_eq!(second, Err("deadline exceeded".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn scope_keeps_the_nearer_deadline() {
    let near = Deadline::after(Duration::from_secs(1));
    let far = Deadline::after(Duration::from_secs(5));
    near.scope(async move {
        assert_eq!(Deadline::current(), Some(near));
        far.scope(async move { assert_eq!(Deadline::current(), Some(near)) })
            .await;
    })
    .await;
    assert_eq!(Deadline::current(), None);
}

proptest::proptest! {
    #[test]
    fn header_parsers_never_panic(text in "\\PC{0,20}") {
        let _ = parse_millis(&text);
        let _ = parse_grpc_timeout(&text);
        let mut map = BTreeMap::new();
        map.insert(DEADLINE_UNIX_MS_HEADER.to_owned(), text);
        let _ = Deadline::from_message_headers(&map, Instant::now());
    }
}
