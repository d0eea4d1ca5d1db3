//! `demo`: a guided rotation against the built-in simulator and a file sink
//! in a temporary directory. The first thing a new user runs.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;

use crate::clock::{SharedClock, SystemClock};
use crate::exit::Exit;
use crate::mixpanel::{Client, ClientSettings, Credentials, RetryPolicy, ServiceAccount};
use crate::policy::Policy;
use crate::render::{outcome_text, plan_text, status_table};
use crate::rotation::{Engine, PassOptions};
use crate::secret::Secret;
use crate::simulator::{Seed, Simulator};
use crate::values::HumanDuration;

/// Writes a secret to a new file readable only by its owner.
pub(crate) fn write_secret_file(path: &Path, secret: &Secret) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(secret.expose().as_bytes())?;
    f.sync_all()
}

fn step(n: u32, title: &str, text: &str) {
    println!();
    println!("== {n}. {title}");
    for line in text.lines() {
        println!("   {line}");
    }
    println!();
}

fn indent(s: &str) {
    for line in s.lines() {
        println!("   | {line}");
    }
}

/// Runs the demo.
pub(crate) async fn run(grace: HumanDuration) -> Exit {
    match demo(grace).await {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("demo failed: {e}");
            Exit::Failed
        }
    }
}

/// The demo's world: the simulator, a temporary directory, and the engine.
struct Demo {
    sim: Simulator,
    dir: tempfile::TempDir,
    clock: SharedClock,
    grace: HumanDuration,
    legacy: ServiceAccount,
}

async fn demo(grace: HumanDuration) -> Result<(), String> {
    let d = Demo::start(grace).await?;
    let engine = d.policy_step()?;
    d.plan_step(&engine).await;
    d.rotate_step(&engine).await?;
    d.consumer_step().await?;
    d.status_step(&engine).await;
    let still = d.grace_step(&engine).await;
    step(
        8,
        "Next",
        "Try a policy against the simulator as a server:  mixpanel-rotator simulator\n\
         Then point it at your organization: see config/example.toml and the README.",
    );
    if still {
        return Err("the old account was not deleted after grace".into());
    }
    Ok(())
}

fn dry_run() -> PassOptions {
    PassOptions {
        dry_run: true,
        ..Default::default()
    }
}

impl Demo {
    async fn start(grace: HumanDuration) -> Result<Self, String> {
        let clock: SharedClock = Arc::new(SystemClock);
        let addr = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        let sim = Simulator::start(Seed::Demo, clock.clone(), addr)
            .await
            .map_err(|e| format!("cannot start the simulator: {e}"))?;
        let dir = tempfile::Builder::new()
            .prefix("mixpanel-rotator-demo-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let legacy = sim
            .accounts()
            .into_iter()
            .find(|a| a.username.starts_with("etl-legacy"))
            .ok_or("the demo seed has no etl-legacy account")?;
        println!("mixpanel-rotator demo");
        println!(
            "Everything below runs against the built-in Mixpanel SIMULATOR on {}",
            sim.base_url()
        );
        println!(
            "(not Mixpanel) and a file sink in {}. Nothing real is touched.",
            dir.path().display()
        );
        step(
            1,
            "The organization",
            &format!(
                "The simulated organization has an admin account the rotator uses ({}),\n\
                 and `etl-legacy` (id {}), a long-lived account an ETL job uses today. It is a\n\
                 member of projects 101 (analyst) and 102 (admin) by individual grants, and of\n\
                 project 103 through a team: team grants cannot be copied, and the rotator says so.",
                sim.admin().username,
                legacy.id
            ),
        );
        Ok(Self {
            sim,
            dir,
            clock,
            grace,
            legacy,
        })
    }

    fn policy_text(&self, secret_path: &Path) -> String {
        format!(
            r#"version = 1
namespace = "mpr"

[mixpanel]
base_url = "{base}"
organization_id = {org}
username = "{user}"
secret = {{ file = "{secret}" }}
{regions}

[defaults]
ttl = "30d"
grace = "{grace}"

[sinks.local]
type = "file"
dir = "{dir}"

[[integrations]]
name = "etl"
sink = "local"
path = "etl.json"
role = "analyst"
projects = "copy"
adopt = {legacy}
"#,
            base = self.sim.base_url(),
            regions = self.sim.region_urls_toml(),
            org = self.sim.organization_id(),
            user = self.sim.admin().username,
            secret = secret_path.display(),
            grace = self.grace,
            dir = self.dir.path().join("creds").display(),
            legacy = self.legacy.id,
        )
    }

    fn policy_step(&self) -> Result<Engine, String> {
        let secret_path = self.dir.path().join("rotator.secret");
        write_secret_file(&secret_path, &self.sim.admin().secret).map_err(|e| e.to_string())?;
        let policy_text = self.policy_text(&secret_path);
        let policy_path = self.dir.path().join("policy.toml");
        std::fs::write(&policy_path, &policy_text).map_err(|e| e.to_string())?;
        step(
            2,
            "The policy",
            &format!(
                "Written to {}. `adopt` names the account in use today: the first rotation\n\
                 replaces it. The rotator's own secret is referenced ({{ file = ... }}), never inline.",
                policy_path.display()
            ),
        );
        indent(&policy_text);
        let policy = Policy::parse(&policy_text).map_err(|e| e.to_string())?;
        let fast = RetryPolicy {
            max_attempts: 5,
            base: std::time::Duration::from_millis(100),
            cap: std::time::Duration::from_secs(1),
            max_retry_after: std::time::Duration::from_secs(5),
        };
        Engine::with_retry(Arc::new(policy), self.clock.clone(), fast.clone(), fast).map_err(|e| e.to_string())
    }

    async fn plan_step(&self, engine: &Engine) {
        step(
            3,
            "plan: what would happen (no change is made)",
            "`mixpanel-rotator plan` observes and decides, and makes no mutating call.",
        );
        let text = plan_text(&engine.pass(&dry_run()).await);
        indent(&format!("{text}{}\n", crate::render::PLAN_ONLY));
    }

    async fn rotate_step(&self, engine: &Engine) -> Result<(), String> {
        step(
            4,
            "rotate-now etl",
            "Create a fresh account named by lineage (mpr-etl-<time>-<hex>) with role, expiry\n\
             and the copied memberships; read it back; prove the new credential works with\n\
             GET /me; publish it to the file sink with a compare-and-swap. If any step failed,\n\
             the new account would be deleted and nothing published.",
        );
        let force = PassOptions {
            force: ["etl".to_string()].into(),
            ..Default::default()
        };
        let rotated = engine.pass(&force).await;
        indent(&outcome_text(&rotated));
        if rotated.iter().any(|r| r.failed()) {
            return Err("the rotation failed (see above)".into());
        }
        Ok(())
    }

    async fn consumer_step(&self) -> Result<(), String> {
        let cred_path = self.dir.path().join("creds").join("etl.json");
        let published: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cred_path).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        step(
            5,
            "What a consumer reads",
            &format!(
                "{} (mode 0600). `username` + `secret` are the Basic-auth credential;\n\
                 the rest is bookkeeping. The secret is shown redacted here: the rotator never prints it.",
                cred_path.display()
            ),
        );
        let mut shown = published.clone();
        if let Some(o) = shown.as_object_mut() {
            o.insert("secret".into(), serde_json::json!("**REDACTED**"));
        }
        indent(&serde_json::to_string_pretty(&shown).unwrap_or_default());
        let field = |k: &str| published.get(k).and_then(serde_json::Value::as_str).unwrap_or_default();
        let consumer = Credentials {
            username: field("username").to_string(),
            secret: Secret::new(field("secret")),
        };
        let check = Client::new(ClientSettings {
            base_url: self.sim.base_url(),
            organization_id: self.sim.organization_id(),
            credentials: consumer,
            max_concurrency: 1,
            timeout: std::time::Duration::from_secs(5),
            retry: RetryPolicy::default(),
        })
        .map_err(|e| e.to_string())?;
        let me = check
            .me()
            .await
            .map_err(|e| format!("the published credential does not work: {e}"))?;
        println!(
            "   The published credential authenticates: it sees {} project(s).",
            me.project_ids(self.sim.organization_id()).len()
        );
        Ok(())
    }

    async fn status_step(&self, engine: &Engine) {
        step(
            6,
            "status",
            &format!(
                "The old account is kept for `grace` ({}) so consumers can pick up the new one.",
                self.grace
            ),
        );
        indent(&status_table(&engine.pass(&dry_run()).await));
    }

    /// Waits out the grace period and runs one pass; true if the old account is still there.
    async fn grace_step(&self, engine: &Engine) -> bool {
        step(
            7,
            "Waiting out the grace period",
            &format!(
                "Sleeping {}, then running one reconcile pass (what `reconcile` or the daemon does).",
                self.grace
            ),
        );
        self.clock
            .sleep_until(crate::clock::after(
                crate::clock::after(self.clock.now(), self.grace.0),
                chrono::Duration::milliseconds(500),
            ))
            .await;
        let after = engine.pass(&PassOptions::default()).await;
        indent(&outcome_text(&after));
        let still = self.sim.account(self.legacy.id).is_some();
        println!(
            "   etl-legacy (id {}) {}",
            self.legacy.id,
            if still {
                "still exists (unexpected)"
            } else {
                "is deleted: no stray account is left behind."
            }
        );
        println!();
        indent(&status_table(&engine.pass(&dry_run()).await));
        still
    }
}
