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
