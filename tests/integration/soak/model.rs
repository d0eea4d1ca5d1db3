//! The simulated world's fixed parts: its integrations, their consumers, the
//! policy each instance runs, and the policy changes a reload brings.

use chrono::Duration;

/// One integration of the world, by label (its name is `{tag}-{label}`).
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub label: &'static str,
    /// `shared` (the memory store every instance shares) or `disk` (a real directory).
    pub sink: &'static str,
    pub path: &'static str,
    pub grace: Duration,
    /// The shortest `renew_before` any policy version gives it.
    pub renew_before: Duration,
    /// `delete_when_idle` and `max_grace`, when drain-aware.
    pub idle: Option<(Duration, Duration)>,
    pub orphan_after: Duration,
    pub mirrored: bool,
    /// Whether only some policy versions have it (added and removed by reloads).
    pub optional: bool,
    /// The keys of its `[[integrations]]` table besides name, sink, path.
    pub toml: &'static str,
    /// Its consumers: (how often each authenticates, how often it re-reads).
    /// Each authenticates more often than `grace` minus the longest
    /// `last_used` lag and the clock tolerance: an account they use is
    /// always seen in use.
    pub consumers: &'static [(Duration, Duration)],
}

const fn m(n: i64) -> Duration {
    Duration::minutes(n)
}

const fn h(n: i64) -> Duration {
    Duration::hours(n)
}

/// The lineage name of the rotator's own credential, and its grace.
pub const SELF_GRACE: Duration = Duration::hours(1);

pub const SPECS: &[Spec] = &[
    Spec {
        label: "a",
        renew_before: h(12),
        sink: "shared",
        path: "a",
        grace: h(3),
        idle: Some((h(2), h(48))),
        orphan_after: m(15),
        mirrored: true,
        optional: false,
        toml: "ttl = \"{a_ttl}\"\nrenew_before = \"12h\"\ngrace = \"3h\"\ndelete_when_idle = \"2h\"\nmax_grace = \"2d\"\n\
               projects = [{ id = 101, role = \"analyst\" }]\nmirrors = [{ sink = \"mirror\", path = \"a.json\" }]\n",
        // Uses every hour; re-reads rarely (the idle rule keeps its account).
        consumers: &[(h(1), h(24))],
    },
    Spec {
        label: "b",
        renew_before: h(24),
        sink: "shared",
        path: "b",
        grace: h(2),
        idle: None,
        orphan_after: m(15),
        mirrored: false,
        optional: false,
        toml: "schedule = \"{b_schedule}\"\njitter = \"10m\"\nttl = \"3d\"\ngrace = \"2h\"\n\
               projects = [{ id = 102, role = \"consumer\" }]\n",
        consumers: &[(m(45), m(30))],
    },
    Spec {
        label: "c",
        renew_before: h(16),
        sink: "shared",
        path: "c",
        grace: h(2),
        idle: Some((h(3), h(24))),
        orphan_after: m(15),
        mirrored: false,
        optional: false,
        toml: "ttl = \"2d\"\ngrace = \"2h\"\ndelete_when_idle = \"3h\"\nmax_grace = \"1d\"\n\
               projects = [{ id = 103, role = \"consumer\" }]\n",
        // A consumer that re-reads once a day and uses its credential every 30 min.
        consumers: &[(h(1), h(24))],
    },
    Spec {
        label: "d",
        renew_before: h(32),
        sink: "disk",
        path: "d.json",
        grace: h(6),
        idle: None,
        orphan_after: m(15),
        mirrored: false,
        optional: false,
        toml: "ttl = \"4d\"\ngrace = \"6h\"\nrole = \"analyst\"\nprojects = \"copy\"\nadopt = {legacy}\n",
        consumers: &[(h(3), h(3))],
    },
    Spec {
        label: "e",
        renew_before: h(6),
        sink: "shared",
        path: "e",
        grace: h(2),
        idle: None,
        orphan_after: m(5),
        mirrored: false,
        optional: false,
        toml: "ttl = \"1d\"\nrenew_before = \"{e_renew}\"\ngrace = \"{e_grace}\"\norphan_after = \"5m\"\n\
               projects = [{ id = 101, role = \"consumer\" }, { id = 102, role = \"consumer\" }]\n",
        consumers: &[(m(30), m(30))],
    },
    Spec {
        label: "f",
        renew_before: h(16),
        sink: "shared",
        path: "f",
        grace: h(2),
        idle: None,
        orphan_after: m(15),
        mirrored: false,
        optional: true,
        toml: "ttl = \"2d\"\ngrace = \"2h\"\nprojects = [{ id = 102, role = \"analyst\" }]\n",
        consumers: &[(h(1), h(1))],
    },
];

/// `[daemon]` of every instance.
pub const RESYNC: Duration = Duration::hours(12);
pub const MIRROR_INTERVAL: Duration = Duration::hours(1);
/// `[mixpanel] verify_timeout`.
pub const VERIFY_TIMEOUT: Duration = Duration::seconds(30);

/// The policy's variable parts: what a reload changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Variant {
    pub a_ttl: &'static str,
    pub b_schedule: &'static str,
    pub e_renew: &'static str,
    /// Never below the `grace` its `Spec` says (the checks use that).
    pub e_grace: &'static str,
    pub with_f: bool,
}

impl Variant {
    pub fn first() -> Self {
        Self {
            a_ttl: "2d",
            b_schedule: "0 */8 * * *",
            e_renew: "6h",
            e_grace: "2h",
            with_f: false,
        }
    }

    /// One change (picked by `pick` in 0..4).
    pub fn changed(&self, pick: u32) -> Self {
        let mut v = self.clone();
        match pick {
            0 => v.a_ttl = if v.a_ttl == "2d" { "3d" } else { "2d" },
            1 => {
                v.b_schedule = if v.b_schedule == "0 */8 * * *" {
                    "30 */6 * * *"
                } else {
                    "0 */8 * * *"
                }
            }
            2 => v.e_renew = if v.e_renew == "6h" { "8h" } else { "6h" },
            _ => v.with_f = !v.with_f,
        }
        v
    }

    pub fn has(&self, s: &Spec) -> bool {
        !s.optional || self.with_f
    }
}

/// What an instance's policy needs besides the variant.
pub struct Place<'a> {
    pub base_url: &'a str,
    pub admin: &'a str,
    pub dir: &'a std::path::Path,
    pub store: &'a str,
    pub tag: &'a str,
    pub legacy: u64,
    pub instance: usize,
}

/// The policy instance `p.instance` runs under `v`.
pub fn policy(p: &Place<'_>, v: &Variant) -> String {
    let dir = p.dir.display();
    let k = p.instance;
    let mut out = format!(
        r#"version = 1

[mixpanel]
base_url = "{base}"
organization_id = 1
username = "{admin}"
secret = {{ file = "{dir}/admin.secret" }}
timeout = "1s"
verify_timeout = "30s"

[mixpanel.self]
sink = "shared"
path = "rotator"
ttl = "3d"
grace = "1h"

[daemon]
resync_interval = "12h"
mirror_interval = "1h"

[audit]
path = "{dir}/audit-{k}.jsonl"

[sinks.shared]
type = "memory"
store = "{store}"

[sinks.disk]
type = "file"
dir = "{dir}/disk"

[sinks.mirror]
type = "file"
dir = "{dir}/mirror-{k}"
"#,
        base = p.base_url,
        admin = p.admin,
        store = p.store,
    );
    for s in SPECS.iter().filter(|s| v.has(s)) {
        let keys = s
            .toml
            .replace("{a_ttl}", v.a_ttl)
            .replace("{b_schedule}", v.b_schedule)
            .replace("{e_renew}", v.e_renew)
            .replace("{e_grace}", v.e_grace)
            .replace("{legacy}", &p.legacy.to_string());
        out.push_str(&format!(
            "\n[[integrations]]\nname = \"{}-{}\"\nsink = \"{}\"\npath = \"{}\"\n{keys}",
            p.tag, s.label, s.sink, s.path
        ));
    }
    out
}
