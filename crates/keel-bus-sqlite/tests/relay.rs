//! Outbox relay leadership: one relay publishes an outbox at a time, across processes, on
//! SQLite (a lease row) and PostgreSQL (an advisory lock re-verified with every batch, one
//! per outbox table); a relay whose `LISTEN` connection fails reopens it. PostgreSQL parts
//! run when `KEEL_TEST_DATABASE_URL` is set.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use keel_bus_sqlite::{Settings, SqliteBus};
use keel_messaging::{Bus, Delivery, Message, Outbox, Subscription, handler_fn};
use keel_store::{Store, testing::TempDir};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn fast() -> Settings {
    Settings {
        poll: Duration::from_millis(50),
        ..Settings::default()
    }
}

type Arrivals = Arc<Mutex<HashMap<i64, Instant>>>;

/// Subscribes a recorder of first arrivals (message `n` → when) to `dest`.
async fn record(bus: &SqliteBus, dest: &str) -> (keel_messaging::Consumer, Arrivals) {
    let seen: Arrivals = Arc::default();
    let s = seen.clone();
    let c = bus
        .subscribe(
            Subscription::new(dest, "g"),
            handler_fn(move |d: Delivery| {
                let s = s.clone();
                async move {
                    let n = d.message.payload["n"].as_i64().unwrap_or(-1);
                    s.lock().unwrap().entry(n).or_insert_with(Instant::now);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    (c, seen)
}

async fn wait_for(what: &str, secs: u64, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("not within {secs} s: {what}");
}

async fn send(store: &Store, outbox: &Outbox, dest: &str, ns: std::ops::Range<i64>) {
    let mut tx = store.begin().await.unwrap();
    for n in ns {
        let m = Message::new(dest, json!({ "n": n })).with_key(format!("k{}", n % 5));
        outbox.send(&mut tx, &m).await.unwrap();
    }
    tx.commit().await.unwrap();
}

/// (rows, distinct message ids) the bus holds for `dest`: any difference is a duplicate publish.
async fn published(bus: &SqliteBus, dest: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT message_id) FROM bus_messages WHERE destination = $1",
    )
    .bind(dest)
    .fetch_one(bus.store().pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn sqlite_relays_of_two_processes_sharing_a_file_do_not_both_publish() {
    let dir = TempDir::new("relay-lease");
    let bus = SqliteBus::open_with(&dir.sqlite_url("bus.db"), fast())
        .await
        .unwrap();
    let (c, seen) = record(&bus, "lease").await;
    // Two spellings of one file: two handles that share no in-process state, as two
    // processes would — only the file can keep their relays apart.
    let url_a = dir.sqlite_url("svc.db");
    let url_b = format!("sqlite://{}/./svc.db", dir.0.display());
    let store_a = Store::connect(&url_a).await.unwrap();
    let store_b = Store::connect(&url_b).await.unwrap();
    let outbox_a = Outbox::new(store_a.clone()).await.unwrap();
    let outbox_b = Outbox::new(store_b.clone()).await.unwrap();
    let bus_arc: Arc<dyn Bus> = Arc::new(bus.clone());
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let relay_a = tokio::spawn(outbox_a.clone().run_relay(bus_arc.clone(), stop_a.clone()));
    send(&store_a, &outbox_a, "lease", 0..1).await;
    wait_for("A relays", 10, || seen.lock().unwrap().contains_key(&0)).await;
    tokio::spawn(outbox_b.clone().run_relay(bus_arc, stop_b.clone()));

    // Both processes write (and wake their own relay at each commit).
    for batch in 0..20 {
        let (store, outbox) = if batch % 2 == 0 {
            (&store_a, &outbox_a)
        } else {
            (&store_b, &outbox_b)
        };
        send(store, outbox, "lease", 1 + batch * 10..1 + (batch + 1) * 10).await;
    }
    wait_for("all 201", 20, || seen.lock().unwrap().len() == 201).await;
    let (rows, distinct) = published(&bus, "lease").await;
    assert_eq!(
        (rows, distinct),
        (201, 201),
        "one relay at a time: nothing published twice"
    );
    let (holder,): (String,) = sqlx::query_as("SELECT holder FROM keel_outbox_relay")
        .fetch_one(store_a.pool())
        .await
        .unwrap();
    assert!(
        holder.starts_with(&format!("{}:", std::process::id())),
        "the lease names the leader's process: {holder}"
    );

    // A stopping leader hands over at once: the standby publishes well before the lease
    // (5 s) would have lapsed.
    stop_a.cancel();
    relay_a.await.unwrap();
    let (leases,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM keel_outbox_relay")
        .fetch_one(store_a.pool())
        .await
        .unwrap();
    assert_eq!(leases, 0, "the stopped leader gave its lease back");
    let t = Instant::now();
    send(&store_b, &outbox_b, "lease", 201..211).await;
    wait_for("the standby took over", 10, || {
        seen.lock().unwrap().len() == 211
    })
    .await;
    // The standby's next look (every second), not the lease's lapse; room left for a stall.
    assert!(
        t.elapsed() < Duration::from_millis(4000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(published(&bus, "lease").await, (211, 211));
    stop_b.cancel();
    c.stop().await;
}

#[tokio::test]
async fn postgres_services_sharing_a_database_each_have_an_active_relay() {
    let dir = TempDir::new("relay-schemas");
    let Some((store_a, _)) = keel_store::testing::fresh_postgres("relays_per_schema")
        .await
        .unwrap()
    else {
        return;
    };
    let (store_b, _) = keel_store::testing::fresh_postgres("relays_per_schema")
        .await
        .unwrap()
        .unwrap();
    let bus = SqliteBus::open_with(&dir.sqlite_url("bus.db"), fast())
        .await
        .unwrap();
    let (ca, seen_a) = record(&bus, "svc-a").await;
    let (cb, seen_b) = record(&bus, "svc-b").await;
    let outbox_a = Outbox::new(store_a.clone()).await.unwrap();
    let outbox_b = Outbox::new(store_b.clone()).await.unwrap();
    assert_ne!(
        outbox_a.relay_lock_key(),
        outbox_b.relay_lock_key(),
        "one leader lock per outbox table, not per database"
    );
    let stop = CancellationToken::new();
    let bus_arc: Arc<dyn Bus> = Arc::new(bus.clone());
    tokio::spawn(outbox_a.clone().run_relay(bus_arc.clone(), stop.clone()));
    tokio::spawn(outbox_b.clone().run_relay(bus_arc, stop.clone()));
    send(&store_a, &outbox_a, "svc-a", 0..30).await;
    send(&store_b, &outbox_b, "svc-b", 0..30).await;
    wait_for("both services' messages relayed", 15, || {
        seen_a.lock().unwrap().len() == 30 && seen_b.lock().unwrap().len() == 30
    })
    .await;
    // A relay marks rows published after the bus acknowledged them, so a consumer can see a
    // message a moment before its row is marked.
    for (outbox, name) in [(&outbox_a, "svc-a"), (&outbox_b, "svc-b")] {
        let end = Instant::now() + Duration::from_secs(10);
        let mut left = outbox.backlog().await.unwrap();
        while left > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
            left = outbox.backlog().await.unwrap();
        }
        assert_eq!(left, 0, "{name}'s rows not marked published");
    }
    assert_eq!(
        published(&bus, "svc-a").await,
        (30, 30),
        "published once each"
    );
    assert_eq!(
        published(&bus, "svc-b").await,
        (30, 30),
        "published once each"
    );
    stop.cancel();
    ca.stop().await;
    cb.stop().await;
}

/// The backend pid of the session holding `outbox`'s relay lock, if any.
async fn lock_holder(store: &Store, outbox: &Outbox) -> Option<(i32, String)> {
    let key = outbox.relay_lock_key().unwrap();
    sqlx::query_as(
        "SELECT l.pid, COALESCE(a.application_name, '') FROM pg_locks l \
         JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted \
           AND l.classid::bigint = $1 AND l.objid::bigint = $2",
    )
    .bind(key >> 32)
    .bind(key & 0xffff_ffff)
    .fetch_optional(store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn postgres_relay_that_lost_its_lock_session_stops_publishing() {
    let dir = TempDir::new("relay-lost-lock");
    let Some((store, url)) = keel_store::testing::fresh_postgres("relay_lost_lock")
        .await
        .unwrap()
    else {
        return;
    };
    let bus = SqliteBus::open_with(&dir.sqlite_url("bus.db"), fast())
        .await
        .unwrap();
    let (c, seen) = record(&bus, "lost").await;
    let bus_arc: Arc<dyn Bus> = Arc::new(bus.clone());
    // Two relays with their own pools (as two processes would have).
    let store_a = Store::connect(&format!("{url}&application_name=relay-a"))
        .await
        .unwrap();
    let store_b = Store::connect(&format!("{url}&application_name=relay-b"))
        .await
        .unwrap();
    let outbox_a = Outbox::new(store_a.clone()).await.unwrap();
    let outbox_b = Outbox::new(store_b).await.unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(outbox_a.clone().run_relay(bus_arc.clone(), stop.clone()));
    send(&store_a, &outbox_a, "lost", 0..1).await;
    wait_for("A relays", 10, || seen.lock().unwrap().contains_key(&0)).await;
    tokio::spawn(outbox_b.clone().run_relay(bus_arc, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (pid, app) = lock_holder(&store, &outbox_a).await.unwrap();
    assert_eq!(app, "relay-a");

    // A's lock session ends (a network drop, an administrator, a failover): B takes over,
    // while A's process and pool live on.
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(store.pool())
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((_, app)) = lock_holder(&store, &outbox_a).await
            && app == "relay-b"
        {
            break;
        }
        assert!(Instant::now() < end, "B did not take over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A's process keeps committing (each commit wakes A's relay at once).
    for batch in 0..20 {
        send(
            &store_a,
            &outbox_a,
            "lost",
            1 + batch * 10..1 + (batch + 1) * 10,
        )
        .await;
    }
    wait_for("all 201", 20, || seen.lock().unwrap().len() == 201).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        published(&bus, "lost").await,
        (201, 201),
        "the relay that lost its lock stepped down instead of publishing beside the new one"
    );
    stop.cancel();
    c.stop().await;
}

/// A TCP proxy in front of PostgreSQL that can cut every connection through it and, while
/// cut, accept and immediately close new ones (a server that is there but failing).
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (c, k) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let target = target.clone();
                k.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Self { port, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// `url` with its host and port replaced by `127.0.0.1:port`; also the original host:port.
fn via(url: &str, port: u16) -> (String, String) {
    let start = url.find("://").unwrap() + 3;
    let end = start + url[start..].find('/').unwrap();
    let host_start = url[start..end]
        .rfind('@')
        .map_or(start, |at| start + at + 1);
    let mut target = url[host_start..end].to_owned();
    if !target.contains(':') {
        target.push_str(":5432");
    }
    let proxied = format!("{}127.0.0.1:{port}{}", &url[..host_start], &url[end..]);
    (proxied, target)
}

/// Median commit → first delivery latency over `n` commits spread over more than the
/// relay's 1 s safety-net poll.
async fn median_latency(
    store: &Store,
    outbox: &Outbox,
    seen: &Arrivals,
    from: i64,
    n: i64,
) -> Duration {
    let mut latencies = Vec::new();
    for i in from..from + n {
        let t = Instant::now();
        send(store, outbox, "listen", i..i + 1).await;
        wait_for("delivery", 10, || seen.lock().unwrap().contains_key(&i)).await;
        latencies.push(seen.lock().unwrap()[&i] - t);
        tokio::time::sleep(Duration::from_millis(130)).await;
    }
    latencies.sort();
    latencies[latencies.len() / 2]
}

#[tokio::test]
async fn postgres_relay_reopens_a_failed_listen_connection() {
    let dir = TempDir::new("relay-listen");
    let Some((store, url)) = keel_store::testing::fresh_postgres("relay_reopens_listen")
        .await
        .unwrap()
    else {
        return;
    };
    let bus = SqliteBus::open_with(&dir.sqlite_url("bus.db"), fast())
        .await
        .unwrap();
    let (c, seen) = record(&bus, "listen").await;
    // The relay reaches PostgreSQL through a proxy we can cut; commits come from another
    // handle (another process, as far as the relay knows: only NOTIFY wakes it).
    let proxy = Proxy::start(via(&url, 0).1).await;
    let proxied = via(&url, proxy.port).0;
    let relay_store = Store::connect(&proxied).await.unwrap();
    let relay = Outbox::new(relay_store).await.unwrap();
    let writer = Outbox::new(store.clone()).await.unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(relay.run_relay(Arc::new(bus.clone()), stop.clone()));
    send(&store, &writer, "listen", 0..1).await;
    wait_for("the relay runs", 10, || {
        seen.lock().unwrap().contains_key(&0)
    })
    .await;
    let before = median_latency(&store, &writer, &seen, 1, 8).await;
    assert!(
        before < Duration::from_millis(300),
        "woken by NOTIFY: {before:?}"
    );

    // The database connection drops and reconnecting fails for a while.
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(800)).await;
    proxy.restore();
    send(&store, &writer, "listen", 100..101).await;
    wait_for("the relay is back", 15, || {
        seen.lock().unwrap().contains_key(&100)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = median_latency(&store, &writer, &seen, 101, 8).await;
    assert!(
        after < Duration::from_millis(300),
        "woken by NOTIFY again, not by the 1 s poll: {after:?}"
    );
    stop.cancel();
    c.stop().await;
}
