//! Wake-ups: after a commit, the publisher pokes every consumer of the destination so it
//! reads at once. In the same process through a watch channel; in other processes through
//! a UDP datagram (`destination#partitions`, so only partitions with new messages wake) to
//! the port each process registered in the bus file. A lost datagram costs at most the
//! safety-net poll.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use keel_store::{Store, StoreError, now_ms};
use tokio::{net::UdpSocket, sync::watch};
use tokio_util::sync::CancellationToken;

/// A process's wake-up endpoint for one bus file. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Waker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    socket: UdpSocket,
    port: u16,
    local: Mutex<HashMap<String, watch::Sender<u64>>>,
    peers: Mutex<(Instant, Vec<u16>)>,
    store: Store,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

const STALE_MS: i64 = 10_000;

impl Waker {
    pub(crate) async fn new(store: Store) -> Result<Self, StoreError> {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
        let inner = Arc::new(Inner {
            socket,
            port,
            local: Mutex::new(HashMap::new()),
            peers: Mutex::new((Instant::now() - Duration::from_secs(60), Vec::new())),
            store,
            stop: CancellationToken::new(),
        });
        let w = Self { inner };
        w.register().await?;
        w.spawn_tasks();
        Ok(w)
    }

    fn key(&self) -> String {
        format!("{}:{}", std::process::id(), self.inner.port)
    }

    async fn register(&self) -> Result<(), StoreError> {
        self.inner
            .store
            .write(
                sqlx::query(
                    "INSERT INTO bus_wake (pid_port, port, heartbeat_at) VALUES ($1, $2, $3) \
             ON CONFLICT (pid_port) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                )
                .bind(self.key())
                .bind(i64::from(self.inner.port))
                .bind(now_ms()),
            )
            .await?;
        Ok(())
    }

    fn spawn_tasks(&self) {
        // Receiver: datagrams name a destination.
        let weak = Arc::downgrade(&self.inner);
        let stop = self.inner.stop.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 8192];
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let res = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = inner.socket.recv(&mut buf) => r,
                };
                if let Ok(n) = res {
                    // `destination#p1,p2,…`: the partitions that received messages.
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let (dest, parts) = text.split_once('#').unwrap_or((&text, ""));
                    let w = Waker { inner };
                    for p in parts.split(',').filter_map(|p| p.parse::<u32>().ok()) {
                        w.wake_local(dest, p);
                    }
                }
            }
        });
        // Heartbeat of the registration, and cleanup of dead processes' rows.
        let weak = Arc::downgrade(&self.inner);
        let stop = self.inner.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let w = Waker { inner };
                let _ = w.register().await;
                let _ = w
                    .inner
                    .store
                    .write(
                        sqlx::query("DELETE FROM bus_wake WHERE heartbeat_at < $1")
                            .bind(now_ms() - 6 * STALE_MS),
                    )
                    .await;
            }
        });
    }

    /// A token cancelled when the last handle to this waker is gone.
    pub(crate) fn stopped(&self) -> CancellationToken {
        self.inner.stop.clone()
    }

    /// Subscribes to wake-ups for one partition of `destination`.
    pub(crate) fn subscribe(&self, destination: &str, partition: u32) -> watch::Receiver<u64> {
        let mut m = self.inner.local.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(format!("{destination}#{partition}"))
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn wake_local(&self, destination: &str, partition: u32) {
        let m = self.inner.local.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = m.get(&format!("{destination}#{partition}")) {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Wakes the consumers of these partitions of `destination`, here and in other
    /// processes (one datagram per process; only the partitions named wake, so an idle
    /// partition costs nothing when its neighbours are busy).
    pub(crate) async fn wake(&self, destination: &str, partitions: &[u32]) {
        for p in partitions {
            self.wake_local(destination, *p);
        }
        let list: Vec<String> = partitions.iter().map(u32::to_string).collect();
        let datagram = format!("{destination}#{}", list.join(","));
        let peers = self.peers().await;
        for port in peers {
            if port != self.inner.port {
                let _ = self
                    .inner
                    .socket
                    .send_to(datagram.as_bytes(), ("127.0.0.1", port))
                    .await;
            }
        }
    }

    async fn peers(&self) -> Vec<u16> {
        {
            let p = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
            if p.0.elapsed() < Duration::from_secs(1) {
                return p.1.clone();
            }
        }
        let rows: Vec<(i64,)> =
            sqlx::query_as("SELECT port FROM bus_wake WHERE heartbeat_at >= $1")
                .bind(now_ms() - STALE_MS)
                .fetch_all(self.inner.store.pool())
                .await
                .unwrap_or_default();
        let ports: Vec<u16> = rows
            .into_iter()
            .filter_map(|(p,)| u16::try_from(p).ok())
            .collect();
        let mut p = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
        *p = (Instant::now(), ports.clone());
        ports
    }
}
