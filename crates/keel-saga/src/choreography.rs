//! Choreography: flows driven by events rather than commands. A reaction subscribes,
//! changes its own state in a transaction, and publishes its own events through the outbox
//! in the same transaction — with the inbox's idempotency.

use std::sync::Arc;

use futures::future::BoxFuture;
use keel_messaging::{Delivery, Handler, HandlerError, Inbox, Message, Outbox};
use keel_store::Tx;

type ReactFn = Arc<
    dyn for<'a> Fn(&'a mut Tx, &'a Message) -> BoxFuture<'a, Result<Vec<Message>, HandlerError>>
        + Send
        + Sync,
>;

/// A handler that runs `f` once per message (duplicates dropped) and publishes the events
/// it returns through the outbox, atomically with its own writes.
pub fn react(
    inbox: Inbox,
    outbox: Outbox,
    f: impl for<'a> Fn(&'a mut Tx, &'a Message) -> BoxFuture<'a, Result<Vec<Message>, HandlerError>>
    + Send
    + Sync
    + 'static,
) -> Arc<dyn Handler> {
    let f: ReactFn = Arc::new(f);
    inbox.handler(move |mut tx, d: Delivery| {
        let (f, outbox) = (f.clone(), outbox.clone());
        async move {
            let events = f(&mut tx, &d.message).await?;
            for e in &events {
                outbox.send(&mut tx, e).await.map_err(HandlerError::retry)?;
            }
            Ok(tx)
        }
    })
}
