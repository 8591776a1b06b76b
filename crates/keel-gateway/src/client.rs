//! Upstream connections: pooled keep-alive HTTP/1.1 clients (plain or TLS) and HTTP/2
//! prior-knowledge (h2c) clients, one per connect timeout in use.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use tokio_rustls::rustls::{
    self,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};

use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use rustc_hash::FxHashMap;

use crate::{
    body::Body,
    config::HttpClientSettings,
    h1::{Conn, Framing, H1Error, Streamed},
};

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

/// Idle connections by upstream, each with when it went back into the pool.
type IdleMap<T> = Mutex<FxHashMap<Box<str>, Vec<(T, std::time::Instant)>>>;

/// Why a pooled HTTP/1 call failed.
#[derive(Debug)]
pub(crate) enum PoolError {
    /// No connection could be made (refused, unreachable, timed out): the request was not sent.
    Connect(String),
    /// The exchange failed after the request was (possibly) sent.
    Send(hyper::Error),
    /// The same, on the fast path (`h1.rs`).
    Failed(String),
}

/// A lean keep-alive pool of HTTP/1 connections per upstream `host:port`, on hyper's
/// connection API: a call takes a connection that is ready (its previous response fully
/// read), or opens one; the connection goes back as soon as the response head arrives and
/// is picked again once its body has been streamed. A request that a stale connection
/// refused before sending is retried on another one.
#[derive(Debug, Clone)]
pub(crate) struct Http1Pool {
    /// Keyed by upstream `host:port` from the route file or the registry (not chosen by
    /// clients), so hashed with FxHash rather than SipHash.
    idle: Arc<IdleMap<Sender>>,
    /// The fast path's idle connections (`h1.rs`), keyed the same way.
    raw: Arc<IdleMap<Conn>>,
    max_per_host: usize,
    idle_timeout: Duration,
    tls: Arc<UpstreamTls>,
}

/// How `https://` upstreams are trusted: the system's roots plus
/// `httpclient.ssl.trusted-x509-certificates`, or nothing checked
/// (`use-insecure-trust-manager`). The connector is built on first use, so a gateway with
/// no TLS upstream never loads the system's roots.
#[derive(Default)]
pub(crate) struct UpstreamTls {
    extra: Vec<CertificateDer<'static>>,
    insecure: bool,
    connector: OnceLock<Result<tokio_rustls::TlsConnector, String>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("extra", &self.extra.len())
            .field("insecure", &self.insecure)
            .field("built", &self.connector.get().map(Result::is_ok))
            .finish()
    }
}

impl UpstreamTls {
    /// Reads the extra trusted certificates; the error names the setting and the file.
    pub(crate) fn new(settings: &HttpClientSettings) -> Result<Self, String> {
        let mut extra = Vec::new();
        for path in &settings.trusted_certificates {
            let certs = read_certificates(path).map_err(|e| {
                format!(
                    "httpclient.ssl.trusted-x509-certificates {}: {e}",
                    path.display()
                )
            })?;
            extra.extend(certs);
        }
        Ok(Self {
            extra,
            insecure: settings.insecure,
            connector: OnceLock::new(),
        })
    }

    fn connector(&self) -> Result<&tokio_rustls::TlsConnector, String> {
        self.connector
            .get_or_init(|| self.build())
            .as_ref()
            .map_err(Clone::clone)
    }

    fn build(&self) -> Result<tokio_rustls::TlsConnector, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!(error = %e, "a system CA certificate could not be read");
            }
            let (_, ignored) = roots.add_parsable_certificates(native.certs);
            if ignored > 0 {
                tracing::debug!(ignored, "unparsable system CA certificates skipped");
            }
            for c in &self.extra {
                roots
                    .add(c.clone())
                    .map_err(|e| format!("httpclient.ssl.trusted-x509-certificates: {e}"))?;
            }
            if roots.is_empty() {
                return Err("no trusted CA certificate: the system has none and httpclient.ssl.trusted-x509-certificates names none".into());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

fn read_certificates(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(certs)
}

/// `use-insecure-trust-manager`: accepts any certificate (signatures are still checked, so
/// the handshake is a real one).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl Http1Pool {
    pub(crate) fn new(max_per_host: usize, idle_timeout: Duration, tls: UpstreamTls) -> Self {
        let pool = Self {
            idle: Arc::default(),
            raw: Arc::default(),
            max_per_host: max_per_host.max(1),
            idle_timeout,
            tls: Arc::new(tls),
        };
        pool.sweep_raw();
        pool
    }

    /// Closes idle fast-path connections that outlived the idle time or that the upstream
    /// closed, also for hosts no request goes to any more (an `lb://` instance that left):
    /// every half idle time (1–30 s), until the pool is dropped. (hyper's connections end
    /// their own tasks when the upstream closes them.)
    fn sweep_raw(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let raw = Arc::downgrade(&self.raw);
        let idle_timeout = self.idle_timeout;
        let every = (idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(raw) = raw.upgrade() else {
                    return;
                };
                let mut m = raw.lock().unwrap_or_else(|p| p.into_inner());
                m.retain(|_, list| {
                    list.retain(|(conn, since)| {
                        since.elapsed() <= idle_timeout && conn.is_usable()
                    });
                    !list.is_empty()
                });
            }
        });
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
        checkin_into(&self.idle, authority, sender, self.max_per_host);
    }

    async fn connect(
        &self,
        authority: &str,
        tls: bool,
        timeout: Duration,
    ) -> Result<Sender, PoolError> {
        let connect = async {
            let stream = tokio::net::TcpStream::connect(authority)
                .await
                .map_err(|e| PoolError::Connect(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            if !tls {
                return handshake(stream).await;
            }
            let connector = self.tls.connector().map_err(PoolError::Connect)?;
            let host = authority
                .rsplit_once(':')
                .map_or(authority, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| PoolError::Connect(format!("TLS server name {host:?}: {e}")))?;
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(|e| PoolError::Connect(format!("TLS handshake with {authority}: {e}")))?;
            handshake(stream).await
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| connect_timed_out(timeout))?
    }

    /// Sends `req` to `authority` on a hyper connection (request bodies streamed, TLS,
    /// upgrades; `Proxy::fetch` sends the rest on the fast path, [`send_fast`](Self::send_fast)).
    pub(crate) async fn send(
        &self,
        authority: &str,
        tls: bool,
        connect_timeout: Duration,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, PoolError> {
        self.send_hyper(authority, tls, connect_timeout, req)
            .await
            .map(|res| res.map(Body::Incoming))
    }

    /// The fast path: `request` (head and body, written by `h1::RequestWriter`) to a plain
    /// HTTP/1.1 upstream in one write. `idempotent`: the request may be sent again on another
    /// connection when a reused one turns out closed. `head_request`: its response has no body.
    pub(crate) async fn send_fast(
        &self,
        authority: &str,
        connect_timeout: Duration,
        request: bytes::BytesMut,
        idempotent: bool,
        head_request: bool,
    ) -> Result<http::Response<Body>, PoolError> {
        loop {
            let (mut conn, reused) = match self.checkout_raw(authority) {
                Some(c) => (c, true),
                None => (
                    Box::pin(self.connect_raw(authority, connect_timeout)).await?,
                    false,
                ),
            };
            let (h, framing) = match conn.exchange(&request, head_request).await {
                Ok(r) => r,
                // A reused connection the upstream had closed, for a request that may be
                // repeated: again on another one — the next idle one, or a new connection,
                // after which a failure is final (hyper's pool retries the same way).
                Err(H1Error::NoResponse(_)) if reused && idempotent => continue,
                Err(H1Error::NoResponse(e) | H1Error::Failed(e)) => {
                    return Err(PoolError::Failed(e));
                }
            };
            let keep = h.keep_alive();
            let mut res = http::Response::new(Body::Empty);
            *res.status_mut() = h.status;
            *res.headers_mut() = h.headers;
            let body = match framing {
                Framing::Empty => {
                    if keep {
                        self.checkin_raw(authority, conn);
                    }
                    Body::Empty
                }
                Framing::Length(n) if let Some(bytes) = conn.take_buffered(n) => {
                    if keep {
                        self.checkin_raw(authority, conn);
                    }
                    Body::full(bytes)
                }
                _ => Body::Upstream(Streamed::new(
                    conn,
                    framing,
                    keep.then(|| (self.clone(), Box::from(authority))),
                )),
            };
            *res.body_mut() = body;
            return Ok(res);
        }
    }

    fn checkout_raw(&self, authority: &str) -> Option<Conn> {
        let mut m = self.raw.lock().unwrap_or_else(|p| p.into_inner());
        let list = m.get_mut(authority)?;
        // Newest first, as in `checkout`.
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() <= self.idle_timeout && conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Puts a fast-path connection whose response was read to its end back in the pool.
    pub(crate) fn checkin_raw(&self, authority: &str, conn: Conn) {
        if conn.is_usable() {
            checkin_into(&self.raw, authority, conn, self.max_per_host);
        }
    }

    async fn connect_raw(&self, authority: &str, timeout: Duration) -> Result<Conn, PoolError> {
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(authority))
            .await
            .map_err(|_| connect_timed_out(timeout))?
            .map_err(|e| PoolError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn::new(stream))
    }

    /// Sends `req` to `authority` on a hyper connection.
    async fn send_hyper(
        &self,
        authority: &str,
        tls: bool,
        connect_timeout: Duration,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, PoolError> {
        // TLS and plain connections to one host:port are pooled apart.
        let key: std::borrow::Cow<'_, str> = if tls {
            format!("tls:{authority}").into()
        } else {
            authority.into()
        };
        let authority_key = key.as_ref();
        // An origin server is sent the origin form (`GET /path?query`); the authority travels
        // in `Host`. (The absolute form is for requests to proxies.)
        if req.uri().authority().is_some() {
            let origin = req
                .uri()
                .path_and_query()
                .cloned()
                .map_or_else(|| http::Uri::from_static("/"), http::Uri::from);
            *req.uri_mut() = origin;
        }
        loop {
            let (mut sender, reused) = match self.checkout(authority_key) {
                Some(s) => (s, true),
                // Boxed: connecting (TCP, TLS, handshake) is rare next to reusing a pooled
                // connection, and its large state would otherwise be moved with every request.
                None => (
                    Box::pin(self.connect(authority, tls, connect_timeout)).await?,
                    false,
                ),
            };
            match sender.try_send_request(req).await {
                Ok(res) => {
                    if res.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                        self.checkin(authority_key, sender);
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

fn connect_timed_out(timeout: Duration) -> PoolError {
    PoolError::Connect(format!(
        "connect timed out after {} ms",
        timeout.as_millis()
    ))
}

/// Puts an idle connection in `pool`'s list for `authority`, unless the list is full.
fn checkin_into<T>(pool: &IdleMap<T>, authority: &str, conn: T, max_per_host: usize) {
    let mut m = pool.lock().unwrap_or_else(|p| p.into_inner());
    // A known host (every request but the first) needs no owned key.
    let list = match m.get_mut(authority) {
        Some(list) => list,
        None => m.entry(Box::from(authority)).or_default(),
    };
    if list.len() < max_per_host {
        list.push((conn, std::time::Instant::now()));
    }
}

async fn handshake<S>(stream: S) -> Result<Sender, PoolError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
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
