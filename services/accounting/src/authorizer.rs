//! The payment decision, behind a small trait: today the card rule of the reference system
//! ([`CardRule`]); later, payment networks with breaker-driven failover.
//!
//! The decision is made inside the command's transaction: an [`Authorizer`] must not apply
//! anything of its own twice for one order — accounting asks it at most once per approved
//! order (a repeated `AuthorizeCard` is answered from the stored authorization), but it may
//! ask again after a decline or an error.

use std::fmt::Debug;

use ftgo_contracts::Money;
use futures::future::BoxFuture;

/// What a payment decision is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRequest {
    /// The order paid for.
    pub order_id: String,
    /// Who pays.
    pub consumer_id: String,
    /// How much.
    pub amount: Money,
    /// The consumer's card (digits only; empty when the consumer gave none).
    pub card: String,
}

/// An authorization to reverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReversalRequest {
    /// Accounting's authorization id.
    pub authorization_id: String,
    /// The order it paid for.
    pub order_id: String,
    /// The amount authorized.
    pub amount: Money,
}

/// The outcome of a payment decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The amount is authorized on the card.
    Approved,
    /// Declined, with a reason such as `CARD_DECLINED` (shown in the payment view and in the
    /// `PaymentDeclined` reply).
    Declined {
        /// Why.
        reason: String,
    },
}

/// No decision could be made now (e.g. every network is unreachable): the command is
/// retried later by the bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthorizerError(pub String);

/// Decides payments.
pub trait Authorizer: Send + Sync + Debug + 'static {
    /// Approves or declines `request`.
    fn authorize<'a>(
        &'a self,
        request: &'a AuthorizationRequest,
    ) -> BoxFuture<'a, Result<Decision, AuthorizerError>>;

    /// Releases an authorization this authorizer approved (cancel-order). The default
    /// does nothing: the card rule holds no money anywhere.
    fn reverse<'a>(
        &'a self,
        request: &'a ReversalRequest,
    ) -> BoxFuture<'a, Result<(), AuthorizerError>> {
        let _ = request;
        Box::pin(async { Ok(()) })
    }
}

/// Decline reason: the card is the always-declined test card.
pub const CARD_DECLINED: &str = "CARD_DECLINED";
/// Decline reason: the consumer has no card on file.
pub const NO_CARD: &str = "NO_CARD";
/// Decline reason: the card on file is not a card number (12–19 digits).
pub const INVALID_CARD: &str = "INVALID_CARD";
/// Decline reason: accounting knows no account for the consumer.
pub const NO_ACCOUNT: &str = "NO_ACCOUNT";

/// The reference system's card rule (PRODUCT.md): [`ftgo_contracts::DECLINED_CARD`] is
/// always declined, any other well-formed card (12–19 digits) is approved.
#[derive(Debug, Clone, Copy, Default)]
pub struct CardRule;

impl CardRule {
    /// The rule as a plain function.
    pub fn decide(card: &str) -> Decision {
        let declined = |reason: &str| Decision::Declined {
            reason: reason.to_owned(),
        };
        if card.is_empty() {
            declined(NO_CARD)
        } else if !(12..=19).contains(&card.len()) || !card.bytes().all(|b| b.is_ascii_digit()) {
            declined(INVALID_CARD)
        } else if card == ftgo_contracts::DECLINED_CARD {
            declined(CARD_DECLINED)
        } else {
            Decision::Approved
        }
    }
}

impl Authorizer for CardRule {
    fn authorize<'a>(
        &'a self,
        request: &'a AuthorizationRequest,
    ) -> BoxFuture<'a, Result<Decision, AuthorizerError>> {
        Box::pin(async move { Ok(Self::decide(&request.card)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_card_rule() {
        assert_eq!(CardRule::decide("4111111111111111"), Decision::Approved);
        assert_eq!(CardRule::decide("5555555555554444"), Decision::Approved);
        for (card, reason) in [
            (ftgo_contracts::DECLINED_CARD, CARD_DECLINED),
            ("", NO_CARD),
            ("4111", INVALID_CARD),
            ("4111-1111-1111-1111", INVALID_CARD),
            ("41111111111111111111", INVALID_CARD),
        ] {
            assert_eq!(
                CardRule::decide(card),
                Decision::Declined {
                    reason: reason.to_owned()
                },
                "{card}"
            );
        }
    }
}
