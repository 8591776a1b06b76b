//! Chooses the message bus backend by URL, so services do not change when the backend
//! does: `sqlite://path/bus.db` is the embedded bus (one machine, several processes),
//! `nats://host:4222` is NATS JetStream (several machines).

use std::sync::Arc;

use keel_messaging::{Bus, BusError};

/// Connects to the bus at `url`.
pub async fn connect(url: &str) -> Result<Arc<dyn Bus>, BusError> {
    if url.starts_with("sqlite:") {
        return Ok(Arc::new(keel_bus_sqlite::SqliteBus::open(url).await?));
    }
    if url.starts_with("nats://") {
        return Ok(Arc::new(keel_bus_nats::NatsBus::connect(url).await?));
    }
    Err(BusError::Invalid(format!(
        "unsupported bus URL {url:?}: expected sqlite://… or nats://…"
    )))
}
