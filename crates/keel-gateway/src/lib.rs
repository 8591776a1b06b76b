//! `keel gateway`: the single entry point of a Keel system — Spring Cloud Gateway's route
//! model (predicates, filters, `lb://`) on a streaming hyper proxy, with resilience per
//! route and API composition.

mod auth;
pub mod body;
mod client;
mod compose;
pub mod config;
mod cors;
pub mod error;
mod exchange;
mod filter;
mod forward;
mod h1;
mod idle;
mod limit;
pub mod pattern;
mod predicate;
mod problem;
mod proxy;
mod route;
mod route_metrics;
mod server;
mod template;
mod text;

pub use config::GatewayConfig;
pub use error::{Error, LoadError};
pub use server::{Gateway, Options, check, run, serve, serve_on};
