//! Test harness: a real simulator on a free loopback port, a manual clock,
//! a file sink in a temporary directory, and captured logs that are searched
//! for every token the simulator ever issued.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use mixpanel_rotator::clock::{ManualClock, SharedClock};
use mixpanel_rotator::mixpanel::{Client, ClientSettings, Credentials, RetryPolicy};
use mixpanel_rotator::policy::Policy;
use mixpanel_rotator::rotation::lineage::new_rotation_id;
use mixpanel_rotator::rotation::{Engine, PassOptions, Report};
use mixpanel_rotator::simulator::{Seed, Simulator};
use tracing_subscriber::fmt::MakeWriter;

/// Captured log output.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

pub struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = CaptureWriter;
    fn make_writer(&'a self) -> CaptureWriter {
        CaptureWriter(self.0.clone())
    }
}

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub const START: &str = "2026-11-28T04:00:00Z";

pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base: StdDuration::from_millis(10),
        cap: StdDuration::from_millis(50),
        max_retry_after: StdDuration::from_secs(5),
    }
}

pub struct Harness {
    pub sim: Simulator,
    pub clock: ManualClock,
    pub dir: tempfile::TempDir,
    pub logs: Capture,
    /// Command output collected by tests, searched for secrets at the end.
    pub outputs: Mutex<Vec<String>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Harness {
    /// A simulator with `seed`, and every log line (debug and up, every
    /// crate) captured. Tests run on a current-thread runtime, so the
    /// thread-local subscriber also sees the simulator's tasks.
    pub async fn new(seed: Seed) -> Self {
        let logs = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(logs.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        let clock = ManualClock::new(t(START));
        let shared: SharedClock = Arc::new(clock.clone());
        let sim = Simulator::start(seed, shared, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.secret"), sim.admin().secret.expose()).unwrap();
        Self {
            sim,
            clock,
            dir,
            logs,
            outputs: Mutex::new(vec![]),
            _guard: guard,
        }
    }

    /// As [`Harness::new`], with the simulator's clock at the machine's time:
    /// for tests that run the binary, which uses the real clock.
    pub async fn realtime(seed: Seed) -> Self {
        let h = Self::new(seed).await;
        h.clock.set(mixpanel_rotator::clock::Clock::now(
            &mixpanel_rotator::clock::SystemClock,
        ));
        h
    }

    pub fn clock_now(&self) -> DateTime<Utc> {
        use mixpanel_rotator::clock::Clock as _;
        self.clock.now()
    }

    pub fn creds_dir(&self) -> PathBuf {
        self.dir.path().join("creds")
    }

    /// A policy with the simulator, a file sink `local`, and `rest` appended.
    pub fn policy(&self, rest: &str) -> String {
        format!(
            r#"version = 1

[mixpanel]
base_url = "{base}"
organization_id = 1
username = "{user}"
secret = {{ file = "{secret}" }}
{regions}

[sinks.local]
type = "file"
dir = "{dir}"

{rest}
"#,
            base = self.sim.base_url(),
            regions = self.sim.region_urls_toml(),
            user = self.sim.admin().username,
            secret = self.dir.path().join("admin.secret").display(),
            dir = self.creds_dir().display(),
        )
    }

    /// Writes a new policy file and returns its path.
    pub fn policy_file(&self, rest: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = self.dir.path().join(format!("policy-{n}.toml"));
        std::fs::write(&p, self.policy(rest)).unwrap();
        p
    }

    pub fn engine(&self, rest: &str) -> Engine {
        let policy = Policy::parse(&self.policy(rest)).unwrap_or_else(|e| panic!("{e}"));
        Engine::with_retry(
            Arc::new(policy),
            Arc::new(self.clock.clone()),
            fast_retry(),
            fast_retry(),
        )
        .unwrap()
    }

    pub async fn pass(&self, engine: &Engine) -> Report {
        let mut r = engine.pass(&PassOptions::default()).await;
        assert_eq!(r.len(), 1);
        r.remove(0)
    }

    pub async fn force(&self, engine: &Engine, name: &str, revoke_old: bool) -> Report {
        let mut r = engine
            .pass(&PassOptions {
                force: [name.to_string()].into(),
                only: Some([name.to_string()].into()),
                revoke_old,
                ..Default::default()
            })
            .await;
        r.remove(0)
    }

    /// The payload the file sink holds at `path`.
    pub fn payload(&self, path: &str) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.creds_dir().join(path)).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    /// A client acting as the credential published at `path`.
    pub fn consumer(&self, path: &str) -> Client {
        self.client_for(&self.payload(path).expect("a published payload"))
    }

    /// A client acting as the credential in a payload (as any sink stores it).
    pub fn client_for(&self, p: &serde_json::Value) -> Client {
        Client::new(ClientSettings {
            base_url: self.sim.base_url(),
            organization_id: 1,
            credentials: Credentials {
                username: p["username"].as_str().unwrap().into(),
                secret: mixpanel_rotator::secret::Secret::new(p["secret"].as_str().unwrap()),
            },
            max_concurrency: 1,
            timeout: StdDuration::from_secs(5),
            retry: fast_retry(),
        })
        .unwrap()
    }

    /// Runs the real binary with `--config config` and `args`, `RUST_LOG`
    /// and `MIXPANEL_ROTATOR_CONFIG` removed unless given in `env`; records its
    /// output for the leak check.
    pub async fn run_bin(&self, config: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_mixpanel-rotator"));
        c.arg("--config")
            .arg(config)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("MIXPANEL_ROTATOR_CONFIG");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().await.unwrap();
        self.record(String::from_utf8_lossy(&out.stdout));
        self.record(String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Two rotators forced at once from the same observed version (the
    /// verification is slowed so both observe before either publishes).
    /// Asserts that exactly one wins and the loser deleted its own account;
    /// returns (winner, loser).
    pub async fn race(&self, a: &Engine, b: &Engine) -> (Report, Report) {
        let before = self.accounts_with_prefix("mpr-etl-").len();
        self.sim.inject(
            mixpanel_rotator::simulator::Fault::times(
                "GET",
                "/me",
                mixpanel_rotator::simulator::FaultAction::Latency(StdDuration::from_millis(300)),
                4,
            )
            .from_callers("mpr-"),
        );
        let (ra, rb) = tokio::join!(self.force(a, "etl", false), self.force(b, "etl", false));
        let winners = [&ra, &rb].iter().filter(|r| r.rotated.is_some()).count();
        assert_eq!(
            winners, 1,
            "exactly one publish wins: {:?} / {:?}",
            ra.errors, rb.errors
        );
        let (winner, loser) = if ra.rotated.is_some() { (ra, rb) } else { (rb, ra) };
        let e = &loser.errors[0];
        assert_eq!(
            e.cause.sink_error().map(|s| s.kind),
            Some(mixpanel_rotator::sink::SinkErrorKind::Conflict),
            "{e}"
        );
        assert!(e.to_string().contains("another rotator published first"), "{e}");
        assert!(
            matches!(
                e.consequence,
                Some(mixpanel_rotator::rotation::Consequence::NewDeleted { .. })
            ),
            "{e}"
        );
        assert_eq!(
            self.accounts_with_prefix("mpr-etl-").len(),
            before + 1,
            "the loser's account is gone"
        );
        (winner, loser)
    }

    pub fn record(&self, output: impl Into<String>) {
        self.outputs.lock().unwrap().push(output.into());
    }

    /// Accounts whose username starts with `prefix`.
    pub fn accounts_with_prefix(&self, prefix: &str) -> Vec<mixpanel_rotator::mixpanel::ServiceAccount> {
        self.sim
            .accounts()
            .into_iter()
            .filter(|a| a.username.starts_with(prefix))
            .collect()
    }

    /// Fails if any token the simulator ever issued appears in the captured
    /// logs, in recorded command output, or in a report's Debug/JSON form.
    pub fn assert_no_secret_leaked(&self, reports: &[&Report]) {
        self.assert_no_secret_leaked_with(reports, &[]);
    }

    /// As [`Harness::assert_no_secret_leaked`], also searching for `extra` secrets (Vault tokens, ...).
    pub fn assert_no_secret_leaked_with(&self, reports: &[&Report], extra: &[&str]) {
        let mut haystack = self.logs.text();
        for o in self.outputs.lock().unwrap().iter() {
            haystack.push_str(o);
        }
        for r in reports {
            haystack.push_str(&format!("{r:?}"));
            haystack.push_str(&serde_json::to_string(r).unwrap());
        }
        assert!(!haystack.is_empty());
        for s in extra {
            assert!(!haystack.contains(s), "an extra secret appears in logs or output");
        }
        let issued = self.sim.issued_secrets();
        assert!(!issued.is_empty());
        for s in issued {
            assert!(
                !haystack.contains(s.expose()),
                "a secret issued by the simulator appears in logs or output"
            );
        }
    }
}

/// Asserts a report has no errors.
pub fn ok(r: &Report) {
    assert!(r.errors.is_empty(), "unexpected errors: {:#?}", r.errors);
}

/// What must hold after any failure, once time has passed.
pub struct Settled<'a> {
    pub case: &'a str,
    /// The sink (in the engine) and path of the integration.
    pub sink: &'a str,
    pub path: &'a str,
    /// `mpr-{integration}-`.
    pub lineage: &'a str,
    /// Accounts that must be untouched.
    pub others: &'a [u64],
    /// A file sink's directory, which must hold no temporary file.
    pub dir: Option<std::path::PathBuf>,
}

impl Harness {
    /// What a (restarted) rotator does over time: passes past `orphan_after`
    /// (3 x 2 minutes) and past `grace` (2 hours); returns the last pass.
    pub async fn settle(&self, engine: &Engine) -> Report {
        for _ in 0..3 {
            self.clock.advance(chrono::Duration::minutes(2));
            self.pass(engine).await;
        }
        self.clock.advance(chrono::Duration::hours(2));
        self.pass(engine).await;
        self.pass(engine).await
    }

    /// The invariants: a quiet last pass, exactly the published lineage
    /// account left, its credential authenticates, the others untouched, no
    /// temporary file, no secret printed.
    pub async fn assert_settled(&self, engine: &Engine, last: &Report, s: Settled<'_>) {
        let case = s.case;
        assert!(last.errors.is_empty(), "{case}: {:?}", last.errors);
        let sink = engine.sink(s.sink).unwrap();
        let (published, _) = sink.read_current(s.path).await.unwrap().expect("published");
        let lineage: Vec<u64> = self.accounts_with_prefix(s.lineage).iter().map(|a| a.id).collect();
        assert_eq!(
            lineage,
            vec![published.service_account_id],
            "{case}: exactly one lineage account"
        );
        let consumer = serde_json::json!({"username": published.username, "secret": published.secret.expose()});
        self.client_for(&consumer)
            .me()
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        for id in s.others {
            assert!(
                self.sim.account(*id).is_some(),
                "{case}: account {id} outside the lineage was touched"
            );
        }
        if let Some(dir) = s.dir {
            let tmp: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect();
            assert!(tmp.is_empty(), "{case}: {tmp:?}");
        }
        self.assert_no_secret_leaked(&[last]);
    }
}

/// Runs `group(item)` for every item at once, each on a thread and runtime
/// of its own (a matrix whose rows mostly wait on servers), and waits for all.
pub fn in_parallel<T, F, Fut>(items: impl IntoIterator<Item = T>, group: F)
where
    T: Send,
    F: Fn(T) -> Fut + Sync,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::scope(|scope| {
        for item in items {
            let group = &group;
            scope.spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(group(item));
            });
        }
    });
}

/// The sinks a test is tried against: every backend registered in
/// `mixpanel_rotator::sink::SinkConfig` (a new backend adds its row here).
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    File,
    Vault,
    Aws,
    /// The in-memory store (`type = "memory"`, the `testing` feature).
    Memory,
}

pub const ALL: [Backend; 4] = [Backend::File, Backend::Vault, Backend::Aws, Backend::Memory];

/// A server's address or credential from the environment `scripts/test.sh` sets.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test.sh, which starts OpenBao and moto")
    })
}

/// `prefix` and a fresh suffix.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &new_rotation_id()[..8])
}

impl Backend {
    /// A sink `s` of this kind and a fresh path in it.
    pub fn sink(self, h: &Harness) -> (String, String) {
        match self {
            Backend::File => (
                format!(
                    "[sinks.s]\ntype = \"file\"\ndir = \"{}\"\n",
                    h.dir.path().join("s").display()
                ),
                "etl.json".into(),
            ),
            Backend::Vault => (
                format!(
                    "[sinks.s]\ntype = \"vault\"\naddress = \"{}\"\nmount = \"secret\"\nauth = {{ method = \"token\", token = {{ file = \"{}\" }} }}\n",
                    env("MPR_TEST_BAO_ADDR"),
                    env("MPR_TEST_BAO_TOKEN_FILE")
                ),
                format!("{}/etl", unique("own")),
            ),
            Backend::Aws => (
                format!(
                    "[sinks.s]\ntype = \"aws-secrets-manager\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
                    env("MPR_TEST_MOTO_URL")
                ),
                unique("mixpanel/own"),
            ),
            Backend::Memory => (
                format!("[sinks.s]\ntype = \"memory\"\nstore = \"{}\"\n", unique("store")),
                "etl".into(),
            ),
        }
    }
}

/// Held by every test that runs the rotator's own credential in this
/// process: `cargo test` runs tests as threads of one process, failpoints
/// are armed per integration name, and every own credential is
/// `(rotator)`: a crash test's armed point would stop another test's pass.
pub static OWN_CREDENTIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
