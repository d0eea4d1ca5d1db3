//! One seeded world and its event loop.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use mixpanel_rotator::clock::{Clock as _, ManualClock};
use mixpanel_rotator::mixpanel::{ProjectRole, RetryPolicy, Role, TargetType};
use mixpanel_rotator::policy::Policy;
use mixpanel_rotator::rotation::{Engine, PassOptions, Report};
use mixpanel_rotator::simulator::{Fault, FaultAction, Gate, Quirks, Seed, Simulator};
use mixpanel_rotator::sink::SinkErrorKind;
use mixpanel_rotator::sink::memory::{Store, store};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::Params;
use super::checks::{Audited, Ledger, Owner, Snapshot, Source, audit_covers, spec};
use super::model::{MIRROR_INTERVAL, Place, RESYNC, SPECS, Variant, policy};

const START: &str = "2026-11-28T04:00:00Z";
/// Lines of trace printed before a violation.
const TAIL: usize = 40;
/// The integration name of the rotator's own credential.
const SELF_NAME: &str = "(rotator)";

/// Passes of the rotator's own credential, in every world of this process:
/// its failpoints are armed by name, and every world's is `(rotator)`.
static SELF_PASSES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What one seed did.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub events: u64,
    pub rotations: u64,
    pub hash: u64,
    /// The first violated invariant, with the step that showed it.
    pub violation: Option<String>,
    /// The last events before the end (or the violation).
    pub tail: Vec<String>,
    pub wall: StdDuration,
    /// Counts of what happened, for the seed's line.
    pub tally: BTreeMap<&'static str, u64>,
}

impl Outcome {
    pub fn line(&self, p: &Params) -> String {
        let tally: Vec<String> = self.tally.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!(
            "seed {}: {} days, {} events ({}), trace {:016x}, {:.1} s: {}",
            self.seed,
            p.days,
            self.events,
            tally.join(", "),
            self.hash,
            self.wall.as_secs_f64(),
            self.violation.as_deref().unwrap_or("ok")
        )
    }

    pub fn report(&self, p: &Params) -> String {
        format!(
            "seed {} violated an invariant: {}\nlast events:\n  {}\nreplay: scripts/soak.sh --seed {} --days {} --instances {}",
            self.seed,
            self.violation.as_deref().unwrap_or("-"),
            self.tail.join("\n  "),
            self.seed,
            p.days,
            p.instances
        )
    }
}

/// Where an instance's next pass is made to die.
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// At a failpoint (the pass future stops there and is dropped).
    Point(&'static str),
    /// While a request to this endpoint is on its way (it never arrives).
    InFlight(&'static str, &'static str),
    /// Not a crash: paused at a failpoint while another instance rotates
    /// the same integration, then resumed (two instances interleaved).
    Overtaken(&'static str),
}

/// Where an instance is overtaken: between its create and its publish.
const PAUSES: &[&str] = &[
    "after_create",
    "after_memberships",
    "after_verify",
    "before_publish",
    "publish_before_cas",
];

/// Every crash point of a rotation: the crash tests' list.
use crate::crashes::POINTS;

/// The endpoints the rotator calls, as fault patterns.
const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/organizations/1/service-accounts"),
    ("POST", "/organizations/1/service-accounts"),
    ("DELETE", "/organizations/1/service-accounts/*"),
    ("POST", "/organizations/1/service-accounts/add-to-project"),
    ("GET", "/projects/*/service-accounts"),
    ("GET", "/me"),
];

struct Instance {
    clock: ManualClock,
    /// This host's clock minus the true time.
    skew: Duration,
    engine: Option<Arc<Engine>>,
    variant: Variant,
    /// Due time and consecutive failures, by integration name.
    slots: BTreeMap<String, (DateTime<Utc>, u32)>,
    mirror_at: DateTime<Utc>,
    /// Down until then (true time).
    down_until: Option<DateTime<Utc>>,
    up_since: DateTime<Utc>,
    crash: Option<(Crash, u32)>,
    reload_at: Option<DateTime<Utc>>,
    audit_read: u64,
}

struct Held {
    id: u64,
    username: String,
    secret: String,
    read_at: DateTime<Utc>,
}

struct Consumer {
    src: Source,
    use_every: Duration,
    read_every: Duration,
    next_use: DateTime<Utc>,
    read_due: DateTime<Utc>,
    held: Option<Held>,
}

enum Undo {
    Fault(Fault),
    Store,
    ListQuirk,
    LagQuirk,
}

enum Event {
    Instance(usize),
    Restart(usize),
    Consumer(usize),
    Chaos,
    EndWindow(usize),
}

struct World {
    seed: u64,
    /// Print every trace line (`MPR_SOAK_TRACE=1`), with the wall-clock time.
    verbose: bool,
    wall: Instant,
    /// Wall time by kind of step (with `verbose`).
    timing: BTreeMap<&'static str, (u64, StdDuration)>,
    rng: StdRng,
    truth: ManualClock,
    now: DateTime<Utc>,
    start: DateTime<Utc>,
    sim: Simulator,
    dir: tempfile::TempDir,
    tag: String,
    store_name: String,
    store: Arc<Store>,
    admin: String,
    legacy: u64,
    variant: Variant,
    instances: Vec<Instance>,
    consumers: Vec<Consumer>,
    ledger: Ledger,
    http: reqwest::Client,
    chaos_at: DateTime<Utc>,
    windows: Vec<(DateTime<Utc>, Undo)>,
    quirks: Quirks,
    /// Violations seen in the middle of a step (an interleaving).
    interim: Vec<String>,
    /// Instances that acted during the step besides the one it is of.
    also_acted: Vec<usize>,
    /// Since when no instance has been up.
    all_down_since: Option<DateTime<Utc>>,
    hasher: std::collections::hash_map::DefaultHasher,
    tail: VecDeque<String>,
    events: u64,
    tally: BTreeMap<&'static str, u64>,
}

fn retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base: StdDuration::from_millis(1),
        cap: StdDuration::from_millis(4),
        // A `Retry-After` fails the call at once: the world never waits in real time.
        max_retry_after: StdDuration::ZERO,
    }
}

fn minutes(rng: &mut StdRng, lo: i64, hi: i64) -> Duration {
    Duration::seconds(rng.random_range(lo * 60..=hi * 60))
}

/// `d` times a factor in [lo, 1].
fn some_of(rng: &mut StdRng, d: Duration, lo: f64) -> Duration {
    Duration::milliseconds((d.num_milliseconds() as f64 * rng.random_range(lo..=1.0)) as i64)
}

/// Runs seed `seed` for `days` simulated days with `n` instances.
pub async fn run(seed: u64, days: u32, n: usize, budget: StdDuration) -> Outcome {
    mixpanel_rotator::random::seed_thread(Some(seed ^ 0x5eed_5eed_5eed_5eed));
    let started = Instant::now();
    let mut w = World::new(seed, n).await;
    let end = w.start + Duration::days(i64::from(days));
    let mut violation = None;
    while w.now < end {
        if started.elapsed() > budget {
            violation = Some(format!(
                "budget: seed {seed} took more than {} s of wall-clock time (at day {})",
                budget.as_secs(),
                (w.now - w.start).num_days()
            ));
            break;
        }
        if let Err(v) = w.step().await {
            violation = Some(v);
            break;
        }
    }
    w.teardown();
    if w.verbose {
        for (k, (n, d)) in &w.timing {
            println!(
                "seed {seed} timing {k}: {n} steps, {:.3} s, {:.3} ms each",
                d.as_secs_f64(),
                d.as_secs_f64() * 1000.0 / *n as f64
            );
        }
    }
    mixpanel_rotator::random::seed_thread(None);
    Outcome {
        seed,
        events: w.events,
        rotations: w.tally.get("rotations").copied().unwrap_or(0),
        hash: w.hasher.finish(),
        violation,
        tail: w.tail.into_iter().collect(),
        wall: started.elapsed(),
        tally: w.tally,
    }
}

impl World {
    async fn new(seed: u64, n: usize) -> Self {
        static WORLDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let start = DateTime::parse_from_rfc3339(START).unwrap().with_timezone(&Utc);
        let truth = ManualClock::new(start);
        let sim = Simulator::start(Seed::Empty, Arc::new(truth.clone()), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        // Names are part of the world (a schedule's jitter hashes the
        // integration's name): the seed's own. No two worlds of one seed run
        // at once (the tests that run worlds hold one lock).
        let tag = format!("s{seed}");
        let world = WORLDS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = tempfile::tempdir().unwrap();
        for sub in ["disk"]
            .into_iter()
            .map(String::from)
            .chain((0..n).map(|k| format!("mirror-{k}")))
        {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let admin = sim.admin();
        std::fs::write(dir.path().join("admin.secret"), admin.secret.expose()).unwrap();
        // What the rotator must never touch, and the account `d` adopts.
        let legacy = sim
            .add_account(
                "etl-legacy",
                Role::Analyst,
                None,
                &[(101, ProjectRole::from(Role::Analyst), TargetType::Individual)],
            )
            .0
            .id;
        sim.add_account("someone-elses-bot", Role::Admin, None, &[]);
        sim.add_account("mpr-reports-20260101T000000Z-abcd", Role::Consumer, None, &[]);
        sim.add_account(
            &format!("mprx-{tag}-a-20260101T000000Z-abcd"),
            Role::Consumer,
            None,
            &[],
        );
        // Stores outlive their world: a fresh one each time.
        let store_name = format!("soak-{tag}-{world}");
        let mut ledger = Ledger {
            legacy,
            namespace_tag: tag.clone(),
            ..Default::default()
        };
        ledger.seed_admin = sim.accounts().iter().find(|a| a.username == admin.username).unwrap().id;
        let variant = Variant::first();
        let mut consumers = vec![];
        for s in SPECS {
            let mut srcs = vec![Source::Primary(s.label)];
            if s.mirrored {
                srcs.extend((0..n).map(Source::Mirror));
            }
            for src in srcs {
                for (use_every, read_every) in s.consumers {
                    consumers.push(Consumer {
                        src,
                        use_every: *use_every,
                        read_every: *read_every,
                        next_use: start + minutes(&mut rng, 1, 60),
                        read_due: start,
                        held: None,
                    });
                }
            }
        }
        let mut w = World {
            seed,
            verbose: std::env::var("MPR_SOAK_TRACE").is_ok_and(|v| v == "1"),
            wall: Instant::now(),
            timing: BTreeMap::new(),
            chaos_at: start + minutes(&mut rng, 10, 240),
            rng,
            truth,
            now: start,
            start,
            store: store(&store_name),
            store_name,
            sim,
            dir,
            tag,
            admin: admin.username.clone(),
            legacy,
            variant: variant.clone(),
            instances: vec![],
            consumers,
            ledger,
            http: reqwest::Client::new(),
            windows: vec![],
            quirks: Quirks::default(),
            all_down_since: None,
            also_acted: vec![],
            interim: vec![],
            hasher: Default::default(),
            tail: VecDeque::new(),
            events: 0,
            tally: BTreeMap::new(),
        };
        for k in 0..n {
            let inst = Instance {
                clock: ManualClock::new(start),
                skew: Duration::zero(),
                engine: None,
                variant: variant.clone(),
                slots: BTreeMap::new(),
                mirror_at: start,
                down_until: None,
                up_since: start,
                crash: None,
                reload_at: None,
                audit_read: 0,
            };
            w.instances.push(inst);
            // Replicas started one after the other.
            let at = start + Duration::seconds(20 * k as i64);
            w.instances[k].down_until = Some(at);
        }
        w.all_down_since = Some(start);
        w
    }

    fn teardown(&mut self) {
        self.sim.clear_faults();
        self.store.fail_with(None);
    }

    fn count(&mut self, what: &'static str) {
        *self.tally.entry(what).or_default() += 1;
    }

    /// Adds a line to the trace (hashed; the last ones kept).
    fn trace(&mut self, line: String) {
        let rel = self.now - self.start;
        let line = format!(
            "{}d{:02}:{:02}:{:02} {line}",
            rel.num_days(),
            rel.num_hours() % 24,
            rel.num_minutes() % 60,
            rel.num_seconds() % 60
        );
        line.hash(&mut self.hasher);
        if self.verbose {
            println!("seed {} [{:.3} s] {line}", self.seed, self.wall.elapsed().as_secs_f64());
        }
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn label_of(&self, name: &str) -> &'static str {
        if name == SELF_NAME {
            return "self";
        }
        SPECS
            .iter()
            .find(|s| name.strip_prefix(&self.tag).and_then(|r| r.strip_prefix('-')) == Some(s.label))
            .map_or("?", |s| s.label)
    }

    /// The instance's clock reads the true time plus its skew.
    fn local(&self, k: usize) -> DateTime<Utc> {
        self.now + self.instances[k].skew
    }

    fn next_event(&self) -> (DateTime<Utc>, Event) {
        let mut best = (self.chaos_at, Event::Chaos);
        let mut take = |t: DateTime<Utc>, e: Event| {
            if t < best.0 {
                best = (t, e);
            }
        };
        for (k, i) in self.instances.iter().enumerate() {
            if let Some(t) = i.down_until {
                take(t, Event::Restart(k));
                continue;
            }
            let mut due = i.mirror_at;
            if let Some(t) = i.slots.values().map(|(t, _)| *t).min() {
                due = due.min(t);
            }
            if let Some(r) = i.reload_at {
                due = due.min(r + i.skew);
            }
            take(due - i.skew, Event::Instance(k));
        }
        for (c, con) in self.consumers.iter().enumerate() {
            take(con.next_use, Event::Consumer(c));
        }
        for (j, (t, _)) in self.windows.iter().enumerate() {
            take(*t, Event::EndWindow(j));
        }
        best
    }

    /// One event, then every invariant.
    async fn step(&mut self) -> Result<(), String> {
        let (at, event) = self.next_event();
        self.now = at.max(self.now);
        self.truth.set(self.now);
        self.events += 1;
        let mut revoking = None;
        let mut acted = None;
        let mut published_a = false;
        let kind = match event {
            Event::Instance(_) => "instance",
            Event::Restart(_) => "restart",
            Event::Consumer(_) => "consumer",
            Event::Chaos => "chaos",
            Event::EndWindow(_) => "window",
        };
        let t0 = Instant::now();
        match event {
            Event::Instance(k) => {
                let (r, p) = self.instance_step(k).await;
                revoking = r;
                published_a = p;
                acted = Some(k);
            }
            Event::Restart(k) => self.restart(k),
            Event::Consumer(c) => self.consumer_step(c).await?,
            Event::Chaos => {
                let (r, k, p) = self.chaos().await;
                revoking = r;
                acted = k;
                published_a = p;
            }
            Event::EndWindow(j) => self.end_window(j),
        }
        let t1 = Instant::now();
        let changed = matches!(event, Event::Restart(_));
        let checked = self.check(acted, changed, revoking, published_a);
        if self.verbose {
            let e = self.timing.entry(kind).or_default();
            e.0 += 1;
            e.1 += t1 - t0;
            let c = self.timing.entry("checks").or_default();
            c.0 += 1;
            c.1 += t1.elapsed();
        }
        checked.map_err(|v| {
            let v = format!("step {} (day {}): {v}", self.events, (self.now - self.start).num_days());
            self.trace(format!("VIOLATION {v}"));
            v
        })
    }

    fn check(
        &mut self,
        acted: Option<usize>,
        changed: bool,
        revoking: Option<&'static str>,
        published_a: bool,
    ) -> Result<(), String> {
        if let Some(v) = self.interim.drain(..).next() {
            return Err(v);
        }
        let requests = self.sim.take_requests();
        if let Some(k) = acted {
            // Who acted in this step: the instance, and one that overtook it.
            let mut new = String::new();
            for k in std::iter::once(k).chain(std::mem::take(&mut self.also_acted)) {
                let path = self.dir.path().join(format!("audit-{k}.jsonl"));
                let mut text = String::new();
                if let Ok(mut f) = std::fs::File::open(&path) {
                    use std::io::{Read as _, Seek as _};
                    f.seek(std::io::SeekFrom::Start(self.instances[k].audit_read)).unwrap();
                    f.read_to_string(&mut text).unwrap();
                }
                self.instances[k].audit_read += text.len() as u64;
                new.push_str(&text);
            }
            let bad = audit_covers(&requests, &Audited::from_lines(&new));
            if let Some(b) = bad.into_iter().next() {
                return Err(format!("instance {k}: {b}"));
            }
        } else if let Some(q) = requests.iter().find(|q| q.is_mutating()) {
            return Err(format!("I7: {} {} while no instance acted", q.method, q.path));
        }
        // Only an instance (or a start) changes accounts and places; other
        // steps leave them as the last snapshot saw them.
        let bad = if acted.is_some() || changed {
            let snap = self.snapshot();
            self.ledger.observe(self.now, snap, revoking)
        } else {
            self.ledger.tick(self.now)
        };
        if let Some(b) = bad.into_iter().next() {
            return Err(b);
        }
        if let (true, Some(k)) = (published_a, acted) {
            let s = &self.ledger.last.sources;
            if s.get(&Source::Mirror(k)) != s.get(&Source::Primary("a")) {
                return Err(format!(
                    "I6: instance {k} published a's credential and left its own mirror behind"
                ));
            }
        }
        for (k, i) in self.instances.iter().enumerate() {
            if i.down_until.is_none()
                && let Some(b) = self.ledger.mirror_behind(k, i.up_since, self.now)
            {
                return Err(b);
            }
        }
        Ok(())
    }

    fn read_source(&self, src: Source) -> Option<serde_json::Value> {
        let bytes = match src {
            Source::Primary("d") => std::fs::read(self.dir.path().join("disk/d.json")).ok()?,
            Source::Primary("self") => self.store.raw("rotator")?,
            Source::Primary(l) => self.store.raw(spec(l)?.path)?,
            Source::Mirror(k) => std::fs::read(self.dir.path().join(format!("mirror-{k}/a.json"))).ok()?,
        };
        serde_json::from_slice(&bytes).ok()
    }

    fn snapshot(&self) -> Snapshot {
        let accounts = self.sim.accounts().into_iter().map(|a| (a.id, a)).collect();
        let mut sources = BTreeMap::new();
        let mut vouches = BTreeMap::new();
        let id = |v: &Option<serde_json::Value>| v.as_ref().and_then(|v| v["service_account_id"].as_u64());
        for label in SPECS.iter().map(|s| s.label).chain(["self"]) {
            let src = Source::Primary(label);
            let p = self.read_source(src);
            sources.insert(src, id(&p));
            if let Some(p) = p {
                let retiring = p["retiring"].as_array().into_iter().flatten();
                let v = retiring
                    .filter_map(|r| r["service_account_id"].as_u64().or_else(|| r["id"].as_u64()))
                    .chain(p["previous_service_account_id"].as_u64())
                    .collect();
                vouches.insert(src, v);
            }
        }
        for k in 0..self.instances.len() {
            sources.insert(Source::Mirror(k), id(&self.read_source(Source::Mirror(k))));
        }
        Snapshot {
            accounts,
            sources,
            vouches,
        }
    }

    fn place(&self, k: usize) -> Place<'_> {
        Place {
            base_url: "",
            admin: &self.admin,
            dir: self.dir.path(),
            store: &self.store_name,
            tag: &self.tag,
            legacy: self.legacy,
            instance: k,
        }
    }

    fn engine(&self, k: usize, v: &Variant) -> Engine {
        let base = self.sim.base_url();
        let place = Place {
            base_url: &base,
            ..self.place(k)
        };
        let text = policy(&place, v);
        let policy = Policy::parse(&text).unwrap_or_else(|e| panic!("the world's policy: {e}\n{text}"));
        Engine::with_retry(
            Arc::new(policy),
            Arc::new(self.instances[k].clock.clone()),
            retry(),
            retry(),
        )
        .unwrap()
    }

    /// Starts (or restarts) instance k from the policy as it is now.
    fn restart(&mut self, k: usize) {
        let v = self.variant.clone();
        let local = self.local(k);
        self.instances[k].clock.set(local);
        let engine = self.engine(k, &v);
        let slots = engine
            .policy()
            .integrations
            .iter()
            .map(|i| (i.name.clone(), (local, 0)))
            .collect();
        let i = &mut self.instances[k];
        i.engine = Some(Arc::new(engine));
        i.variant = v;
        i.slots = slots;
        i.mirror_at = local;
        i.down_until = None;
        i.up_since = self.now;
        i.reload_at = None;
        if let Some(since) = self.all_down_since.take() {
            self.ledger.disturbed.push((since, self.now));
        }
        self.count("starts");
        self.trace(format!("instance {k} starts"));
    }

    fn crash(&mut self, k: usize, how: &str) {
        let down = minutes(&mut self.rng, 1, 30);
        let i = &mut self.instances[k];
        i.engine = None;
        i.down_until = Some(self.now + down);
        i.crash = None;
        if self.instances.iter().all(|i| i.down_until.is_some()) {
            self.all_down_since.get_or_insert(self.now);
        }
        self.count("crashes");
        self.trace(format!("instance {k} crashes {how}, down {} min", down.num_minutes()));
    }

    /// Instance k's due work: a reload, a mirror sync, or one integration's
    /// pass. Returns whether it revoked (a label) and published `a`.
    async fn instance_step(&mut self, k: usize) -> (Option<&'static str>, bool) {
        let local = self.local(k);
        self.instances[k].clock.set(local);
        if self.instances[k]
            .reload_at
            .is_some_and(|r| r + self.instances[k].skew <= local)
        {
            let v = self.variant.clone();
            let engine = self.engine(k, &v);
            let i = &mut self.instances[k];
            i.reload_at = None;
            i.variant = v;
            // As the daemon's reload: every integration due now; new ones added, removed ones forgotten.
            let names: BTreeSet<String> = engine.policy().integrations.iter().map(|x| x.name.clone()).collect();
            i.slots.retain(|n, _| names.contains(n));
            for n in names {
                i.slots.insert(n, (local, 0));
            }
            i.engine = Some(Arc::new(engine));
            self.count("reloads");
            self.trace(format!("instance {k} reloads"));
            return (None, false);
        }
        if self.instances[k].mirror_at <= local {
            let synced = self.instances[k].engine.as_ref().unwrap().sync_mirrors(None).await;
            self.instances[k].mirror_at = local + MIRROR_INTERVAL;
            let errors: usize = synced.iter().map(|s| s.errors.len()).sum();
            self.trace(format!("instance {k} syncs mirrors, {errors} errors"));
            return (None, false);
        }
        let Some(name) = self.instances[k]
            .slots
            .iter()
            .filter(|(_, (t, _))| *t <= local)
            .min_by_key(|(n, (t, _))| (*t, (*n).clone()))
            .map(|(n, _)| n.clone())
        else {
            return (None, false);
        };
        let opts = PassOptions {
            only: Some([name.clone()].into()),
            log_reported: false,
            ..Default::default()
        };
        let report = self.pass(k, &name, &opts).await;
        let Some(r) = report else { return (None, false) };
        let failures = self.instances[k].slots.get(&name).map_or(0, |s| s.1);
        let failures = if r.failed() { failures + 1 } else { 0 };
        let jitter = self.rng.random::<f64>();
        let after = self.instances[k].clock.now();
        let due = mixpanel_rotator::daemon::next_due(&r, after, failures, RESYNC, jitter);
        self.instances[k].slots.insert(name, (due, failures));
        (None, self.label_of(&r.integration) == "a" && r.rotated.is_some())
    }

    /// Runs one pass of instance k over integration `name`, crashing it
    /// (or pausing it while another instance rotates the same integration)
    /// where told; the report, unless it crashed.
    async fn pass(&mut self, k: usize, name: &str, opts: &PassOptions) -> Option<Report> {
        let label = self.label_of(name);
        let _self_lock = (label == "self").then(|| SELF_PASSES.lock().unwrap_or_else(|e| e.into_inner()));
        let crash = self.instances[k].crash.map(|(c, _)| c);
        let mut trip = None;
        let mut gate = None;
        let mut resume = None;
        match crash {
            Some(Crash::Point(p)) => trip = Some(mixpanel_rotator::failpoint::arm(p, name)),
            Some(Crash::InFlight(method, path)) => {
                let g = Gate::new();
                let f = Fault::times(method, path, FaultAction::Hold(g.clone()), 1);
                self.sim.inject(f.clone());
                gate = Some((g, f));
            }
            // Not the own credential's: the other instance's pass would wait for this one's lock.
            Some(Crash::Overtaken(p)) if label != "self" => {
                let (t, r) = mixpanel_rotator::failpoint::arm_pause(p, name);
                trip = Some(t);
                resume = Some(r);
            }
            _ => {}
        }
        let engine = self.instances[k].engine.clone().unwrap();
        let o = opts.clone();
        let mut pass = Box::pin(async move { engine.pass(&o).await });
        let stopped = {
            let hit = async {
                match (&mut trip, &gate) {
                    (Some(t), _) => t.hit().await,
                    (_, Some((g, _))) => g.arrived(1).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                reports = &mut pass => Some(reports),
                () = hit => None,
            }
        };
        drop(trip);
        if let Some((_, f)) = &gate {
            self.sim.remove_fault(f);
        }
        let mut reports = match (stopped, resume) {
            (Some(reports), _) => reports,
            (None, Some(resume)) => {
                // Paused: another instance rotates the same integration meanwhile.
                self.instances[k].crash = None;
                if let Some(Crash::Overtaken(p)) = crash {
                    self.trace(format!("instance {k} pauses at {p} in {label}"));
                }
                let others: Vec<usize> = (0..self.instances.len())
                    .filter(|j| *j != k && self.instances[*j].down_until.is_none())
                    .collect();
                if !others.is_empty() {
                    let j = others[self.rng.random_range(0..others.len())];
                    self.also_acted.push(j);
                    self.count("interleavings");
                    Box::pin(self.forced(j, name, false)).await;
                    // Seen (by the world, and by consumers) before the paused one goes on.
                    let snap = self.snapshot();
                    let bad = self.ledger.observe(self.now, snap, None);
                    self.interim.extend(bad);
                }
                resume.go();
                pass.await
            }
            (None, None) => {
                drop(pass);
                let how = match crash {
                    Some(Crash::Point(p)) => format!("at {p} in {label}"),
                    Some(Crash::InFlight(m, p)) => format!("with {m} {p} in flight in {label}"),
                    _ => String::new(),
                };
                self.crash(k, &how);
                return None;
            }
        };
        if let Some((c, left)) = self.instances[k].crash {
            self.instances[k].crash = (left > 1).then_some((c, left - 1));
        }
        let r = reports.pop()?;
        self.note(k, &r, opts);
        Some(r)
    }

    fn note(&mut self, k: usize, r: &Report, opts: &PassOptions) {
        let label = self.label_of(&r.integration);
        if r.rotated.is_some() {
            self.count("rotations");
        }
        if !r.deleted.is_empty() {
            self.count("deletions");
        }
        if r.failed() {
            self.count("failed passes");
        }
        let codes: Vec<String> = r.errors.iter().map(|e| e.code().to_string()).collect();
        if self.verbose {
            for e in &r.errors {
                println!("seed {}   error: {}", self.seed, e.message());
            }
        }
        self.trace(format!(
            "instance {k} {}{} {label}: rotated {:?}, deleted {:?}, errors {codes:?}",
            if opts.force.is_empty() { "pass" } else { "rotate-now" },
            if opts.revoke_old { " --revoke-old" } else { "" },
            r.rotated.as_ref().map(|x| x.service_account_id),
            r.deleted.iter().map(|d| d.id).collect::<Vec<_>>(),
        ));
    }

    async fn consumer_step(&mut self, c: usize) -> Result<(), String> {
        let con = &self.consumers[c];
        let src = con.src;
        let use_every = con.use_every;
        let next = self.now + some_of(&mut self.rng, use_every, 0.7);
        self.consumers[c].next_use = next;
        if src.label() == "f" && !self.variant.with_f {
            self.consumers[c].held = None;
            return Ok(());
        }
        if self.now >= self.consumers[c].read_due || self.consumers[c].held.is_none() {
            let read_every = self.consumers[c].read_every;
            self.consumers[c].read_due = self.now + some_of(&mut self.rng, read_every, 0.5);
            if let Some(p) = self.read_source(src) {
                let id = p["service_account_id"].as_u64().unwrap_or_default();
                let keep = self.consumers[c].held.as_ref().is_some_and(|h| h.id == id);
                if !keep {
                    self.consumers[c].held = Some(Held {
                        id,
                        username: p["username"].as_str().unwrap_or_default().to_string(),
                        secret: p["secret"].as_str().unwrap_or_default().to_string(),
                        read_at: self.now,
                    });
                } else if let Some(h) = self.consumers[c].held.as_mut() {
                    h.read_at = self.now;
                }
            }
        }
        let Some(h) = &self.consumers[c].held else {
            return Ok(());
        };
        let (id, read_at) = (h.id, h.read_at);
        let answer = self
            .http
            .get(format!("{}/me", self.sim.base_url()))
            .basic_auth(&h.username, Some(&h.secret))
            .timeout(StdDuration::from_secs(5))
            .send()
            .await;
        let status = answer.map(|a| a.status().as_u16()).unwrap_or(0);
        self.count("consumer calls");
        match status {
            200 => {
                if let Some(a) = self.ledger.accounts.get_mut(&id) {
                    a.used(self.now);
                }
            }
            401 | 403 => {
                self.count("consumers refused");
                self.trace(format!("consumer of {src:?} refused with account {id}"));
                // It re-reads at its next use.
                self.consumers[c].read_due = self.now;
                if let Some(v) = self.ledger.failed_use(src, id, read_at, self.now) {
                    return Err(v);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn end_window(&mut self, j: usize) {
        let (_, undo) = self.windows.remove(j);
        match undo {
            Undo::Fault(f) => {
                self.sim.remove_fault(&f);
                self.trace(format!("fault ends: {f:?}"));
            }
            Undo::Store => {
                self.store.fail_with(None);
                self.trace("shared store answers again".into());
            }
            Undo::ListQuirk => {
                self.quirks.list_hides_newer_than = None;
                self.sim.set_quirks(self.quirks);
                self.trace("account list complete again".into());
            }
            Undo::LagQuirk => {
                self.quirks.last_used_lag = None;
                self.sim.set_quirks(self.quirks);
                self.trace("last_used on time again".into());
            }
        }
    }

    fn window(&mut self, len: Duration, undo: Undo, disturbs: bool) {
        let end = self.now + len;
        if disturbs {
            self.ledger.disturbed.push((self.now, end));
        }
        self.windows.push((end, undo));
    }

    fn up(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..self.instances.len())
            .filter(|k| self.instances[*k].down_until.is_none())
            .collect();
        (!up.is_empty()).then(|| up[self.rng.random_range(0..up.len())])
    }

    /// Something goes wrong (or an operator acts). Returns as `step`'s
    /// instance steps do, and the instance that acted.
    async fn chaos(&mut self) -> (Option<&'static str>, Option<usize>, bool) {
        let gap = minutes(&mut self.rng, 10, 240);
        self.chaos_at = self.now + gap;
        let roll = self.rng.random_range(0..100);
        match roll {
            0..15 => {
                let Some(k) = self.up() else { return (None, None, false) };
                let crash = match self.rng.random_range(0..10) {
                    0..5 => Crash::Point(POINTS[self.rng.random_range(0..POINTS.len())]),
                    5..7 => {
                        let (m, p) = ENDPOINTS[self.rng.random_range(0..ENDPOINTS.len())];
                        Crash::InFlight(m, p)
                    }
                    _ => Crash::Overtaken(PAUSES[self.rng.random_range(0..PAUSES.len())]),
                };
                // Pending until its point is reached, for up to 100 of this instance's passes.
                self.instances[k].crash = Some((crash, 100));
                self.trace(format!("instance {k} will crash: {crash:?}"));
            }
            15..37 => self.mixpanel_fault(),
            37..47 => {
                if self.rng.random_bool(0.4) {
                    let n = self.rng.random_range(1..=2);
                    self.store.race_next_publishes(n);
                    self.trace(format!("the shared store's next {n} publishes lose a race"));
                } else {
                    let kind = if self.rng.random_bool(0.7) {
                        SinkErrorKind::Unavailable
                    } else {
                        SinkErrorKind::Denied
                    };
                    let len = minutes(&mut self.rng, 5, 120);
                    self.store.fail_with(Some(kind));
                    self.window(len, Undo::Store, true);
                    self.trace(format!("shared store fails ({kind:?}) for {} min", len.num_minutes()));
                }
            }
            47..54 => {
                // An NTP correction: one host's clock is off by up to 10
                // minutes, then stepped back; never two at once.
                let off = self.instances.iter().position(|i| i.skew != Duration::zero());
                let (k, skew) = match off {
                    Some(k) => (k, Duration::zero()),
                    None => {
                        let Some(k) = self.up() else { return (None, None, false) };
                        let mut step = minutes(&mut self.rng, -10, 10);
                        if step == Duration::zero() {
                            step = Duration::minutes(1);
                        }
                        (k, step)
                    }
                };
                self.instances[k].skew = skew;
                self.count("clock steps");
                self.trace(format!("instance {k}'s clock steps to {} s off", skew.num_seconds()));
            }
            54..60 => {
                let pick = self.rng.random_range(0..5);
                let with_f = self.variant.with_f;
                self.variant = self.variant.changed(pick);
                match (with_f, self.variant.with_f) {
                    (true, false) => self.ledger.f_unmanaged.push((self.now, None)),
                    (false, true) => {
                        if let Some((_, end @ None)) = self.ledger.f_unmanaged.last_mut() {
                            *end = Some(self.now + Duration::hours(2));
                        }
                    }
                    _ => {}
                }
                for k in 0..self.instances.len() {
                    let at = self.now + minutes(&mut self.rng, 0, 120);
                    self.instances[k].reload_at = Some(at);
                }
                self.count("policy changes");
                self.trace(format!("the policy changes: {:?}", self.variant));
            }
            60..68 => return self.rotate_now().await,
            68..72 => {
                // The store loses a primary (a restore from a snapshot older
                // than it): what it published becomes an account nobody
                // vouches for, still in use by its consumers.
                let present: Vec<&'static str> =
                    SPECS.iter().filter(|s| self.variant.has(s)).map(|s| s.label).collect();
                let label = present[self.rng.random_range(0..present.len())];
                let lost = match spec(label).map(|s| s.sink) {
                    Some("disk") => std::fs::remove_file(self.dir.path().join("disk/d.json")).is_ok(),
                    _ => spec(label).is_some_and(|s| self.store.remove(s.path)),
                };
                if lost {
                    // What it published and what it vouched for: nobody vouches for them now.
                    for a in self.ledger.accounts.values_mut() {
                        let of = match a.owner {
                            Owner::Lineage(l) => l,
                            Owner::Legacy => "d",
                            _ => continue,
                        };
                        if of == label && a.deleted.is_none() {
                            a.lost = true;
                        }
                    }
                    // Nothing is published until an instance's next pass over it.
                    self.ledger
                        .disturbed
                        .push((self.now, self.now + RESYNC + Duration::hours(1)));
                    self.count("primaries lost");
                    self.trace(format!("the primary of {label} is lost"));
                }
                return (None, None, false);
            }
            72..80 => {
                let hide = minutes(&mut self.rng, 1, 5);
                let len = minutes(&mut self.rng, 30, 180);
                self.quirks.list_hides_newer_than = Some(hide);
                self.sim.set_quirks(self.quirks);
                self.window(len, Undo::ListQuirk, false);
                self.trace(format!(
                    "the account list leaves out accounts younger than {} s, for {} min",
                    hide.num_seconds(),
                    len.num_minutes()
                ));
            }
            _ => {
                let lag = minutes(&mut self.rng, 5, 30);
                let len = minutes(&mut self.rng, 60, 360);
                self.quirks.last_used_lag = Some(lag);
                self.sim.set_quirks(self.quirks);
                self.window(len, Undo::LagQuirk, false);
                self.trace(format!(
                    "last_used lags {} min, for {} min",
                    lag.num_minutes(),
                    len.num_minutes()
                ));
            }
        }
        (None, None, false)
    }

    fn mixpanel_fault(&mut self) {
        let (method, path) = ENDPOINTS[self.rng.random_range(0..ENDPOINTS.len())];
        let mutating = method != "GET";
        let action = match self.rng.random_range(0..10) {
            0..3 => FaultAction::Status(*[500, 502, 503].get(self.rng.random_range(0..3)).unwrap()),
            3..5 => FaultAction::RateLimit { retry_after_secs: 30 },
            5..7 => FaultAction::Latency(StdDuration::from_millis(3)),
            7 if mutating => FaultAction::CommitThenDrop,
            // A timeout (the client's is 1 s): real time, so only once.
            8 => FaultAction::Latency(StdDuration::from_millis(1500)),
            _ => FaultAction::Status(500),
        };
        let once = match action {
            FaultAction::CommitThenDrop => true,
            FaultAction::Latency(d) => d > StdDuration::from_secs(1) || self.rng.random_bool(0.3),
            _ => self.rng.random_bool(0.3),
        };
        // `GET /me` from new accounts only: the verification, not consumers.
        let from_new = path == "/me";
        let mut f = if once {
            Fault::once(method, path, action.clone())
        } else {
            Fault::always(method, path, action.clone())
        };
        if from_new {
            f = f.from_callers("mpr-");
        }
        self.sim.inject(f.clone());
        self.count("mixpanel faults");
        if once {
            self.trace(format!("mixpanel fault once: {method} {path} {action:?}"));
        } else {
            let len = minutes(&mut self.rng, 5, 240);
            let disturbs = !matches!(action, FaultAction::Latency(_));
            self.window(len, Undo::Fault(f), disturbs);
            self.trace(format!(
                "mixpanel fault for {} min: {method} {path} {action:?}",
                len.num_minutes()
            ));
        }
    }

    /// `rotate-now` (sometimes `--revoke-old`) on an instance, for an integration.
    async fn rotate_now(&mut self) -> (Option<&'static str>, Option<usize>, bool) {
        let Some(k) = self.up() else { return (None, None, false) };
        let names: Vec<String> = self.instances[k]
            .engine
            .as_ref()
            .unwrap()
            .policy()
            .integrations
            .iter()
            .map(|i| i.name.clone())
            .collect();
        let name = names[self.rng.random_range(0..names.len())].clone();
        let label = self.label_of(&name);
        let revoke_old = self.rng.random_bool(0.25);
        if revoke_old {
            self.ledger.revoked.entry(label).or_default().push(self.now);
        }
        let published_a = self.forced(k, &name, revoke_old).await;
        (revoke_old.then_some(label), Some(k), published_a)
    }

    /// A forced rotation of `name` by instance k (`rotate-now`: a command
    /// beside the daemon, the same policy); whether it published `a`.
    async fn forced(&mut self, k: usize, name: &str, revoke_old: bool) -> bool {
        let local = self.local(k);
        self.instances[k].clock.set(local);
        let opts = PassOptions {
            only: Some([name.to_string()].into()),
            force: [name.to_string()].into(),
            revoke_old,
            log_reported: false,
            ..Default::default()
        };
        self.count("rotate-now");
        let crash = self.instances[k].crash.take();
        let r = self.pass(k, name, &opts).await;
        self.instances[k].crash = crash;
        r.is_some_and(|r| r.rotated.is_some()) && self.label_of(name) == "a"
    }
}
