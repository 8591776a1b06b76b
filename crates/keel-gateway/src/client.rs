//! Upstream connections: pooled keep-alive HTTP/1.1 clients and HTTP/2 prior-knowledge (h2c)
//! clients, one pair per connect timeout in use.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use crate::{body::Body, config::HttpClientSettings};

/// A pooled client.
pub(crate) type HttpClient = Client<HttpConnector, Body>;

/// The clients, keyed by connect timeout.
#[derive(Debug, Clone)]
pub(crate) struct Clients {
    settings: Arc<HttpClientSettings>,
    by_timeout: Arc<Mutex<HashMap<(Duration, bool), HttpClient>>>,
}

impl Clients {
    pub(crate) fn new(settings: HttpClientSettings) -> Self {
        Self {
            settings: Arc::new(settings),
            by_timeout: Arc::default(),
        }
    }

    /// The global connect timeout.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.settings.connect_timeout
    }

    /// The client for `connect_timeout` (the global one when `None`), HTTP/2-only when `h2c`.
    pub(crate) fn get(&self, connect_timeout: Option<Duration>, h2c: bool) -> HttpClient {
        let timeout = connect_timeout.unwrap_or(self.settings.connect_timeout);
        let mut m = self.by_timeout.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((timeout, h2c))
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(timeout));
                connector.set_nodelay(true);
                connector.set_keepalive(Some(Duration::from_secs(60)));
                Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(self.settings.pool_idle_timeout)
                    .pool_max_idle_per_host(self.settings.pool_max_idle_per_host)
                    .http2_only(h2c)
                    .timer(TokioTimer::new())
                    .build(connector)
            })
            .clone()
    }
}

/// One HTTP/1 upstream connection's request handle.
type Sender = hyper::client::conn::http1::SendRequest<Body>;

/// A pooled connection and when it went back into the pool.
type IdleSender = (Sender, std::time::Instant);

/// Why a pooled HTTP/1 call failed.
#[derive(Debug)]
pub(crate) enum PoolError {
    /// No connection could be made (refused, unreachable, timed out): the request was not sent.
    Connect(String),
    /// The exchange failed after the request was (possibly) sent.
    Send(hyper::Error),
}

/// A lean keep-alive pool of HTTP/1 connections per upstream `host:port`, on hyper's
/// connection API: a call takes a connection that is ready (its previous response fully
/// read), or opens one; the connection goes back as soon as the response head arrives and
/// is picked again once its body has been streamed. A request that a stale connection
/// refused before sending is retried on another one.
#[derive(Debug, Clone)]
pub(crate) struct Http1Pool {
    idle: Arc<Mutex<HashMap<Box<str>, Vec<IdleSender>>>>,
    max_per_host: usize,
    idle_timeout: Duration,
}

impl Http1Pool {
    pub(crate) fn new(max_per_host: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: Arc::default(),
            max_per_host: max_per_host.max(1),
            idle_timeout,
        }
    }

    fn checkout(&self, authority: &str) -> Option<Sender> {
        let mut m = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = m.get_mut(authority)?;
        // Newest first: the most recently used connection is the likeliest to be ready.
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let (sender, since) = &list[i];
            if sender.is_closed() || since.elapsed() > self.idle_timeout {
                list.swap_remove(i);
            } else if sender.is_ready() {
                return Some(list.swap_remove(i).0);
            }
        }
        None
    }

    fn checkin(&self, authority: &str, sender: Sender) {
        let mut m = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = m.entry(Box::from(authority)).or_default();
        if list.len() < self.max_per_host {
            list.push((sender, std::time::Instant::now()));
        }
    }

    async fn connect(authority: &str, timeout: Duration) -> Result<Sender, PoolError> {
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(authority))
            .await
            .map_err(|_| {
                PoolError::Connect(format!(
                    "connect timed out after {} ms",
                    timeout.as_millis()
                ))
            })?
            .map_err(|e| PoolError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| PoolError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `req` to `authority`.
    pub(crate) async fn send(
        &self,
        authority: &str,
        connect_timeout: Duration,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, PoolError> {
        loop {
            let (mut sender, reused) = match self.checkout(authority) {
                Some(s) => (s, true),
                None => (Self::connect(authority, connect_timeout).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(res) => {
                    if res.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                        self.checkin(authority, sender);
                    }
                    return Ok(res);
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: a reused connection went stale; try a fresh one.
                    Some(r) if reused => req = r,
                    _ => return Err(PoolError::Send(e.into_error())),
                },
            }
        }
    }
}
