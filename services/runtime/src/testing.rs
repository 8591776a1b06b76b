//! The harness the services' integration tests share (feature `testing`): a service's app
//! served on a free port ([`Server`]), its HTTP API read back as status and JSON, and the
//! messages published to a bus destination collected ([`collect`], [`Tap`]), and saga
//! commands sent to a participant and its replies read ([`command`], [`Reply`]).

use std::{fmt::Debug, future::Future, sync::Arc, time::Duration};

use keel_chassis::{KeelConfig, Service, ShutdownHandle};
use keel_messaging::{Bus, Consumer, Message, Replies, Subscription, handler_fn};
use keel_store::Store;
use serde_json::Value;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::Running;

/// How long [`Tap::next`] waits for a message before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// A service's app served on a free port of 127.0.0.1, with an HTTP client for it.
#[derive(Debug)]
pub struct Server {
    /// The service's name, as it was started.
    name: String,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The client the helpers send with.
    pub http: reqwest::Client,
    /// The service's database, as its app returned it.
    pub store: Store,
    shutdown: ShutdownHandle,
    task: JoinHandle<Result<(), keel_chassis::Error>>,
}

impl Server {
    /// Starts service `name` with settings `config` the way `run` does, but without signal
    /// handling and listening on a free port: `app` (given the settings and the shutdown
    /// token) starts it, its background work is spawned, and its router is served.
    pub async fn start<C, F, Fut, E>(name: &str, config: C, app: F) -> Self
    where
        C: Default + Clone + Send + Sync + 'static,
        F: FnOnce(C, CancellationToken) -> Fut,
        Fut: Future<Output = Result<Running, E>>,
        E: Debug,
    {
        let mut keel = KeelConfig::<C>::default();
        keel.server.listen = "127.0.0.1:0".parse().unwrap();
        keel.app = config.clone();
        let service = Service::from_config(name, keel).handle_signals(false);
        let started = app(config, service.shutdown_token()).await.unwrap();
        service.spawn(started.background);
        let bound = service.bind().await.unwrap();
        let addr = bound.local_addr().unwrap();
        let shutdown = bound.shutdown_handle();
        let task = tokio::spawn(bound.serve(started.router));
        Self {
            name: name.to_owned(),
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            store: started.store,
            shutdown,
            task,
        }
    }

    /// Polls `/health/ready` until it answers 200 (for up to about four seconds, then the
    /// test fails).
    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.http.get(self.url("/health/ready")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{} did not become ready", self.name);
    }

    /// Shuts the service down and waits until it has stopped cleanly.
    pub async fn stop(self) {
        self.shutdown.shutdown();
        self.task.await.unwrap().unwrap();
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`, read with [`status_json`].
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self.http.get(self.url(path)).send().await.unwrap();
        status_json(res).await
    }

    /// `POST path` with `body` as JSON, read with [`status_json`].
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        status_json(res).await
    }

    /// `POST path` with `body` as it is and `content_type` (none when `None`), read with
    /// [`status_json`].
    pub async fn post_raw(
        &self,
        path: &str,
        body: &str,
        content_type: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).body(body.to_owned());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        status_json(req.send().await.unwrap()).await
    }

    /// `GET path`, read with [`strict_json`] (failures name `path`).
    pub async fn get_strict(&self, path: &str) -> (u16, Value) {
        let res = self.http.get(self.url(path)).send().await.unwrap();
        strict_json(res, path).await
    }

    /// `POST path` with the JSON text `body` (content type `application/json`), read with
    /// [`strict_json`] (failures name `path`).
    pub async fn post_strict(&self, path: &str, body: &str) -> (u16, Value) {
        let res = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        strict_json(res, path).await
    }
}

/// The status and body of `res`: the body as JSON, or as a JSON string when it is not JSON.
/// A status of 400 or more must come with a content type starting
/// `application/problem+json`.
pub async fn status_json(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = res.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status >= 400 {
        assert!(
            ct.starts_with("application/problem+json"),
            "{status} {ct}: {v}"
        );
    }
    (status, v)
}

/// The status and JSON body of `res` (which must be JSON); a status of 400 or more must come
/// with the content type `application/problem+json` exactly. Failures name `path`.
pub async fn strict_json(res: reqwest::Response, path: &str) -> (u16, Value) {
    let status = res.status().as_u16();
    if status >= 400 {
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
    }
    (status, res.json().await.unwrap())
}

/// Subscribes to `subscription` on `bus` and hands every message it delivers to the
/// receiver; the subscription lasts as long as the returned consumer.
pub async fn collect(
    bus: &Arc<dyn Bus>,
    subscription: Subscription,
) -> (Consumer, mpsc::UnboundedReceiver<Message>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let consumer = bus
        .subscribe(
            subscription,
            handler_fn(move |d| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(d.message);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    (consumer, rx)
}

/// A number unique enough for consumer-group names within one test run.
pub fn rand_u64() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ (u64::from(std::process::id()) << 32)
}

/// Every message published to a destination, in a consumer group of its own.
#[derive(Debug)]
pub struct Tap {
    rx: mpsc::UnboundedReceiver<Message>,
    _consumer: Consumer,
}

impl Tap {
    /// Receives every message published to `destination` on `bus` from now on (and before:
    /// a new group starts at the oldest retained message).
    pub async fn new(bus: &Arc<dyn Bus>, destination: &str) -> Self {
        let (consumer, rx) = collect(
            bus,
            Subscription::new(destination, format!("test-{:x}", rand_u64())),
        )
        .await;
        Self {
            rx,
            _consumer: consumer,
        }
    }

    /// The next message; fails the test when none comes within [`WAIT`].
    pub async fn next(&mut self) -> Message {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("no message within the wait")
            .unwrap()
    }

    /// Fails the test when a message comes within 1.5 seconds.
    pub async fn nothing_more(&mut self) {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(1500), self.rx.recv()).await
        {
            panic!("unexpected message {m:?}");
        }
    }
}

/// A participant's reply to a saga command: its outcome, type, payload and id.
#[derive(Debug)]
pub struct Reply {
    /// The outcome header (`SUCCESS` or `FAILURE`; empty when missing).
    pub outcome: String,
    /// The reply's message type (empty when missing).
    pub kind: String,
    /// The reply's payload.
    pub payload: Value,
    /// The reply message's id.
    pub id: String,
}

impl Reply {
    /// Sends `message` through `replies` (as an orchestrator does) and waits up to 20
    /// seconds for the reply; fails the test when none comes.
    pub async fn request(replies: &Replies, message: Message) -> Self {
        let reply = replies
            .request(message, Duration::from_secs(20))
            .await
            .expect("a reply");
        Self {
            outcome: reply
                .header(keel_saga::REPLY_OUTCOME)
                .unwrap_or_default()
                .to_owned(),
            kind: reply.message_type().unwrap_or_default().to_owned(),
            payload: reply.payload,
            id: reply.id,
        }
    }
}

/// A saga command of type `kind` on `destination` carrying `payload` (schema version 1),
/// keyed by its `orderId` (`none` without one), with a correlation id of its own so that
/// sending the message again is a true duplicate.
pub fn command(destination: &str, kind: &str, payload: Value) -> Message {
    let key = payload["orderId"].as_str().unwrap_or("none").to_owned();
    Message::new(destination, payload)
        .with_header("correlation-id", keel_messaging::new_id())
        .with_header("type", kind)
        .with_header("schema-version", "1")
        .with_key(key)
}
