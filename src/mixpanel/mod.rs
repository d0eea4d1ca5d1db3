//! The Mixpanel Service Accounts API: typed requests and responses, a client
//! with retries, a concurrency limit and no redirects, and its errors.

pub mod client;
pub(crate) mod error;
pub mod lenient;
pub mod server_clock;
pub mod types;

pub use client::{Client, ClientSettings, Credentials, MIXPANEL_DOMAINS, ProjectHosts, RetryPolicy};
pub use error::MixpanelError;
pub use types::*;
