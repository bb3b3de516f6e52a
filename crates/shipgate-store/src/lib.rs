//! Shipgate's PostgreSQL store: apps, releases, rollouts and their phases, step runs, gate
//! checks, rollbacks and the audit log; the engine's claims and leases; LISTEN/NOTIFY wake-ups.
//!
//! Queries are checked at run time and every one is exercised by the tests against a real
//! database (see the README's "Design notes" for why not `query!`).

pub mod apps;
pub mod auth;
pub mod crypto;
pub mod dashboard;
pub mod db;
pub mod engine;
pub mod error;
pub mod events;
pub mod freezes;
pub mod line;
pub mod notifications;
pub mod policy;
pub mod promotions;
pub mod releases;
pub mod rollouts;
pub mod webhooks;

pub use db::{connect, migrate, MIGRATOR};
pub use error::StoreError;
pub use events::Actor;

/// The NOTIFY channel that wakes engine workers: the payload is a rollout id.
pub const WAKE_CHANNEL: &str = "shipgate_wake";
/// The NOTIFY channel for live updates (dashboards, SSE): the payload is a rollout id.
pub const UPDATES_CHANNEL: &str = "shipgate_updates";
