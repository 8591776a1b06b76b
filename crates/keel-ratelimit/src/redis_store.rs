//! The shared store: buckets in Redis, taken by one atomic Lua script, so several gateway
//! instances spend one budget per key.
//!
//! One multiplexed connection carries every call. Each call — connecting included — is
//! bounded by the store's timeout. A connection that fails or times out is dropped and the
//! next call connects again; a failed connection attempt makes calls fail at once (without
//! waiting) for [`RECONNECT_BACKOFF`], after which one call tries again. Calls that arrive
//! while a connection is being made wait for it, within their timeout.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, Script};
use tokio::sync::Notify;
use tokio::time::{Instant, timeout_at};

use crate::store::{Store, StoreError, StoreFuture};
use crate::{Decision, Rate};

/// How long calls fail at once after a connection attempt failed.
pub const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// The script; see the file for its contract.
const SCRIPT: &str = include_str!("request_rate_limiter.lua");

/// A bucket store in Redis, shared by every gateway instance that uses the same server.
///
/// Keys are Spring Cloud Gateway's: `request_rate_limiter.{<route id>.<key>}.tokens` and
/// `….timestamp` (the braces are a cluster hash tag, so both land in one slot). Time comes
/// from the Redis server (`TIME`), so instances with skewed clocks still agree. Cloning
/// shares the connection.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    config: AsyncConnectionConfig,
    timeout: Duration,
    script: Script,
    slot: Mutex<Slot>,
    /// Signalled whenever `slot` leaves `Connecting`.
    changed: Notify,
    generations: AtomicU64,
}

enum Slot {
    /// No connection and none being made: the next call connects.
    Idle,
    /// A call is connecting; others wait for `changed`.
    Connecting,
    Connected {
        generation: u64,
        conn: MultiplexedConnection,
    },
    /// The last attempt failed: calls fail at once until `until`.
    Down { until: Instant },
}

impl RedisStore {
    /// A store on the Redis server at `url` (`redis://[user:password@]host:port[/db]`), each
    /// call bounded by `timeout`.
    ///
    /// Connects once, within `timeout`. Only an invalid URL is an error: when the server
    /// cannot be reached the store is returned anyway (with a warning logged) and keeps
    /// trying, so a gateway starts — and its fail mode decides — while Redis is down.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::InvalidUrl)?;
        let store = Self {
            shared: Arc::new(Shared {
                client,
                config: AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout)),
                timeout,
                script: Script::new(SCRIPT),
                slot: Mutex::new(Slot::Idle),
                changed: Notify::new(),
                generations: AtomicU64::new(0),
            }),
        };
        let deadline = Instant::now() + timeout;
        let first = match timeout_at(deadline, store.shared.connection()).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(StoreError::Timeout(timeout)),
        };
        if let Err(e) = first {
            tracing::warn!(
                redis = %store.shared.client.get_connection_info().addr(),
                error = %e,
                "Redis is unreachable; rate limits on it follow the fail mode until it answers"
            );
        }
        Ok(store)
    }

    /// Whether a connection is established now (for health reports).
    pub fn is_connected(&self) -> bool {
        matches!(*self.shared.lock(), Slot::Connected { .. })
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// The Redis keys of the bucket of `(route_id, key)`: tokens and timestamp.
    pub fn keys(route_id: &str, key: &str) -> [String; 2] {
        let prefix = format!("request_rate_limiter.{{{route_id}.{key}}}.");
        [format!("{prefix}tokens"), format!("{prefix}timestamp")]
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The address only: the URL may hold a password.
        f.debug_struct("RedisStore")
            .field(
                "addr",
                &format_args!("{}", self.shared.client.get_connection_info().addr()),
            )
            .field("timeout", &self.shared.timeout)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn acquire<'a>(&'a self, route_id: &'a str, key: &'a str, rate: &'a Rate) -> StoreFuture<'a> {
        Box::pin(self.shared.acquire(route_id, key, rate))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // Every write to the slot is a single assignment: a poisoned lock holds good data.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn acquire(
        &self,
        route_id: &str,
        key: &str,
        rate: &Rate,
    ) -> Result<Decision, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let (generation, mut conn) = match timeout_at(deadline, self.connection()).await {
            Ok(connected) => connected?,
            Err(_) => return Err(StoreError::Timeout(self.timeout)),
        };
        let [tokens_key, timestamp_key] = RedisStore::keys(route_id, key);
        let mut call = self.script.prepare_invoke();
        call.key(tokens_key)
            .key(timestamp_key)
            .arg(rate.replenish_rate())
            .arg(rate.burst_capacity())
            .arg(rate.requested_tokens());
        let reply =
            match timeout_at(deadline, call.invoke_async::<(i64, i64, i64)>(&mut conn)).await {
                Ok(reply) => reply,
                Err(_) => {
                    // Something is wrong with this connection (or the server): start afresh.
                    self.invalidate(generation);
                    return Err(StoreError::Timeout(self.timeout));
                }
            };
        match reply {
            Ok((allowed, remaining, wait_ms)) => {
                let retry_after = u64::try_from(wait_ms).ok().map(Duration::from_millis);
                Ok(Decision::from_bucket(
                    *rate,
                    allowed == 1,
                    remaining,
                    retry_after,
                ))
            }
            Err(e) => {
                if connection_lost(&e) {
                    self.invalidate(generation);
                }
                Err(StoreError::Redis(e))
            }
        }
    }

    /// The current connection, connecting first if there is none. Cancellation-safe: a call
    /// dropped while connecting counts as a failed attempt.
    async fn connection(&self) -> Result<(u64, MultiplexedConnection), StoreError> {
        loop {
            let wait = {
                let mut slot = self.lock();
                match &*slot {
                    Slot::Connected { generation, conn } => return Ok((*generation, conn.clone())),
                    Slot::Down { until } if *until > Instant::now() => {
                        return Err(StoreError::Unavailable {
                            retry_in: until.saturating_duration_since(Instant::now()),
                        });
                    }
                    // Created under the lock, so the attempt's notification cannot be missed.
                    Slot::Connecting => self.changed.notified(),
                    Slot::Idle | Slot::Down { .. } => {
                        *slot = Slot::Connecting;
                        break;
                    }
                }
            };
            wait.await;
        }

        let mut attempt = Attempt {
            shared: self,
            settled: false,
        };
        let connected = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await;
        attempt.settled = true;
        match connected {
            Ok(conn) => {
                let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
                self.settle(Slot::Connected {
                    generation,
                    conn: conn.clone(),
                });
                tracing::debug!(generation, "connected to Redis");
                Ok((generation, conn))
            }
            Err(e) => {
                self.settle(Slot::Down {
                    until: Instant::now() + RECONNECT_BACKOFF,
                });
                Err(StoreError::Connect(e))
            }
        }
    }

    fn settle(&self, state: Slot) {
        *self.lock() = state;
        self.changed.notify_waiters();
    }

    /// Drops connection `generation` if it is still the current one.
    fn invalidate(&self, generation: u64) {
        let mut slot = self.lock();
        if matches!(&*slot, Slot::Connected { generation: g, .. } if *g == generation) {
            *slot = Slot::Idle;
            tracing::debug!(generation, "dropped the Redis connection");
        }
    }
}

/// A connection attempt in progress; if its future is dropped before it settles (the
/// call's timeout), the attempt counts as failed.
struct Attempt<'a> {
    shared: &'a Shared,
    settled: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.settle(Slot::Down {
                until: Instant::now() + RECONNECT_BACKOFF,
            });
        }
    }
}

/// Whether `e` means the connection is unusable (rather than the server refusing the call).
fn connection_lost(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Io || e.is_unrecoverable_error()
}
