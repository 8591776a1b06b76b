//! Consistency tokens: read-your-writes over an eventually consistent view.
//!
//! A command of the order service answers with the position of its event,
//! `<orderId>:<version>`. A query given that token first waits — up to the configured
//! `consistency_wait_ms` — until the view has applied that order's `OrderCreated` and a
//! version at least that high; if it does not get there in time the query is refused with
//! a 409 that says where the view is.

use std::time::Duration;

use tokio::time::Instant;

use crate::{feed::Feed, view};

/// The request header that may carry a token (the order service sets it on responses).
pub const HEADER: &str = "keel-consistency-token";

/// A parsed token: the position of an order event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) order_id: String,
    pub(crate) version: u64,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.order_id, self.version)
    }
}

/// Parses `<orderId>:<version>` (version ≥ 1; the id without blanks or colons).
pub(crate) fn parse(s: &str) -> Result<Token, String> {
    let bad = |why: &str| {
        format!(
            "consistencyToken must look like <orderId>:<version> (as the order service returns it); {s:?} {why}"
        )
    };
    let (id, version) = s.rsplit_once(':').ok_or_else(|| bad("has no ':'"))?;
    if id.is_empty() || id.len() > 200 {
        return Err(bad("has an empty or over-long order id"));
    }
    if id
        .chars()
        .any(|c| c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(bad("has an order id with blanks or ':'"));
    }
    let version: u64 = version
        .parse()
        .map_err(|_| bad("has a version that is not a whole number"))?;
    if version == 0 {
        return Err(bad("has version 0; versions start at 1"));
    }
    Ok(Token {
        order_id: id.to_owned(),
        version,
    })
}

/// The token of a request: `?consistencyToken=` or the `Keel-Consistency-Token` header
/// (they must agree when both are given). `Err` says what is wrong with it.
pub(crate) fn from_request(
    query: Option<&str>,
    header: Option<&str>,
) -> Result<Option<Token>, String> {
    let raw = match (query, header) {
        (Some(q), Some(h)) if q != h => {
            return Err(format!(
                "the consistencyToken parameter ({q:?}) and the Keel-Consistency-Token header ({h:?}) differ"
            ));
        }
        (Some(q), _) => q,
        (None, Some(h)) => h,
        (None, None) => return Ok(None),
    };
    parse(raw.trim()).map(Some)
}

/// Why a wait ended without the view reaching the token.
#[derive(Debug)]
pub(crate) enum WaitError {
    /// The view is behind: its version of the order (`None`: it has not seen the order's
    /// creation yet).
    Behind(Option<u64>),
    /// The view's database failed.
    Store(sqlx::Error),
}

/// Waits up to `wait` for the view to reach `token`.
pub(crate) async fn wait(feed: &Feed, token: &Token, wait: Duration) -> Result<(), WaitError> {
    let deadline = Instant::now() + wait;
    let mut changes = feed.changes();
    loop {
        // Mark the current value seen before reading, so no change is missed in between.
        changes.borrow_and_update();
        let at = view::position(feed.store().pool(), &token.order_id)
            .await
            .map_err(WaitError::Store)?;
        let have = match at {
            Some((version, true)) if version >= token.version => {
                metrics::counter!("keel_history_consistency_waits_total", "outcome" => "reached")
                    .increment(1);
                return Ok(());
            }
            Some((version, true)) => Some(version),
            _ => None,
        };
        let now = Instant::now();
        if now >= deadline {
            metrics::counter!("keel_history_consistency_waits_total", "outcome" => "behind")
                .increment(1);
            return Err(WaitError::Behind(have));
        }
        // Woken by an applied event; the poll covers other instances writing the same
        // database (PostgreSQL).
        let nap = (deadline - now).min(Duration::from_millis(50));
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(nap) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse("0190abc:3").unwrap(),
            Token {
                order_id: "0190abc".to_owned(),
                version: 3
            }
        );
        assert_eq!(parse("o-1:12").unwrap().to_string(), "o-1:12");
        for bad in [
            "", "abc", ":1", "o:", "o:0", "o:-1", "o:x", "a b:1", "a:b:1", "o:1.5",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(from_request(None, None).unwrap().is_none());
        assert_eq!(from_request(None, Some("o:2")).unwrap().unwrap().version, 2);
        assert!(from_request(Some("o:2"), Some("o:3")).is_err());
        assert!(from_request(Some("o:2"), Some("o:2")).is_ok());
        assert!(from_request(Some("nope"), None).is_err());
    }
}
