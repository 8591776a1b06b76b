//! Service discovery for Keel clients: register this process with the registry, keep a
//! local instance cache fed by push (the Keel registry's watch), delta polling (any Eureka
//! server), a static list or DNS, and balance requests over it with passive health — as
//! tower layers shared by the gateway and typed clients.

pub mod balance;
pub mod catalog;
pub mod instance;
pub mod register;
pub mod source;

use tokio_util::sync::CancellationToken;

pub use balance::{
    Balancer, BalancerConfig, LoadBalanceLayer, LoadBalanced, NoInstance, Pick, Strategy,
};
pub use catalog::{Catalog, Instances};
pub use instance::ServiceInstance;
pub use register::{Registrar, RegistrationConfig};
pub use source::{DiscoveryConfig, SourceKind};

/// A running discovery client: a catalog and the task that feeds it.
#[derive(Debug)]
pub struct Discovery {
    catalog: Catalog,
    stop: CancellationToken,
}

impl Discovery {
    /// Starts feeding a new catalog from `config`'s source.
    pub fn start(config: DiscoveryConfig, client: reqwest::Client) -> Self {
        let catalog = Catalog::new();
        let stop = CancellationToken::new();
        tokio::spawn(source::run(config, catalog.clone(), client, stop.clone()));
        Self { catalog, stop }
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Stops the feeding task; the catalog keeps its last contents.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
