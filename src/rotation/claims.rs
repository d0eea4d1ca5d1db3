//! Ownership across the policy: which integration has a claim on an
//! account. An account that an integration publishes, vouches for (its
//! recorded predecessor, an entry of its `retiring`) or has in its lineage
//! is never deleted on behalf of another integration, by a pass or by
//! `retire`; an `adopt` naming one blocks the integration that adopts it.
//!
//! Lineage claims come from the username alone. Payload claims need every
//! other integration's primary: a pass reads them only when some `adopt`
//! names an existing account (the only way one integration reaches
//! another's account), and `retire` always.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use super::lineage::{Lineage, integration_of};
use crate::mixpanel::types::ServiceAccount;
use crate::policy::Policy;
use crate::sink::Payload;

/// How an integration claims an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ClaimKind {
    /// Its primary publishes it: its consumers use it now.
    Publishes,
    /// Its primary records it as the predecessor of the published one.
    Predecessor,
    /// Its primary lists it in `retiring`.
    Retiring,
    /// Its username is of that integration's lineage.
    Lineage,
}

impl fmt::Display for ClaimKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClaimKind::Publishes => "publishes it",
            ClaimKind::Predecessor => "vouches for it as its predecessor (previous_service_account_id)",
            ClaimKind::Retiring => "vouches for it in `retiring`",
            ClaimKind::Lineage => "has it in its lineage",
        })
    }
}

/// One integration's claim on an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claim {
    pub(crate) integration: String,
    pub(crate) kind: ClaimKind,
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "integration `{}` {}", self.integration, self.kind)
    }
}

/// The claims of the policy's primaries on accounts, as read in one pass.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    by_account: HashMap<u64, Vec<Claim>>,
    /// Integrations whose primary could not be read: their claims are unknown.
    unread: Vec<String>,
}

impl Claims {
    /// Records what `integration`'s primary holds (a payload naming another
    /// integration is not its claim: that integration is blocked anyway).
    pub(crate) fn add(&mut self, integration: &str, payload: &Payload) {
        if payload.integration != integration {
            return;
        }
        let mut claim = |id: u64, kind| {
            self.by_account.entry(id).or_default().push(Claim {
                integration: integration.to_string(),
                kind,
            });
        };
        claim(payload.service_account_id, ClaimKind::Publishes);
        if let Some(id) = payload.previous_service_account_id {
            claim(id, ClaimKind::Predecessor);
        }
        for r in &payload.retiring {
            claim(r.id, ClaimKind::Retiring);
        }
    }

    /// Records that `integration`'s primary could not be read.
    pub(crate) fn unread(&mut self, integration: &str) {
        self.unread.push(integration.to_string());
    }

    /// The integrations other than `except` whose primary could not be read.
    pub(crate) fn unknown_besides(&self, except: &str) -> Vec<String> {
        self.unread.iter().filter(|n| *n != except).cloned().collect()
    }

    /// A claim on `a` by an integration other than `except`: its primary's,
    /// or its lineage's.
    pub(crate) fn other(&self, policy: &Policy, a: &ServiceAccount, except: &str) -> Option<Claim> {
        self.by_account
            .get(&a.id)
            .and_then(|v| v.iter().find(|c| c.integration != except).cloned())
            .or_else(|| lineage_claim(policy, a, except))
    }
}

/// The claim of another integration of the policy whose lineage `a`'s
/// username is.
pub(crate) fn lineage_claim(policy: &Policy, a: &ServiceAccount, except: &str) -> Option<Claim> {
    policy.lineage_namespaces().iter().find_map(|ns| {
        let lineage = integration_of(ns, &a.username)?;
        let owner = policy.integrations.iter().find(|i| i.lineage_name() == lineage)?;
        if owner.name == except {
            return None;
        }
        Lineage::new(ns, lineage).parse(&a.username)?;
        Some(Claim {
            integration: owner.name.clone(),
            kind: ClaimKind::Lineage,
        })
    })
}
