//! The invariants a run must leave true, checked against the services' own APIs once the
//! system has settled:
//! - every order is terminal (`APPROVED`, `REJECTED`, `CANCELLED`);
//! - no order is authorized twice: across the payment networks an approved order has exactly
//!   one live authorization, any other order none;
//! - accounts agree: an approved order has an `AUTHORIZED` payment for its total, any other
//!   order none;
//! - stock agrees: the run's restaurant has its starting stock minus the approved units;
//! - the order-history view equals the order service's state for every order.
//!
//! Services catch up asynchronously, so the check repeats (each order until it holds) for up
//! to [`SETTLE`] before it reports what still does not hold.

use std::{
    collections::BTreeMap,
    fmt,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use serde_json::Value;

use crate::{
    chaos::NETWORKS,
    client::Systems,
    load::{Fixture, Report},
};

/// How long the check waits for the system to converge.
pub const SETTLE: Duration = Duration::from_secs(90);

/// An invariant that does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The order (or `restaurant` for stock).
    pub subject: String,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.what)
    }
}

fn violation(subject: &str, what: impl Into<String>) -> Violation {
    Violation {
        subject: subject.to_owned(),
        what: what.into(),
    }
}

/// What the check needs of one order.
#[derive(Debug, Clone)]
struct OrderFacts {
    state: String,
    bowls: u64,
}

/// Checks every placed order of `report`, and every other order of the fixture's consumers
/// the history view lists (when it runs); returns the violations left after [`SETTLE`] and
/// how many orders were checked.
pub async fn check(
    systems: &Systems,
    fixture: &Fixture,
    report: &Report,
) -> (Vec<Violation>, usize) {
    let ids: Vec<String> = report.orders.iter().filter_map(|o| o.id.clone()).collect();
    let deadline = Instant::now() + SETTLE;
    // Optional parts of the topology: without networks the card rule decides payments.
    let present =
        |s: &'static str| async move { systems.service(s, Duration::from_secs(10)).await.is_ok() };
    let parts = Parts {
        networks: present(NETWORKS[0]).await,
        history: present("order-history").await,
    };
    // Orders the report does not know — the warm-up's, and any whose POST failed after the
    // order service had created it — are found through the history view's per-consumer
    // list, and checked as well.
    let mut ids = ids;
    if parts.history {
        for consumer in fixture.consumers.iter().chain([&fixture.declined]) {
            match listed_orders(systems, consumer).await {
                Ok(listed) => {
                    for id in listed {
                        if !ids.contains(&id) {
                            ids.push(id);
                        }
                    }
                }
                Err(e) => {
                    return (vec![violation(consumer, e)], ids.len());
                }
            }
        }
    }
    let mut pending: Vec<String> = ids.clone();
    let mut facts: BTreeMap<String, OrderFacts> = BTreeMap::new();
    let mut last: Vec<Violation>;
    // Per order: terminal, payments, networks, history — repeated until each holds.
    loop {
        last = Vec::new();
        let results: Vec<(String, Option<OrderFacts>, Vec<Violation>)> =
            stream::iter(pending.iter().cloned())
                .map(|id| async move {
                    let (f, vs) = check_order(systems, &id, parts).await;
                    (id, f, vs)
                })
                .buffer_unordered(16)
                .collect()
                .await;
        let mut still = Vec::new();
        for (id, f, vs) in results {
            if let Some(f) = f {
                facts.insert(id.clone(), f);
            }
            if !vs.is_empty() {
                still.push(id);
                last.extend(vs);
            }
        }
        pending = still;
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Stock, once every order is known.
    loop {
        match check_stock(systems, fixture, &facts).await {
            None => break,
            Some(v) if Instant::now() >= deadline => {
                last.push(v);
                break;
            }
            Some(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    (last, ids.len())
}

/// Which optional services the topology runs.
#[derive(Debug, Clone, Copy)]
struct Parts {
    networks: bool,
    history: bool,
}

async fn check_order(
    systems: &Systems,
    id: &str,
    parts: Parts,
) -> (Option<OrderFacts>, Vec<Violation>) {
    let wait = Duration::from_secs(5);
    let mut out = Vec::new();
    let order = match systems.get("order", &format!("/orders/{id}"), wait).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return (
                None,
                vec![violation(id, "the order service does not know the order")],
            );
        }
        Err(e) => return (None, vec![violation(id, e)]),
    };
    let state = order["state"].as_str().unwrap_or_default().to_owned();
    let bowls = order["lineItems"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|i| i["menuItemId"] == "bowl")
                .filter_map(|i| i["quantity"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    let total = order["orderTotal"].as_str().map(str::to_owned);
    let facts = OrderFacts {
        state: state.clone(),
        bowls,
    };
    if !matches!(state.as_str(), "APPROVED" | "REJECTED" | "CANCELLED") {
        out.push(violation(id, format!("not terminal: {state}")));
        return (Some(facts), out);
    }
    let approved = state == "APPROVED";
    // Accounting.
    match systems
        .get("accounting", &format!("/payments/{id}"), wait)
        .await
    {
        Ok(Some(p)) => {
            let ps = p["state"].as_str().unwrap_or_default();
            if approved && ps != "AUTHORIZED" {
                out.push(violation(id, format!("approved, but its payment is {ps}")));
            }
            if approved && p["amount"].as_str() != total.as_deref() {
                out.push(violation(
                    id,
                    format!("payment amount {} ≠ order total {:?}", p["amount"], total),
                ));
            }
            if !approved && ps == "AUTHORIZED" {
                out.push(violation(
                    id,
                    format!("{state}, but its payment is AUTHORIZED"),
                ));
            }
        }
        Ok(None) if approved => out.push(violation(id, "approved, but accounting has no payment")),
        Ok(None) => {}
        Err(e) => out.push(violation(id, e)),
    }
    // Payment networks: live authorizations across all of them.
    if parts.networks {
        let mut live = 0;
        for network in NETWORKS {
            match systems
                .get(network, &format!("/authorizations?orderId={id}"), wait)
                .await
            {
                Ok(Some(v)) => live += live_authorizations(&v),
                Ok(None) => {}
                Err(e) => out.push(violation(id, e)),
            }
        }
        let want = usize::from(approved);
        if live != want {
            out.push(violation(
                id,
                format!(
                    "{state}, but the payment networks hold {live} live authorizations (want {want})"
                ),
            ));
        }
    }
    // Order history.
    if parts.history {
        match systems
            .get("order-history", &format!("/orders/{id}"), wait)
            .await
        {
            Ok(Some(h)) => {
                let hs = h["state"].as_str().unwrap_or_default();
                if hs != state {
                    out.push(violation(
                        id,
                        format!("order history says {hs}, order says {state}"),
                    ));
                }
            }
            Ok(None) => out.push(violation(id, "missing from order history")),
            Err(e) => out.push(violation(id, e)),
        }
    }
    (Some(facts), out)
}

/// Every order of `consumer` in the history view (all pages).
async fn listed_orders(systems: &Systems, consumer: &str) -> Result<Vec<String>, String> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/orders?consumerId={consumer}&limit=100{cursor}");
        let page = systems
            .get("order-history", &path, Duration::from_secs(10))
            .await?
            .ok_or_else(|| format!("GET order-history{path}: 404"))?;
        for o in page["orders"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(id) = o["orderId"].as_str() {
                ids.push(id.to_owned());
            }
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return Ok(ids),
        }
    }
}

/// Approved (not cancelled or voided) authorizations in a network's answer: a list, or an
/// object with an `authorizations` list, of objects with a `status`.
fn live_authorizations(v: &Value) -> usize {
    let list = v
        .as_array()
        .or_else(|| v["authorizations"].as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    list.iter().filter(|a| a["status"] == "APPROVED").count()
}

async fn check_stock(
    systems: &Systems,
    fixture: &Fixture,
    facts: &BTreeMap<String, OrderFacts>,
) -> Option<Violation> {
    let (item, start) = &fixture.stocked_item;
    let sold: u64 = facts
        .values()
        .filter(|f| f.state == "APPROVED")
        .map(|f| f.bowls)
        .sum();
    // The warm-up order's units, unless it was checked (found through the history view).
    let warm_up_checked = fixture
        .warm_up_order
        .as_ref()
        .is_some_and(|id| facts.contains_key(id));
    let sold = sold
        + if warm_up_checked {
            0
        } else {
            fixture.warm_up_units
        };
    let want = start.saturating_sub(sold);
    let r = systems
        .get(
            "restaurant",
            &format!("/restaurants/{}", fixture.restaurant),
            Duration::from_secs(5),
        )
        .await;
    let have = match r {
        Ok(Some(v)) => v["menu"]
            .as_array()
            .and_then(|m| m.iter().find(|i| i["id"] == item.as_str()))
            .and_then(|i| i["stock"].as_u64()),
        Ok(None) => return Some(violation("restaurant", "the run's restaurant is gone")),
        Err(e) => return Some(violation("restaurant", e)),
    };
    (have != Some(want)).then(|| {
        violation(
            "restaurant",
            format!(
                "stock of {item} is {have:?}, want {want} ({start} − {sold} units in approved orders)"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn live_authorizations_are_the_approved_ones() {
        let v = json!([{"status": "APPROVED"}, {"status": "VOIDED"}, {"status": "CANCELLED"}]);
        assert_eq!(live_authorizations(&v), 1);
        let v = json!({"authorizations": [{"status": "APPROVED"}, {"status": "APPROVED"}]});
        assert_eq!(live_authorizations(&v), 2);
        assert_eq!(live_authorizations(&json!({})), 0);
    }
}
