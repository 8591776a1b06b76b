//! The replica of restaurants and menus, fed by `restaurant.events` (consumer group
//! `order`) through the inbox, so every event takes effect once: `RestaurantCreated`
//! upserts a restaurant and its menu; `MenuStockChanged` sets stock when its version is
//! newer than the replica's (older or repeated versions are ignored, so the replica
//! converges whatever the order of delivery).

use std::time::Duration;

use ftgo_contracts::{
    destinations,
    events::{self, MenuStockChanged, RestaurantCreated},
    services,
};
use keel_messaging::{Bus, BusError, Consumer, Delivery, HandlerError, Inbox, Subscription};
use keel_store::Tx;

use crate::db::{self, StockUpdate};

/// The inbox (consumer) name of the replica's subscription.
pub(crate) const INBOX: &str = "order.restaurant-events";

/// Subscribes the replica to `restaurant.events`.
pub(crate) async fn subscribe(inbox: &Inbox, bus: &dyn Bus) -> Result<Consumer, BusError> {
    inbox
        .subscribe(
            bus,
            // A stock change for a restaurant not (yet) in the replica is retried for about
            // half a minute, then dead-lettered (`restaurant.events.dlq`), never dropped.
            Subscription::new(destinations::RESTAURANT_EVENTS, services::ORDER)
                .max_attempts(10)
                .backoff(Duration::from_millis(100), Duration::from_secs(5)),
            apply,
        )
        .await
}

async fn apply(mut tx: Tx, d: Delivery) -> Result<Tx, HandlerError> {
    let m = &d.message;
    match m.message_type() {
        Some(events::RESTAURANT_CREATED) => {
            let e: RestaurantCreated = m.payload_as().map_err(HandlerError::reject)?;
            db::upsert_restaurant(&mut tx, &e)
                .await
                .map_err(HandlerError::retry)?;
            tracing::info!(restaurant_id = %e.restaurant_id, items = e.menu.len(), "restaurant replicated");
        }
        Some(events::MENU_STOCK_CHANGED) => {
            let e: MenuStockChanged = m.payload_as().map_err(HandlerError::reject)?;
            match db::apply_stock(&mut tx, &e)
                .await
                .map_err(HandlerError::retry)?
            {
                StockUpdate::Applied => {
                    tracing::debug!(restaurant_id = %e.restaurant_id, version = e.version, "stock replicated");
                }
                StockUpdate::Stale => {
                    tracing::debug!(restaurant_id = %e.restaurant_id, version = e.version, "stale stock change ignored");
                }
                StockUpdate::UnknownRestaurant => {
                    return Err(HandlerError::retry(format!(
                        "stock change for restaurant {} before its RestaurantCreated",
                        e.restaurant_id
                    )));
                }
            }
        }
        // Events the order service has no use for.
        _ => {}
    }
    Ok(tx)
}
