//! The registry through its real HTTP interface: every Eureka endpoint, the watch stream,
//! admin protection.

use std::{net::SocketAddr, time::Duration};

use keel_chassis::{Service, ShutdownHandle};
use keel_registry::{RegistrySettings, default_config};
use serde_json::{Value, json};

struct Reg {
    addr: SocketAddr,
    _handle: ShutdownHandle,
    http: reqwest::Client,
}

impl Reg {
    fn url(&self, p: &str) -> String {
        format!("http://{}{}", self.addr, p)
    }
    async fn json(&self, p: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(p))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

async fn start(tune: impl FnOnce(&mut keel_chassis::KeelConfig<RegistrySettings>)) -> Reg {
    let mut c = default_config();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    tune(&mut c);
    let svc = Service::from_config("registry", c).handle_signals(false);
    let router = keel_registry::app(&svc);
    let bound = svc.bind().await.unwrap();
    let addr = bound.local_addr().unwrap();
    let handle = bound.shutdown_handle();
    tokio::spawn(bound.serve(router));
    Reg {
        addr,
        _handle: handle,
        http: reqwest::Client::new(),
    }
}

fn instance(app: &str, id: &str, port: u16) -> Value {
    json!({"instance": {
        "instanceId": id, "hostName": "localhost", "app": app.to_uppercase(), "ipAddr": "127.0.0.1",
        "status": "UP", "overriddenstatus": "UNKNOWN",
        "port": {"$": port, "@enabled": "true"}, "securePort": {"$": 443, "@enabled": "false"},
        "countryId": 1,
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
        "metadata": {"version": "1.0"},
        "vipAddress": app, "secureVipAddress": app,
        "lastDirtyTimestamp": "1000", "lastUpdatedTimestamp": "1000"
    }})
}

async fn register(r: &Reg, app: &str, id: &str, port: u16) -> u16 {
    r.http
        .post(r.url(&format!("/eureka/apps/{}", app.to_uppercase())))
        .json(&instance(app, id, port))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn register_fetch_renew_cancel_round_trip() {
    let r = start(|_| {}).await;
    assert_eq!(register(&r, "orders", "orders-1", 9001).await, 204);
    assert_eq!(register(&r, "orders", "orders-2", 9002).await, 204);
    assert_eq!(register(&r, "kitchen", "kitchen-1", 9101).await, 204);

    let (s, v) = r.json("/eureka/apps").await;
    assert_eq!(s, 200);
    assert_eq!(v["applications"]["apps__hashcode"], "UP_3_");
    assert_eq!(
        v["applications"]["application"].as_array().unwrap().len(),
        2
    );

    let (s, v) = r.json("/eureka/apps/orders").await;
    assert_eq!(s, 200);
    assert_eq!(v["application"]["name"], "ORDERS");
    assert_eq!(v["application"]["instance"].as_array().unwrap().len(), 2);

    let (s, v) = r.json("/eureka/apps/ORDERS/orders-1").await;
    assert_eq!(s, 200);
    assert_eq!(v["instance"]["port"]["$"], 9001);
    assert_eq!(v["instance"]["metadata"]["version"], "1.0");
    let (s, v) = r.json("/eureka/instances/kitchen-1").await;
    assert_eq!((s, v["instance"]["app"].as_str()), (200, Some("KITCHEN")));
    let (s, v) = r.json("/eureka/vips/orders").await;
    assert_eq!(s, 200);
    assert_eq!(
        v["applications"]["application"][0]["instance"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Renew: 200 for known, 404 for unknown (so the client re-registers).
    let renew = |id: &str| {
        r.http
            .put(r.url(&format!(
                "/eureka/apps/ORDERS/{id}?status=UP&lastDirtyTimestamp=1000"
            )))
            .send()
    };
    assert_eq!(renew("orders-1").await.unwrap().status(), 200);
    assert_eq!(renew("ghost").await.unwrap().status(), 404);
    // A client with newer data than ours is asked to register again.
    let res = r
        .http
        .put(r.url("/eureka/apps/ORDERS/orders-1?status=UP&lastDirtyTimestamp=5000"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // Status override and its removal.
    let res = r
        .http
        .put(r.url("/eureka/apps/ORDERS/orders-2/status?value=OUT_OF_SERVICE"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, v) = r.json("/eureka/apps/ORDERS/orders-2").await;
    assert_eq!(v["instance"]["status"], "OUT_OF_SERVICE");
    assert_eq!(v["instance"]["overriddenstatus"], "OUT_OF_SERVICE");
    let (_, v) = r.json("/eureka/apps").await;
    assert_eq!(
        v["applications"]["apps__hashcode"],
        "OUT_OF_SERVICE_1_UP_2_"
    );
    let res = r
        .http
        .delete(r.url("/eureka/apps/ORDERS/orders-2/status?value=UP"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, v) = r.json("/eureka/apps/ORDERS/orders-2").await;
    assert_eq!(v["instance"]["status"], "UP");

    // Metadata.
    let res = r
        .http
        .put(r.url("/eureka/apps/ORDERS/orders-1/metadata?zone=eu-1&version=2.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, v) = r.json("/eureka/apps/ORDERS/orders-1").await;
    assert_eq!(v["instance"]["metadata"]["zone"], "eu-1");
    assert_eq!(v["instance"]["metadata"]["version"], "2.0");

    // Delta: recent changes with actions and the full registry's hash code.
    let (_, v) = r.json("/eureka/apps/delta").await;
    assert_eq!(v["applications"]["apps__hashcode"], "UP_3_");
    let apps = v["applications"]["application"].as_array().unwrap();
    assert!(apps.iter().any(|a| a["name"] == "KITCHEN"));

    // Cancel, then the instance is gone; cancelling again is 404.
    let del = || r.http.delete(r.url("/eureka/apps/ORDERS/orders-1")).send();
    assert_eq!(del().await.unwrap().status(), 200);
    assert_eq!(del().await.unwrap().status(), 404);
    let (s, _) = r.json("/eureka/apps/ORDERS/orders-1").await;
    assert_eq!(s, 404);
    let (_, v) = r.json("/eureka/apps/delta").await;
    let deleted = v["applications"]["application"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["instance"].as_array().unwrap().clone())
        .find(|i| i["instanceId"] == "orders-1")
        .unwrap();
    assert_eq!(deleted["actionType"], "DELETED");
    assert_eq!(v["applications"]["apps__hashcode"], "UP_2_");
}

#[tokio::test]
async fn xml_is_served_when_json_is_not_asked_for() {
    let r = start(|_| {}).await;
    register(&r, "payments", "p-1", 7001).await;
    let res = r.http.get(r.url("/eureka/apps/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/xml");
    let body = res.text().await.unwrap();
    assert!(body.contains("<applications>"), "{body}");
    assert!(
        body.contains("<apps__hashcode>UP_1_</apps__hashcode>"),
        "{body}"
    );
    assert!(
        body.contains("<port enabled=\"true\">7001</port>"),
        "{body}"
    );
    assert!(body.contains("<version>1.0</version>"), "{body}");
}

#[tokio::test]
async fn malformed_registrations_get_400_with_a_reason() {
    let r = start(|_| {}).await;
    let post = |body: String| {
        r.http
            .post(r.url("/eureka/apps/ORDERS"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let res = post("{not json".into()).await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let v: Value = res.json().await.unwrap();
    assert!(v["detail"].as_str().unwrap().contains("malformed"), "{v}");

    let mut i = instance("orders", "o-1", 1);
    i["instance"]["hostName"] = json!("");
    let v: Value = post(i.to_string()).await.unwrap().json().await.unwrap();
    assert_eq!(v["status"], 400);
    assert_eq!(v["detail"], "Missing hostname");

    let mut i = instance("orders", "o-1", 1);
    i["instance"]
        .as_object_mut()
        .unwrap()
        .remove("dataCenterInfo");
    let v: Value = post(i.to_string()).await.unwrap().json().await.unwrap();
    assert_eq!(v["detail"], "Missing dataCenterInfo");

    let i = instance("kitchen", "k-1", 1);
    let v: Value = post(i.to_string()).await.unwrap().json().await.unwrap();
    assert!(
        v["detail"].as_str().unwrap().contains("does not match"),
        "{v}"
    );

    let mut i = instance("orders", "o-1", 1);
    i["instance"]["status"] = json!("SLEEPING");
    let v: Value = post(i.to_string()).await.unwrap().json().await.unwrap();
    assert_eq!(v["status"], 400);

    let res = r
        .http
        .put(r.url("/eureka/apps/ORDERS/o-1/status?value=NAPPING"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // Nothing was registered by any of the above.
    let (_, v) = r.json("/eureka/apps").await;
    assert!(
        v["applications"]["application"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// Reads server-sent events from a response, one `(event, data)` at a time.
struct Sse {
    res: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = e.trim().to_owned();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if event.is_empty() {
                    continue; // keep-alive comment
                }
                return (event, serde_json::from_str(&data).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.res.chunk())
                .await
                .expect("an event within 10 s")
                .unwrap()
                .expect("stream open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn watchers_get_a_snapshot_then_every_change() {
    let r = start(|_| {}).await;
    register(&r, "orders", "o-1", 1).await;
    let res = r.http.get(r.url("/keel/v1/watch")).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut sse = Sse {
        res,
        buf: String::new(),
    };
    let (ev, snap) = sse.next().await;
    assert_eq!(ev, "snapshot");
    assert_eq!(snap["applications"][0]["instance"][0]["instanceId"], "o-1");
    let index = snap["index"].as_u64().unwrap();

    register(&r, "orders", "o-2", 2).await;
    let (ev, change) = sse.next().await;
    assert_eq!(ev, "change");
    assert_eq!(change["action"], "ADDED");
    assert_eq!(change["instanceId"], "o-2");
    assert_eq!(change["index"].as_u64().unwrap(), index + 1);

    r.http
        .delete(r.url("/eureka/apps/ORDERS/o-1"))
        .send()
        .await
        .unwrap();
    let (_, change) = sse.next().await;
    assert_eq!(change["action"], "DELETED");
    assert_eq!(change["instanceId"], "o-1");

    // A filtered watch sees only its application.
    let res = r
        .http
        .get(r.url("/keel/v1/watch?app=kitchen"))
        .send()
        .await
        .unwrap();
    let mut only = Sse {
        res,
        buf: String::new(),
    };
    let (_, snap) = only.next().await;
    assert!(snap["applications"].as_array().unwrap().is_empty());
    register(&r, "orders", "o-3", 3).await;
    register(&r, "kitchen", "k-1", 4).await;
    let (_, change) = only.next().await;
    assert_eq!(change["app"], "KITCHEN");
}

#[tokio::test]
async fn admin_endpoints_and_chassis_endpoints_need_the_token_when_set() {
    let r = start(|c| c.server.admin_token = Some("s3cret".into())).await;
    for (method, path) in [
        ("POST", "/keel/v1/admin/evict"),
        ("GET", "/metrics"),
        ("GET", "/health"),
    ] {
        let req = r.http.request(method.parse().unwrap(), r.url(path));
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "{path}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let req = r
            .http
            .request(method.parse().unwrap(), r.url(path))
            .bearer_auth("s3cret");
        assert_eq!(req.send().await.unwrap().status(), 200, "{path}");
    }
    // Probes stay open.
    assert_eq!(
        r.http
            .get(r.url("/health/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let res = r
        .http
        .put(r.url("/keel/v1/admin/self-preservation?enabled=maybe"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = r
        .http
        .put(r.url("/keel/v1/admin/self-preservation?enabled=true"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["selfPreservationEnabled"], true);
}

#[tokio::test]
async fn expired_leases_disappear_and_the_dashboard_shows_state() {
    let r = start(|c| c.app.eviction_interval_ms = 100).await;
    let mut i = instance("orders", "short", 1);
    // A 3 s lease: the dashboard below is read inside it on a stalled machine too.
    i["instance"]["leaseInfo"] = json!({"renewalIntervalInSecs": 1, "durationInSecs": 3});
    let res = r
        .http
        .post(r.url("/eureka/apps/ORDERS"))
        .json(&i)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let html = r
        .http
        .get(r.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("short"), "{html}");
    assert!(html.contains("Self-preservation"), "{html}");
    // No renewals: gone within the lease plus an eviction pass or two.
    let mut gone = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if r.json("/eureka/apps/ORDERS/short").await.0 == 404 {
            gone = true;
            break;
        }
    }
    assert!(gone, "expired lease was evicted");
}
