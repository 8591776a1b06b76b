//! The payment-network simulator through its real interface: HTTP on a free port, over a
//! real SQLite database in a temporary directory.

use std::time::Duration;

use ftgo_van::{Faults, VanConfig};
use keel_chassis::{KeelConfig, Service, ShutdownHandle};
use keel_store::testing::TempDir;
use serde_json::{Value, json};

struct Van {
    base: String,
    http: reqwest::Client,
    shutdown: ShutdownHandle,
    server: tokio::task::JoinHandle<Result<(), keel_chassis::Error>>,
}

impl Van {
    async fn start(dir: &TempDir, network: &str) -> Self {
        let app_config = VanConfig {
            network: network.to_owned(),
            database: dir.sqlite_url(&format!("{network}.db")),
            fee_bps: 150,
            ..VanConfig::default()
        };
        let mut config = KeelConfig::<VanConfig>::default();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.app = app_config.clone();
        let service = Service::from_config("van", config).handle_signals(false);
        let bound = service.bind().await.unwrap();
        let addr = bound.local_addr().unwrap();
        let app = ftgo_van::app(&app_config).await.unwrap();
        let shutdown = bound.shutdown_handle();
        let server = tokio::spawn(bound.serve(app.router));
        Van {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            shutdown,
            server,
        }
    }

    async fn stop(self) {
        self.shutdown.shutdown();
        self.server.await.unwrap().unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn answer(r: reqwest::Response) -> (u16, Value) {
        let status = r.status().as_u16();
        if status >= 400 {
            assert_eq!(r.headers()["content-type"], "application/problem+json");
        }
        (status, r.json().await.unwrap())
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        Self::answer(
            self.http
                .post(self.url(path))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        Self::answer(
            self.http
                .put(self.url(path))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        Self::answer(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    async fn authorize(&self, key: &str, order: &str, amount: &str, card: &str) -> (u16, Value) {
        self.post(
            "/authorizations",
            json!({"key": key, "orderId": order, "amount": amount, "card": card}),
        )
        .await
    }

    async fn of_order(&self, order: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/authorizations?orderId={order}")).await;
        assert_eq!(status, 200);
        body["authorizations"].as_array().unwrap().clone()
    }
}

const CARD: &str = "4111111111111111";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizes_once_per_key() {
    let dir = TempDir::new("van-test");
    let van = Van::start(&dir, "van-a").await;
    let (status, first) = van.authorize("o-1:1", "o-1", "12.50", CARD).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["status"], "APPROVED");
    assert_eq!(first["network"], "van-a");
    assert_eq!(first["feeBps"], 150);
    assert_eq!(first["cardLast4"], "1111");
    assert!(first["id"].as_str().unwrap().starts_with("van-a-"));

    // The same key again: the stored result, never a second authorization.
    let (status, again) = van.authorize("o-1:1", "o-1", "12.50", CARD).await;
    assert_eq!((status, &again), (200, &first));
    // The key reused for another request: refused.
    let (status, p) = van.authorize("o-1:1", "o-1", "99.00", CARD).await;
    assert_eq!((status, p["key"].as_str()), (409, Some("o-1:1")));
    assert_eq!(van.of_order("o-1").await, vec![first.clone()]);
    assert_eq!(
        van.get(&format!(
            "/authorizations/{}",
            first["id"].as_str().unwrap()
        ))
        .await,
        (200, first)
    );

    // The test card is declined — a decision, stored like an approval.
    let (status, d) = van
        .authorize("o-2:1", "o-2", "5.00", ftgo_contracts::DECLINED_CARD)
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        (d["status"].as_str(), d["reason"].as_str()),
        (Some("DECLINED"), Some("CARD_DECLINED"))
    );
    let (status, p) = van
        .post(
            &format!("/authorizations/{}/cancel", d["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!((status, p["status"].as_str()), (409, Some("DECLINED")));

    // Survives a restart.
    van.stop().await;
    let van = Van::start(&dir, "van-a").await;
    assert_eq!(van.of_order("o-1").await.len(), 1);
    let (status, again) = van.authorize("o-1:1", "o-1", "12.50", CARD).await;
    assert_eq!((status, again["status"].as_str()), (200, Some("APPROVED")));
    van.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_releases_an_approval_once() {
    let dir = TempDir::new("van-test");
    let van = Van::start(&dir, "van-b").await;
    let (_, a) = van.authorize("o-c:1", "o-c", "7.00", CARD).await;
    let id = a["id"].as_str().unwrap();
    let path = format!("/authorizations/{id}/cancel");
    let (status, c) = van.post(&path, json!({})).await;
    assert_eq!((status, c["status"].as_str()), (200, Some("CANCELLED")));
    assert_eq!(van.post(&path, json!({})).await, (200, c));
    let (status, p) = van.post("/authorizations/nope/cancel", json!({})).await;
    assert_eq!((status, p["id"].as_str()), (404, Some("nope")));
    van.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_cancel_voids_after_and_refuses_before() {
    let dir = TempDir::new("van-test");
    let van = Van::start(&dir, "van-a").await;

    // After: the approval is voided; asking again changes nothing.
    let (_, a) = van.authorize("o-v:1", "o-v", "10.00", CARD).await;
    let (status, v) = van.post("/network-cancel", json!({"key": "o-v:1"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["action"], "VOIDED");
    assert_eq!(v["authorization"]["id"], a["id"]);
    assert_eq!(v["authorization"]["status"], "VOIDED");
    assert_eq!(v["authorization"]["reason"], "NETWORK_CANCELLED");
    let (status, again) = van.post("/network-cancel", json!({"key": "o-v:1"})).await;
    assert_eq!((status, again["action"].as_str()), (200, Some("NONE")));
    assert_eq!(again["authorization"]["status"], "VOIDED");
    // The voided key answers with its record, never approves again.
    let (status, replay) = van.authorize("o-v:1", "o-v", "10.00", CARD).await;
    assert_eq!((status, replay["status"].as_str()), (200, Some("VOIDED")));
    // Cancelling a voided authorization is a no-op.
    let path = format!("/authorizations/{}/cancel", a["id"].as_str().unwrap());
    assert_eq!(van.post(&path, json!({})).await.1["status"], "VOIDED");

    // Before: a tombstone; the late request is refused and nothing is authorized.
    let (status, t) = van
        .post("/network-cancel", json!({"key": "o-t:1", "orderId": "o-t"}))
        .await;
    assert_eq!((status, t["action"].as_str()), (200, Some("TOMBSTONED")));
    let (status, p) = van.authorize("o-t:1", "o-t", "10.00", CARD).await;
    assert_eq!((status, p["key"].as_str()), (409, Some("o-t:1")));
    let listed = van.of_order("o-t").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "VOIDED");
    assert_eq!(listed[0]["reason"], "VOIDED_BEFORE_ARRIVAL");
    assert_eq!(listed[0]["amount"], Value::Null);
    van.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_injected_at_runtime() {
    let dir = TempDir::new("van-test");
    let van = Van::start(&dir, "van-a").await;
    assert_eq!(van.get("/admin/faults").await.1, json!(Faults::default()));

    // Errors: 503, nothing stored.
    let (status, f) = van.put("/admin/faults", json!({"errorRate": 1.0})).await;
    assert_eq!((status, f["errorRate"].as_f64()), (200, Some(1.0)));
    for n in 0..5 {
        let (status, _) = van
            .authorize(&format!("o-e:{n}"), "o-e", "1.00", CARD)
            .await;
        assert_eq!(status, 503);
    }
    assert!(van.of_order("o-e").await.is_empty());
    // Only authorizations are affected unless named: network-cancel still works.
    let (status, _) = van.post("/network-cancel", json!({"key": "o-e:9"})).await;
    assert_eq!(status, 200);
    van.put(
        "/admin/faults",
        json!({"errorRate": 1.0, "operations": ["network-cancel"]}),
    )
    .await;
    assert_eq!(
        van.post("/network-cancel", json!({"key": "o-e:8"})).await.0,
        503
    );
    assert_eq!(van.authorize("o-e:1", "o-e", "1.00", CARD).await.0, 201);

    // Latency comes after the authorization is stored: a client that gives up early
    // leaves an authorization behind (a genuine unknown outcome).
    van.put("/admin/faults", json!({"latencyMs": 600})).await;
    let timed_out = van
        .http
        .post(van.url("/authorizations"))
        .timeout(Duration::from_millis(150))
        .json(&json!({"key": "o-l:1", "orderId": "o-l", "amount": "3.00", "card": CARD}))
        .send()
        .await;
    assert!(timed_out.unwrap_err().is_timeout());
    let listed = van.of_order("o-l").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "APPROVED");

    // Healthy again.
    van.put("/admin/faults", json!({})).await;
    let (status, n) = van.get("/network").await;
    assert_eq!(status, 200);
    assert_eq!(n["network"], "van-a");
    assert_eq!(n["faults"]["errorRate"], 0.0);

    // Out of range: 400 naming the field; unknown fields: 422.
    for (body, field, code) in [
        (json!({"errorRate": 1.5}), "errorRate", 400),
        (json!({"errorRate": -0.1}), "errorRate", 400),
        (json!({"latencyMs": 600_000}), "latencyMs", 400),
        (json!({"latencyMs": -1}), "latencyMs", 422),
        (json!({"operations": ["refund"]}), "operations[0]", 422),
        (json!({"chaos": true}), "chaos", 422),
    ] {
        let (status, p) = van.put("/admin/faults", body.clone()).await;
        assert_eq!((status, p["field"].as_str()), (code, Some(field)), "{body}");
    }
    van.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_problems_naming_the_field() {
    let dir = TempDir::new("van-test");
    let van = Van::start(&dir, "van-a").await;
    let good = json!({"key": "k", "orderId": "o", "amount": "1.00", "card": CARD});
    for (change, field, code) in [
        (json!({"key": " "}), "key", 400),
        (json!({"key": "k".repeat(201)}), "key", 400),
        (json!({"orderId": ""}), "orderId", 400),
        (json!({"amount": "0.00"}), "amount", 400),
        (json!({"amount": "-1.00"}), "amount", 422),
        (json!({"amount": 12}), "amount", 422),
        (json!({"card": "4111"}), "card", 400),
        (json!({"card": "4111-1111-1111-1111"}), "card", 400),
        (json!({"extra": 1}), "extra", 422),
    ] {
        let mut body = good.clone();
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, p) = van.post("/authorizations", body.clone()).await;
        assert_eq!((status, p["field"].as_str()), (code, Some(field)), "{body}");
    }
    let (status, p) = van.post("/authorizations", json!({"orderId": "o"})).await;
    assert_eq!((status, p["field"].as_str()), (422, Some("key")));
    let (status, p) = van.post("/network-cancel", json!({"key": ""})).await;
    assert_eq!((status, p["field"].as_str()), (400, Some("key")));
    let r = van
        .http
        .post(van.url("/authorizations"))
        .body("key=k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(van.get("/authorizations/nope").await.0, 404);
    assert_eq!(van.get("/authorizations?limit=0").await.0, 400);
    // Nothing was stored by any of them.
    assert!(van.of_order("o").await.is_empty());
    let (status, doc) = van.get("/openapi.json").await;
    assert_eq!(status, 200);
    for path in [
        "/authorizations",
        "/authorizations/{id}/cancel",
        "/network-cancel",
        "/admin/faults",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    van.stop().await;
}
