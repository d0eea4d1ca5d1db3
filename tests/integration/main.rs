//! The one integration-test binary (one binary keeps linking fast: add
//! modules here, not new files under `tests/`).

mod architecture;
mod aws;
mod cli;
mod common;
mod compat;
mod crashes;
mod daemon;
mod edges;
mod faults;
mod hooks;
mod kubernetes;
mod mirrors;
mod monitoring;
mod own;
mod ownership;
mod policy_errors;
mod rotation;
mod simulator;
mod soak;
mod vault;
