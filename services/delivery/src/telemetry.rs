//! The delivery service's metrics (served at `/metrics` by the chassis):
//!
//! | Name | Type | Meaning |
//! |---|---|---|
//! | `ftgo_delivery_deliveries_scheduled_total` | counter | deliveries created for accepted tickets |
//! | `ftgo_delivery_couriers_assigned_total` | counter | couriers assigned to deliveries |
//! | `ftgo_delivery_deliveries_cancelled_total` | counter | live deliveries cancelled with their orders |
//! | `ftgo_delivery_pending_deliveries` | gauge | deliveries waiting for a courier |
//! | `ftgo_delivery_available_couriers` | gauge | couriers available |
//!
//! Counters move only once the transaction that made the change committed.

use keel_store::Tx;

use crate::store;

/// A delivery was created (after commit).
pub(crate) fn delivery_scheduled() {
    metrics::counter!("ftgo_delivery_deliveries_scheduled_total").increment(1);
}

/// A courier was assigned (after commit).
pub(crate) fn courier_assigned() {
    metrics::counter!("ftgo_delivery_couriers_assigned_total").increment(1);
}

/// A live delivery was cancelled (after commit).
pub(crate) fn delivery_cancelled() {
    metrics::counter!("ftgo_delivery_deliveries_cancelled_total").increment(1);
}

/// Sets both gauges to what `tx` sees, once it commits.
pub(crate) async fn refresh_gauges(tx: &mut Tx) -> Result<(), sqlx::Error> {
    let (pending, available) = store::gauges(tx.conn()).await?;
    tx.after_commit(move || set_gauges(pending, available));
    Ok(())
}

/// Sets both gauges.
pub(crate) fn set_gauges(pending: i64, available: i64) {
    metrics::gauge!("ftgo_delivery_pending_deliveries").set(pending as f64);
    metrics::gauge!("ftgo_delivery_available_couriers").set(available as f64);
}
