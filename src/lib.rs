//! mixpanel-rotator: rotates Mixpanel service-account credentials.
//!
//! Mixpanel cannot rotate a service account's secret in place, so rotation
//! means replacing the account: create a fresh expiring one with the same
//! project memberships, prove it works, publish it to a sink with a
//! compare-and-swap, and delete the old account once a grace period has
//! passed. See `README.md` for the protocol and its guarantees, and
//! `docs/architecture.md` for what each module owns and which way the
//! dependencies go.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), warn(clippy::too_many_lines))]
// Input never reaches a panic: dates and numbers are computed with checked or
// saturating operations, slices with `get` (see clock::after, clock::before).
#![cfg_attr(not(test), deny(clippy::arithmetic_side_effects, clippy::indexing_slicing))]

// Leaves: they import nothing of the crate (or only each other, downwards).
pub(crate) mod audit;
pub(crate) mod bounded;
pub mod clock;
pub mod exit;
pub mod failpoint;
pub(crate) mod http;
pub mod metrics;
pub(crate) mod notify;
pub mod random;
pub mod secret;
pub(crate) mod text;
pub mod values;

// The outside world.
pub mod mixpanel;
pub mod sink;

// The policy, and what the rotation engine calls out to.
pub(crate) mod hooks;
pub mod policy;

// The engine.
pub mod rotation;

// Around the engine.
pub mod daemon;
pub(crate) mod demo;
pub mod render;
pub mod server;
pub mod simulator;

// The command line (uses everything above).
pub mod cli;

// Property tests of everything that reads input.
#[cfg(test)]
mod tests;
