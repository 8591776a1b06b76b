//! The seed job against a real delivery service on a free port (standing in for the
//! gateway's `/couriers/**` route, which forwards to it unchanged): a seed file written
//! before couriers were seeded gets its couriers made available on the next start, once.

use std::time::Duration;

use ftgo_delivery::DeliveryConfig;
use keel_chassis::{KeelConfig, Service};
use keel_store::testing::TempDir;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_seed_gets_its_couriers_once() {
    let dir = TempDir::new("seed-test");
    let app_config = DeliveryConfig {
        database: dir.sqlite_url("delivery.db"),
        bus: dir.sqlite_url("bus.db"),
        assign_interval_ms: 0,
        registration: None,
    };
    let mut config = KeelConfig::<DeliveryConfig>::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.app = app_config.clone();
    let bound = Service::from_config("delivery", config)
        .handle_signals(false)
        .bind()
        .await
        .unwrap();
    let base = format!("http://{}", bound.local_addr().unwrap());
    let app = ftgo_delivery::app(&app_config, bound.shutdown_token())
        .await
        .unwrap();
    bound.spawn(app.background);
    let shutdown = bound.shutdown_handle();
    let server = tokio::spawn(bound.serve(app.router));

    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("seed.json"),
        r#"{"consumers": [["Ada", "c1"]], "restaurants": [["Ajanta", "r1"]]}"#,
    )
    .unwrap();
    let seeded = tokio::time::timeout(Duration::from_secs(30), ftgo_system::seed(&base, &data))
        .await
        .expect("seeded in time")
        .unwrap();
    assert_eq!(seeded.couriers, ["courier-1", "courier-2", "courier-3"]);
    assert_eq!(seeded.consumers, [("Ada".to_owned(), "c1".to_owned())]);
    let couriers: Value = reqwest::get(format!("{base}/couriers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        couriers,
        json!({"couriers": [
            {"courierId": "courier-1", "available": true, "activeDeliveries": []},
            {"courierId": "courier-2", "available": true, "activeDeliveries": []},
            {"courierId": "courier-3", "available": true, "activeDeliveries": []}
        ]})
    );
    // Remembered: the next start needs no service at all.
    shutdown.shutdown();
    server.await.unwrap().unwrap();
    let again = ftgo_system::seed("http://127.0.0.1:1", &data)
        .await
        .unwrap();
    assert_eq!(again, seeded);
}
