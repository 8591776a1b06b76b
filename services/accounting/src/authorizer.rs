//! The payment decision, behind a small trait: the card rule of the reference system
//! ([`CardRule`]), or payment networks with breaker-driven failover
//! ([`NetworkAuthorizer`](crate::payments::NetworkAuthorizer)).
//!
//! The decision is made *before* the command's transaction begins (so an authorizer may
//! write to accounting's database, as the network authorizer's attempt journal does), and
//! its result is recorded in that transaction. An [`Authorizer`] must not apply anything of
//! its own twice for one order: accounting stops asking once an order is authorized (a
//! repeated `AuthorizeCard` is answered from the stored authorization), but it may ask again
//! after a decline, an error, or a crash before the decision was recorded.

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
    /// Where it was approved ([`Approval`] as recorded).
    pub approval: Approval,
}

/// Where an approval is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The payment network that approved (`card-rule` for the card rule).
    pub network: String,
    /// The network's own authorization id, to cancel it with (`None`: nothing is held
    /// anywhere, as with the card rule).
    pub reference: Option<String>,
}

/// The `network` of approvals made by the card rule.
pub const CARD_RULE_NETWORK: &str = "card-rule";

impl Approval {
    /// An approval that holds nothing anywhere (the card rule, a test authorizer).
    pub fn local() -> Self {
        Self {
            network: CARD_RULE_NETWORK.to_owned(),
            reference: None,
        }
    }
}

/// The outcome of a payment decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The amount is authorized on the card, held where [`Approval`] says.
    Approved(Approval),
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

    /// The payment networks behind this authorizer and their failover state, for
    /// `GET /payment-networks`. `None` (the default): no networks, a local rule.
    fn networks(&self) -> Option<crate::payments::PaymentNetworks> {
        None
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
            Decision::Approved(Approval::local())
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
        assert_eq!(
            CardRule::decide("4111111111111111"),
            Decision::Approved(Approval::local())
        );
        assert_eq!(
            CardRule::decide("5555555555554444"),
            Decision::Approved(Approval::local())
        );
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
