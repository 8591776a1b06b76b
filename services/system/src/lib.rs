//! Reference system: seeds demo data through the gateway on first start (a few consumers
//! and restaurants, and couriers made available for deliveries), remembers it in the data
//! directory so a second start keeps it, and prints copy-paste `curl` commands that place
//! an order and read it back.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What was seeded (kept in `<data dir>/seed.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Seeded {
    /// Consumer ids, by name.
    pub consumers: Vec<(String, String)>,
    /// Restaurant ids, by name.
    pub restaurants: Vec<(String, String)>,
    /// Couriers made available (ids). Empty in a seed file written before couriers were
    /// seeded: the next start makes them available and adds them.
    #[serde(default)]
    pub couriers: Vec<String>,
}

fn seed_file(data_dir: &Path) -> PathBuf {
    data_dir.join("seed.json")
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> Result<Value, String> {
    let res = http
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = res.status();
    let text = res.text().await.map_err(|e| format!("POST {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("POST {url}: {status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("POST {url}: {e}: {text}"))
}

/// The demo consumers: (name, order limit, card).
const CONSUMERS: &[(&str, &str, &str)] = &[
    ("Ada Lovelace", "500.00", "4242424242424242"),
    ("Grace Hopper", "30.00", "4111111111111111"),
    ("Declined Dave", "500.00", "4000000000000002"),
];

/// The demo couriers (ids), made available for deliveries.
const COURIERS: &[&str] = &["courier-1", "courier-2", "courier-3"];

fn restaurants() -> Vec<Value> {
    vec![
        json!({"name": "Ajanta", "menu": [
            {"id": "chicken-vindaloo", "name": "Chicken Vindaloo", "price": "12.50", "stock": 100},
            {"id": "dal", "name": "Dal Makhani", "price": "9.00"},
            {"id": "naan", "name": "Garlic Naan", "price": "3.50", "stock": 200}
        ]}),
        json!({"name": "Sushi Ko", "menu": [
            {"id": "maki", "name": "Salmon Maki", "price": "8.00", "stock": 50},
            {"id": "omakase", "name": "Omakase", "price": "60.00", "stock": 2}
        ]}),
    ]
}

/// Waits until the gateway routes each of `probes` (paths of unknown ids) to its service.
async fn wait_routable(
    http: &reqwest::Client,
    gateway: &str,
    probes: &[&str],
    within: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let mut routed = true;
        for probe in probes {
            let r = http.get(format!("{gateway}{probe}")).send().await;
            // 404 from the service itself (problem+json naming the id) means it is routed.
            routed &= r.is_ok_and(|r| r.status() == reqwest::StatusCode::NOT_FOUND);
        }
        if routed {
            return Ok(());
        }
        if start.elapsed() > within {
            return Err(format!(
                "the gateway at {gateway} does not route {} yet",
                probes.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Makes the demo couriers available (`POST /couriers/{id}/availability`, idempotent).
async fn seed_couriers(http: &reqwest::Client, gateway: &str) -> Result<Vec<String>, String> {
    let mut ids = Vec::new();
    for id in COURIERS {
        post(
            http,
            &format!("{gateway}/couriers/{id}/availability"),
            json!({"available": true}),
        )
        .await?;
        ids.push((*id).to_owned());
    }
    Ok(ids)
}

fn save(file: &Path, seeded: &Seeded) -> Result<(), String> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let text = serde_json::to_string_pretty(seeded).map_err(|e| e.to_string())?;
    std::fs::write(file, text).map_err(|e| format!("{}: {e}", file.display()))
}

fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())
}

/// Seeds demo data through `gateway` unless `data_dir` says it was done; returns what is
/// seeded either way.
pub async fn seed(gateway: &str, data_dir: &Path) -> Result<Seeded, String> {
    let file = seed_file(data_dir);
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(mut s) = serde_json::from_str::<Seeded>(&text)
    {
        if s.couriers.is_empty() {
            // Seeded before couriers were: add them now.
            let http = client()?;
            wait_routable(&http, gateway, &["/couriers/none"], Duration::from_secs(60)).await?;
            s.couriers = seed_couriers(&http, gateway).await?;
            save(&file, &s)?;
        }
        return Ok(s);
    }
    let http = client()?;
    wait_routable(
        &http,
        gateway,
        &["/consumers/none", "/restaurants/none", "/couriers/none"],
        Duration::from_secs(60),
    )
    .await?;
    let mut seeded = Seeded {
        consumers: Vec::new(),
        restaurants: Vec::new(),
        couriers: Vec::new(),
    };
    for (name, limit, card) in CONSUMERS {
        let v = post(
            &http,
            &format!("{gateway}/consumers"),
            json!({"name": name, "orderLimit": limit, "card": card}),
        )
        .await?;
        let id = v["consumerId"].as_str().ok_or("no consumerId")?.to_owned();
        seeded.consumers.push(((*name).to_owned(), id));
    }
    for r in restaurants() {
        let name = r["name"].as_str().unwrap_or_default().to_owned();
        let v = post(&http, &format!("{gateway}/restaurants"), r).await?;
        let id = v["restaurantId"]
            .as_str()
            .ok_or("no restaurantId")?
            .to_owned();
        seeded.restaurants.push((name, id));
    }
    seeded.couriers = seed_couriers(&http, gateway).await?;
    save(&file, &seeded)?;
    Ok(seeded)
}

/// Three copy-paste commands: place an order, read it back (composed), list the sagas.
pub fn try_commands(gateway: &str, s: &Seeded) -> Vec<String> {
    let consumer = s.consumers.first().map_or("?", |c| c.1.as_str());
    let restaurant = s.restaurants.first().map_or("?", |r| r.1.as_str());
    vec![
        format!(
            "ORDER=$(curl -s -XPOST {gateway}/orders -H 'content-type: application/json' -d '{{\"consumerId\":\"{consumer}\",\"restaurantId\":\"{restaurant}\",\"lineItems\":[{{\"menuItemId\":\"chicken-vindaloo\",\"quantity\":2}}]}}' | sed 's/.*\"orderId\":\"\\([^\"]*\\)\".*/\\1/'); echo $ORDER"
        ),
        format!("curl -s {gateway}/orders/$ORDER"),
        format!("curl -s '{gateway}/sagas?type=create-order'"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_name_the_seeded_ids() {
        let s = Seeded {
            consumers: vec![("Ada".into(), "c1".into())],
            restaurants: vec![("Ajanta".into(), "r1".into())],
            couriers: vec!["courier-1".into()],
        };
        let c = try_commands("http://127.0.0.1:8080", &s);
        assert!(
            c[0].contains("\\\"consumerId\\\":\\\"c1\\\"")
                || c[0].contains("\"consumerId\":\"c1\""),
            "{}",
            c[0]
        );
        assert!(c[0].contains("r1") && c[1].ends_with("/orders/$ORDER"));
    }

    #[test]
    fn second_start_keeps_the_seed() {
        let dir = std::env::temp_dir().join(format!("ftgo-seed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = Seeded {
            consumers: vec![("Ada".into(), "c1".into())],
            restaurants: vec![],
            couriers: vec!["courier-1".into()],
        };
        std::fs::write(seed_file(&dir), serde_json::to_string(&s).unwrap()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // No gateway is running: a seeded directory must not need one.
        let got = rt.block_on(seed("http://127.0.0.1:1", &dir)).unwrap();
        assert_eq!(got, s);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_seed_file_from_before_couriers_still_reads() {
        let old = r#"{"consumers": [["Ada", "c1"]], "restaurants": [["Ajanta", "r1"]]}"#;
        let s: Seeded = serde_json::from_str(old).unwrap();
        assert!(s.couriers.is_empty());
        assert_eq!(s.restaurants, vec![("Ajanta".to_owned(), "r1".to_owned())]);
    }
}
