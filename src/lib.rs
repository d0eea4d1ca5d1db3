//! mixpanel-rotator: rotates Mixpanel service-account credentials.
//!
//! Mixpanel cannot rotate a service account's secret in place, so rotation
//! means replacing the account: create a fresh expiring one with the same
//! project memberships, prove it works, publish it to a sink with a
//! compare-and-swap, and delete the old account once a grace period has
//! passed. See `README.md` for the protocol and its guarantees.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod audit;
pub mod cli;
pub mod clock;
pub mod daemon;
pub mod demo;
pub mod hooks;
pub mod metrics;
pub mod mixpanel;
pub mod notify;
pub mod policy;
pub mod rotation;
pub mod secret;
pub mod server;
pub mod simulator;
pub mod sink;
