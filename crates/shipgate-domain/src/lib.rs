//! Shipgate's domain: the config model, plans, states and the pure rollout state machine.
//!
//! This crate depends on no other crate of ours and does no I/O, so every rule in it is tested
//! directly.

pub mod config;
pub mod decide;
pub mod duration;
pub mod freeze;
pub mod notification;
pub mod pattern;
pub mod plan;
pub mod provider;
pub mod state;

pub use duration::Span;
