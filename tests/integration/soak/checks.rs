//! What the world remembers of every account and every place that served
//! it, and the invariants checked against it after every step.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use mixpanel_rotator::mixpanel::ServiceAccount;
use mixpanel_rotator::rotation::lineage::Lineage;

use super::model::{MIRROR_INTERVAL, RESYNC, SELF_GRACE, SPECS, Spec, VERIFY_TIMEOUT};

/// Where consumers read a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// An integration's primary (`self`: the rotator's own).
    Primary(&'static str),
    /// Integration `a`'s mirror in instance k.
    Mirror(usize),
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Primary(l) => l,
            Source::Mirror(_) => "a",
        }
    }
}

/// What the world sees after a step.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub accounts: BTreeMap<u64, ServiceAccount>,
    /// The account each source serves (`None`: nothing, or unreadable).
    pub sources: BTreeMap<Source, Option<u64>>,
    /// What each primary's payload vouches for (its predecessor, `retiring`).
    pub vouches: BTreeMap<Source, BTreeSet<u64>>,
}

/// Who an account belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// An integration's lineage (`self`: the rotator's own).
    Lineage(&'static str),
    /// The account `d` adopts.
    Legacy,
    /// The seed admin, adopted by the rotator's own credential.
    Seed,
    /// Nobody the rotator may touch.
    Bystander,
}

#[derive(Debug, Clone)]
pub struct Acct {
    pub owner: Owner,
    pub created: DateTime<Utc>,
    pub expires: Option<DateTime<Utc>>,
    pub deleted: Option<DateTime<Utc>>,
    /// When it first appeared in its primary.
    pub published: Option<DateTime<Utc>>,
    /// When each source stopped serving it.
    pub left: BTreeMap<Source, DateTime<Utc>>,
    /// The last times consumers authenticated with it (the latest 32).
    pub uses: std::collections::VecDeque<DateTime<Utc>>,
    /// Published when its primary was lost: nobody vouches for it since, so
    /// it may go only once idle (no use for `grace`).
    pub lost: bool,
}

/// Clock steps reach 10 minutes; a minute more for the step granularity.
pub const TOLERANCE: Duration = Duration::minutes(11);
/// The longest `last_used` lag the world injects.
pub const MAX_LAG: Duration = Duration::minutes(30);

#[derive(Debug, Default)]
pub struct Ledger {
    pub accounts: BTreeMap<u64, Acct>,
    pub last: Snapshot,
    /// When each source last changed what it serves.
    pub changed: BTreeMap<Source, DateTime<Utc>>,
    /// `rotate-now --revoke-old` per label, when asked.
    pub revoked: BTreeMap<&'static str, Vec<DateTime<Utc>>>,
    /// Spans when Mixpanel or the shared store failed, or no instance ran.
    pub disturbed: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// Spans when `f` was out of the policy (from the change that removed
    /// it to two hours after the one that put it back, when every instance
    /// has reloaded); the last may still be open.
    pub f_unmanaged: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)>,
    /// When the rotator's own credential was first published.
    pub self_published: Option<DateTime<Utc>>,
    /// When each primary first held a credential.
    pub first_published: BTreeMap<Source, DateTime<Utc>>,
    pub legacy: u64,
    pub seed_admin: u64,
    pub namespace_tag: String,
}

pub fn spec(label: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.label == label)
}

impl Acct {
    /// A consumer authenticated with it at `t`.
    pub fn used(&mut self, t: DateTime<Utc>) {
        if self.uses.len() == 32 {
            self.uses.pop_front();
        }
        self.uses.push_back(t);
    }

    /// A use Mixpanel showed (whatever its lag) within `window` before
    /// `at`: deleting it at `at` by "unused for `window`" cut a consumer off.
    pub fn used_visibly_within(&self, window: Duration, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.uses
            .iter()
            .rev()
            .find(|u| **u <= at - MAX_LAG && **u > at - window + TOLERANCE)
            .copied()
    }
}

impl Ledger {
    pub fn owner_of(&self, a: &ServiceAccount) -> Owner {
        if a.id == self.legacy {
            return Owner::Legacy;
        }
        if a.id == self.seed_admin {
            return Owner::Seed;
        }
        let lineage = |label: &str| {
            let name = if label == "self" {
                "rotator".to_string()
            } else {
                format!("{}-{label}", self.namespace_tag)
            };
            Lineage::new("mpr", &name).parse(&a.username).is_some()
        };
        if lineage("self") {
            return Owner::Lineage("self");
        }
        SPECS
            .iter()
            .find(|s| lineage(s.label))
            .map_or(Owner::Bystander, |s| Owner::Lineage(s.label))
    }

    /// Time disturbed within [from, to].
    pub fn disturbed_within(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
        self.disturbed
            .iter()
            .map(|(a, b)| ((*b).min(to) - (*a).max(from)).max(Duration::zero()))
            .fold(Duration::zero(), |x, y| x + y)
    }

    /// Time within [from, to] when `label` could not be served: disturbed,
    /// or (for `f`) out of the policy.
    fn excused_within(&self, label: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
        let mut d = self.disturbed_within(from, to);
        if label == "f" {
            for (a, b) in &self.f_unmanaged {
                let b = b.unwrap_or(to);
                d += (b.min(to) - (*a).max(from)).max(Duration::zero());
            }
        }
        d
    }

    fn revoked_after(&self, label: &str, t: DateTime<Utc>) -> bool {
        self.revoked.get(label).is_some_and(|v| v.iter().any(|r| *r >= t))
    }

    /// Records the snapshot after a step at `now`; the violations it shows.
    pub fn observe(&mut self, now: DateTime<Utc>, snap: Snapshot, revoking: Option<&'static str>) -> Vec<String> {
        let mut bad = Vec::new();
        for a in snap.accounts.values() {
            if !self.accounts.contains_key(&a.id) {
                let owner = self.owner_of(a);
                self.accounts.insert(
                    a.id,
                    Acct {
                        owner,
                        created: a.created.unwrap_or(now),
                        expires: a.expires,
                        deleted: None,
                        published: None,
                        left: BTreeMap::new(),
                        uses: Default::default(),
                        lost: false,
                    },
                );
            }
        }
        // What the sources serve now.
        for (src, now_id) in &snap.sources {
            let before = self.last.sources.get(src).copied().flatten();
            if before != *now_id {
                self.changed.insert(*src, now);
                // A replaced credential is vouched for by its successor
                // (that is what keeps it for `grace`): a publish that wrote
                // over another's without seeing it lost it.
                if let (Source::Primary(label), Some(b), Some(_)) = (src, before, now_id)
                    && revoking != Some(*label)
                    && !self.accounts.get(&b).is_some_and(|a| a.lost)
                    && !snap.vouches.get(src).is_some_and(|v| v.contains(&b))
                {
                    bad.push(format!(
                        "I1: {label}'s published account {b} was replaced by {} whose payload does not vouch for it (an update lost)",
                        now_id.unwrap_or_default()
                    ));
                }
                if let Some(a) = before.and_then(|b| self.accounts.get_mut(&b)) {
                    a.left.entry(*src).or_insert(now);
                }
            }
            if now_id.is_some() {
                self.first_published.entry(*src).or_insert(now);
            }
            if let (Source::Primary(label), Some(id)) = (src, now_id) {
                if let Some(a) = self.accounts.get_mut(id) {
                    a.published.get_or_insert(now);
                    a.left.remove(src);
                }
                if *label == "self" {
                    self.self_published.get_or_insert(now);
                }
            }
            if let (Source::Mirror(_), Some(id)) = (src, now_id)
                && let Some(a) = self.accounts.get_mut(id)
            {
                a.left.remove(src);
            }
        }
        let gone: Vec<u64> = self
            .last
            .accounts
            .keys()
            .filter(|id| !snap.accounts.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(a) = self.accounts.get_mut(&id) {
                a.deleted = Some(now);
            }
            bad.extend(self.deletion(id, now, &snap, revoking));
        }
        self.last = snap;
        bad.extend(self.tick(now));
        bad
    }

    /// The invariants time alone can break (nothing changed since the last
    /// snapshot): expiry, leaks.
    pub fn tick(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut bad = self.served(now);
        bad.extend(self.leaks(now));
        bad
    }

    /// I1, I3, I8: whether deleting `id` at `now` was allowed.
    fn deletion(&self, id: u64, now: DateTime<Utc>, snap: &Snapshot, revoking: Option<&str>) -> Vec<String> {
        let Some(a) = self.accounts.get(&id) else { return vec![] };
        let label = match a.owner {
            Owner::Bystander => return vec![format!("I3: account {id} (not the rotator's) was deleted")],
            Owner::Seed => {
                return match self.self_published {
                    Some(p) if now >= p + SELF_GRACE - TOLERANCE => vec![],
                    _ => vec![format!(
                        "I3: the seed admin {id} was deleted before its successor's grace"
                    )],
                };
            }
            Owner::Legacy => "d",
            Owner::Lineage(l) => l,
        };
        if a.expires.is_some_and(|e| e <= now + TOLERANCE) || revoking == Some(label) {
            return vec![];
        }
        let primary = Source::Primary(label);
        let Some(_published) = a.published.or(if a.owner == Owner::Legacy {
            Some(a.created)
        } else {
            None
        }) else {
            // Never published: an orphan (I4 watches that they go).
            return vec![];
        };
        let mut bad = vec![];
        let (grace, idle) = match spec(label) {
            Some(s) => (s.grace, s.idle),
            None => (SELF_GRACE, Some((SELF_GRACE, Duration::days(7)))),
        };
        if a.lost {
            // Vouched for by nobody: deleted only once unused for `grace`.
            if let Some(u) = a.used_visibly_within(grace, now) {
                bad.push(format!(
                    "I1: {label}'s account {id}, published when its primary was lost, was deleted {} min after a consumer used it (grace {} min)",
                    (now - u).num_minutes(),
                    grace.num_minutes()
                ));
            }
            return bad;
        }
        if snap.sources.get(&primary).copied().flatten() == Some(id) {
            bad.push(format!("I2: {label}'s published account {id} was deleted"));
            return bad;
        }
        let left = a.left.get(&primary).copied().or_else(|| {
            // The adopted account is replaced by the first publish.
            (a.owner == Owner::Legacy)
                .then(|| self.first_published.get(&primary).copied())
                .flatten()
        });
        let Some(left) = left else {
            return vec![format!("I1: {label}'s account {id} was deleted though never replaced")];
        };
        if now < left + grace - TOLERANCE {
            bad.push(format!(
                "I1: {label}'s account {id} was deleted {} min after its successor was published (grace {} min)",
                (now - left).num_minutes(),
                grace.num_minutes()
            ));
        }
        if let Some((idle, max_grace)) = idle
            && now < left + max_grace - TOLERANCE
        {
            if let Some(u) = a.used_visibly_within(idle, now) {
                bad.push(format!(
                    "I1: {label}'s account {id} was deleted {} min after a consumer used it (delete_when_idle {} min; Mixpanel's last_used {:?})",
                    (now - u).num_minutes(),
                    idle.num_minutes(),
                    self.last.accounts.get(&id).and_then(|a| a.last_used).map(|t| (now - t).num_minutes())
                ));
            }
            for (src, held) in &snap.sources {
                if matches!(src, Source::Mirror(_)) && *held == Some(id) {
                    bad.push(format!(
                        "I8: {label}'s account {id} was deleted while {src:?} still serves it"
                    ));
                }
            }
        }
        bad
    }

    /// I2, I5: every published primary serves an account that exists and
    /// has not expired (unless Mixpanel was out of reach before it did).
    fn served(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut bad = vec![];
        for (src, id) in &self.last.sources {
            let Source::Primary(label) = src else { continue };
            let Some(id) = id else {
                let had = self
                    .accounts
                    .values()
                    .any(|a| a.published.is_some() && a.left.contains_key(src));
                // `f` out of the policy: nobody publishes it again until it is back.
                let unmanaged = *label == "f" && self.f_unmanaged.iter().any(|(_, b)| b.is_none_or(|b| b >= now));
                if had && !unmanaged && !self.disturbed.iter().any(|(_, b)| *b >= now) {
                    bad.push(format!("I2: {label}'s primary holds nothing after a publish"));
                }
                continue;
            };
            let Some(a) = self.accounts.get(id) else { continue };
            if a.deleted.is_some() {
                bad.push(format!("I2: {label}'s primary serves account {id}, which is deleted"));
            }
            if let Some(e) = a.expires
                && e <= now
            {
                let renew = spec(label).map_or(Duration::days(1), |s| s.renew_before);
                let from = e - renew / 2;
                if self.excused_within(label, from - TOLERANCE, e) == Duration::zero() {
                    bad.push(format!(
                        "I5: {label}'s published account {id} expired at {e} though Mixpanel answered for {} h before",
                        (renew / 2).num_hours()
                    ));
                }
            }
        }
        bad
    }

    /// I4: every lineage account is published or deleted in time; every
    /// replaced one is deleted in time.
    fn leaks(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut bad = vec![];
        let slack = RESYNC + Duration::hours(1) + TOLERANCE;
        // The accounts that exist (the ledger remembers every one ever seen).
        for (id, a) in self
            .last
            .accounts
            .keys()
            .filter_map(|id| Some((id, self.accounts.get(id)?)))
        {
            let Owner::Lineage(label) = a.owner else { continue };
            if a.deleted.is_some() || label == "f" {
                continue;
            }
            let (orphan_after, grace, max_grace) = match spec(label) {
                Some(s) => (s.orphan_after, s.grace, s.idle.map(|(_, m)| m)),
                None => (Duration::minutes(15), SELF_GRACE, Some(SELF_GRACE)),
            };
            let (from, by) = match a.published {
                None => (a.created, a.created + orphan_after + VERIFY_TIMEOUT + slack),
                Some(_) => match a.left.get(&Source::Primary(label)) {
                    None => continue,
                    Some(left) => (*left, *left + max_grace.unwrap_or(grace).max(grace) + slack),
                },
            };
            // Outages add their time (counted only once the deadline passed).
            if now > by && now > by + self.disturbed_within(from, now) {
                bad.push(format!(
                    "I4: {label}'s account {id} ({}) is still there {} h after {}",
                    if a.published.is_some() {
                        "replaced"
                    } else {
                        "never published"
                    },
                    (now - from).num_hours(),
                    if a.published.is_some() {
                        "its successor was published"
                    } else {
                        "its creation"
                    },
                ));
            }
        }
        bad
    }

    /// I1 for a consumer: authenticating with `id`, read from `src` at
    /// `read_at`, failed at `now`. The excuse, if any.
    pub fn failed_use(&self, src: Source, id: u64, read_at: DateTime<Utc>, now: DateTime<Utc>) -> Option<String> {
        let label = src.label();
        let a = self.accounts.get(&id)?;
        let left = a.left.get(&Source::Primary(label)).copied();
        // Revoked (`--revoke-old`) once replaced: a mirror may still serve it until its next sync.
        let revoked = self.revoked_after(label, left.unwrap_or(read_at).min(read_at));
        if a.expires.is_some_and(|e| e <= now) || revoked {
            return None;
        }
        let s = spec(label)?;
        let deleted = a.deleted.unwrap_or(now);
        let excused = match (left, s.idle) {
            _ if a.lost => a.used_visibly_within(s.grace, deleted).is_none(),
            // Replaced, and the consumer did not re-read within grace.
            (Some(l), None) => deleted >= l + s.grace - TOLERANCE,
            (Some(l), Some((idle, max_grace))) => {
                deleted >= l + max_grace - TOLERANCE || a.used_visibly_within(idle, deleted).is_none()
            }
            (None, _) => false,
        };
        (!excused).then(|| {
            format!(
                "I1: a consumer of {src:?} was refused with account {id} (read {} min before; {})",
                (now - read_at).num_minutes(),
                match left {
                    Some(l) => format!(
                        "replaced {} min before, deleted {} min after that",
                        (now - l).num_minutes(),
                        (deleted - l).num_minutes()
                    ),
                    None => "never replaced".into(),
                }
            )
        })
    }

    /// I6: instance k's mirror serves what the primary does, `MIRROR_INTERVAL`
    /// after the later of the primary's last change and `since`.
    pub fn mirror_behind(&self, k: usize, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<String> {
        let primary = self.last.sources.get(&Source::Primary("a")).copied().flatten();
        let mirror = self.last.sources.get(&Source::Mirror(k)).copied().flatten();
        if primary.is_none() || primary == mirror {
            return None;
        }
        let changed = self.changed.get(&Source::Primary("a")).copied().unwrap_or(since);
        let from = changed.max(since);
        let deadline = from + MIRROR_INTERVAL + TOLERANCE;
        (now > deadline && now > deadline + self.disturbed_within(from, now)).then(|| {
            format!(
                "I6: instance {k}'s mirror serves {mirror:?}, the primary {primary:?} for {} min",
                (now - changed).num_minutes()
            )
        })
    }
}

/// The ids a set of audit lines names, by action.
#[derive(Debug, Default)]
pub struct Audited {
    pub creates: usize,
    pub adds: usize,
    pub deleted: BTreeSet<u64>,
}

impl Audited {
    pub fn from_lines(text: &str) -> Self {
        let mut a = Audited::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).expect("an audit line is JSON");
            match v["action"].as_str() {
                Some("create") => a.creates += 1,
                Some("add_to_project") => a.adds += 1,
                Some("delete") => {
                    if let Some(id) = v["account_id"].as_u64() {
                        a.deleted.insert(id);
                    }
                }
                _ => {}
            }
        }
        a
    }
}

/// I7: every mutating call Mixpanel applied during a step is in the audit
/// lines the acting instance wrote during it.
pub fn audit_covers(requests: &[mixpanel_rotator::simulator::LoggedRequest], audited: &Audited) -> Vec<String> {
    let applied = |q: &&mixpanel_rotator::simulator::LoggedRequest| {
        q.is_mutating() && q.status.is_none_or(|s| (200..300).contains(&s))
    };
    let mut bad = vec![];
    let (mut creates, mut adds) = (0, 0);
    for q in requests.iter().filter(applied) {
        let segs: Vec<&str> = q.path.trim_matches('/').split('/').collect();
        match (q.method.as_str(), segs.as_slice()) {
            ("POST", [_, _, "service-accounts"]) => creates += 1,
            ("POST", [_, _, "service-accounts", "add-to-project"]) => adds += 1,
            ("DELETE", [_, _, "service-accounts", id]) => {
                let id: u64 = id.parse().unwrap_or_default();
                if !audited.deleted.contains(&id) {
                    bad.push(format!(
                        "I7: DELETE of account {id} is not in the acting instance's audit trail"
                    ));
                }
            }
            _ => bad.push(format!("I7: {} {} is not a call the rotator makes", q.method, q.path)),
        }
    }
    if creates > audited.creates {
        bad.push(format!(
            "I7: {creates} accounts created, {} in the audit trail",
            audited.creates
        ));
    }
    if adds > audited.adds {
        bad.push(format!(
            "I7: {adds} add-to-project calls applied, {} in the audit trail",
            audited.adds
        ));
    }
    bad
}
