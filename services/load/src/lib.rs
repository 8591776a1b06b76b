//! Reference system: drives the running system — `keel load` places orders through the
//! gateway at a fixed rate and reports outcomes and order → terminal latency; `keel chaos`
//! does the same while it kills service processes and injects payment-network faults, then
//! checks the invariants (every order terminal, none authorized twice, stock and accounts
//! consistent, order history equal to the services' state).

pub mod chaos;
mod client;
pub mod invariants;
pub mod load;
mod progress;

pub use chaos::{ChaosOptions, ChaosReport};
pub use client::Systems;
pub use load::{LoadOptions, Report};
