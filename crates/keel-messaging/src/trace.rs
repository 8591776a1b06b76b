//! W3C trace context on messages. A message carries `traceparent` (and `tracestate`) so the
//! work it causes joins the trace of the request that sent it.
//!
//! keel-messaging does not depend on the chassis (where the current trace context lives),
//! so the service tells it once, at start-up, where to read the current context from:
//!
//! ```ignore
//! keel_messaging::trace::set_source(|| {
//!     keel_chassis::trace_context::current().map(|cx| keel_messaging::trace::TraceHeaders {
//!         traceparent: cx.traceparent(),
//!         tracestate: cx.tracestate,
//!     })
//! });
//! ```
//!
//! From then on [`Outbox::send`](crate::Outbox::send) and the backends' `publish` add the
//! current context to every message that has no `traceparent` header yet ([`inject`]); a
//! message that already has one keeps it. Without a source nothing is added, and callers can
//! always set the headers themselves.
//!
//! The other direction: a consumed message's handler runs inside the trace the message
//! carries once the service sets a [`Scope`] ([`set_scope`]) — the chassis's runs the
//! handler with a child of the message's context as the current one, so its logs carry the
//! trace id and what it sends continues the trace.

use std::{collections::BTreeMap, sync::RwLock};

use futures::future::BoxFuture;

use crate::{HandlerError, message::headers};

/// The trace headers of the current unit of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeaders {
    /// The `traceparent` value, e.g. `00-<trace id>-<span id>-01`.
    pub traceparent: String,
    /// The `tracestate` value, when there is one.
    pub tracestate: Option<String>,
}

/// Where the current trace context comes from.
pub type Source = fn() -> Option<TraceHeaders>;

static SOURCE: RwLock<Option<Source>> = RwLock::new(None);

/// Sets (or replaces) the process-wide source of the current trace context.
pub fn set_source(source: Source) {
    *SOURCE.write().unwrap_or_else(|p| p.into_inner()) = Some(source);
}

/// The current trace context according to the source, if one is set and has a context.
pub fn current() -> Option<TraceHeaders> {
    let source = *SOURCE.read().unwrap_or_else(|p| p.into_inner());
    source.and_then(|f| f())
}

/// Adds the current trace context to `message_headers` unless they carry a `traceparent`
/// already. Returns whether it added one. Backends call this on every message they publish.
pub fn inject(message_headers: &mut BTreeMap<String, String>) -> bool {
    if message_headers.contains_key(headers::TRACEPARENT) {
        return false;
    }
    let Some(cx) = current() else {
        return false;
    };
    message_headers.insert(headers::TRACEPARENT.to_owned(), cx.traceparent);
    if let Some(state) = cx.tracestate {
        message_headers.insert(headers::TRACESTATE.to_owned(), state);
    }
    true
}

/// Runs a handler's work (the future) inside the trace context a message carries.
pub type Scope = for<'a> fn(
    TraceHeaders,
    BoxFuture<'a, Result<(), HandlerError>>,
) -> BoxFuture<'a, Result<(), HandlerError>>;

static SCOPE: RwLock<Option<Scope>> = RwLock::new(None);

/// Sets (or replaces) the process-wide [`Scope`] handlers run in.
pub fn set_scope(scope: Scope) {
    *SCOPE.write().unwrap_or_else(|p| p.into_inner()) = Some(scope);
}

/// The trace context `message_headers` carry, if any.
pub fn extract(message_headers: &BTreeMap<String, String>) -> Option<TraceHeaders> {
    message_headers
        .get(headers::TRACEPARENT)
        .map(|traceparent| TraceHeaders {
            traceparent: traceparent.clone(),
            tracestate: message_headers.get(headers::TRACESTATE).cloned(),
        })
}

/// `work` inside the scope of `carried` (the consumed message's context), when both a scope
/// is set and the message carries a context; else `work` as it is.
pub(crate) fn in_scope<'a>(
    carried: Option<TraceHeaders>,
    work: BoxFuture<'a, Result<(), HandlerError>>,
) -> BoxFuture<'a, Result<(), HandlerError>> {
    let scope = *SCOPE.read().unwrap_or_else(|p| p.into_inner());
    match (scope, carried) {
        (Some(scope), Some(cx)) => scope(cx, work),
        _ => work,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    tokio::task_local! {
        static CURRENT: TraceHeaders;
    }

    fn from_task() -> Option<TraceHeaders> {
        CURRENT.try_with(Clone::clone).ok()
    }

    #[tokio::test]
    async fn the_current_context_is_added_only_where_missing() {
        set_source(from_task);
        let cx = TraceHeaders {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: Some("vendor=1".into()),
        };
        // Outside a traced task: nothing.
        let mut h = BTreeMap::new();
        assert!(!inject(&mut h));
        assert!(h.is_empty());
        CURRENT
            .scope(cx.clone(), async {
                let mut h = BTreeMap::new();
                assert!(inject(&mut h));
                assert_eq!(h.get(headers::TRACEPARENT), Some(&cx.traceparent));
                assert_eq!(
                    h.get(headers::TRACESTATE).map(String::as_str),
                    Some("vendor=1")
                );
                // A message that already belongs to a trace keeps it.
                let mut own = BTreeMap::from([(headers::TRACEPARENT.to_owned(), "mine".into())]);
                assert!(!inject(&mut own));
                assert_eq!(
                    own.get(headers::TRACEPARENT).map(String::as_str),
                    Some("mine")
                );
                assert!(!own.contains_key(headers::TRACESTATE));
            })
            .await;
    }
}
