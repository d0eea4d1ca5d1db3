//! `cargo bench`: the pure parts of a pass at scale. Whole-process figures
//! (wall, CPU, memory, threads, API calls) come from `scripts/bench.sh`.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use mixpanel_rotator::mixpanel::client::decode;
use mixpanel_rotator::mixpanel::lenient::List;
use mixpanel_rotator::mixpanel::types::ServiceAccount;
use mixpanel_rotator::policy::Policy;
use mixpanel_rotator::rotation::observe::Accounts;
use mixpanel_rotator::rotation::{Observation, Request, Scope, decide};
use mixpanel_rotator::secret::Secret;
use mixpanel_rotator::sink::{Payload, Version};
use reqwest::StatusCode;

fn main() {
    divan::main();
}

const N: usize = 10_000;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-28T04:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// A list-service-accounts answer of `n` accounts, shaped like real Mixpanel's.
fn account_list(n: usize) -> Vec<u8> {
    let rows: Vec<serde_json::Value> = (0..n)
        .map(|k| {
            serde_json::json!({
                "id": 1000 + k,
                "username": format!("mpr-i{k:05}-20261101T040000Z-7f3a.abc123.mp-service-account"),
                "last_used": "2026-11-27T10:00:00",
                "expires": "2026-12-01 04:00:00",
                "creator": 7, "creator_email": "a@example.com", "creator_name": null,
                "created": "2026-11-01T04:00:00", "user": 9, "role": "consumer"
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"status": "ok", "results": rows})).unwrap()
}

#[divan::bench(sample_count = 20)]
fn decode_10000_account_list(b: divan::Bencher) {
    let body = account_list(N);
    b.bench(|| decode::<List<ServiceAccount>>("list", StatusCode::OK, None, divan::black_box(&body)).unwrap());
}

/// N integrations, each with its published account and one older lineage account.
struct World {
    policy: Policy,
    accounts: Arc<Accounts>,
    payloads: Vec<Payload>,
}

fn world() -> World {
    let mut text = String::from(
        "version = 1\n[mixpanel]\nregion = \"us\"\norganization_id = 1\nusername = \"rotator\"\nsecret = { env = \"X\" }\n\
         [defaults]\nprojects = [{ id = 101, role = \"consumer\" }]\n[sinks.f]\ntype = \"file\"\ndir = \"/tmp/x\"\n",
    );
    for k in 0..N {
        text.push_str(&format!(
            "[[integrations]]\nname = \"i{k:05}\"\nsink = \"f\"\npath = \"i{k:05}.json\"\n"
        ));
    }
    let policy = Policy::parse(&text).unwrap();
    let list: List<ServiceAccount> = decode("list", StatusCode::OK, None, &account_list(N)).unwrap();
    let mut all = list.0;
    let older: Vec<ServiceAccount> = all
        .iter()
        .map(|a| ServiceAccount {
            id: a.id + 100_000,
            username: a.username.replace("20261101T040000Z", "20261001T040000Z"),
            ..a.clone()
        })
        .collect();
    all.extend(older);
    let payloads = (0..N)
        .map(|k| Payload {
            username: format!("mpr-i{k:05}-20261101T040000Z-7f3a.abc123.mp-service-account"),
            secret: Secret::new("s"),
            service_account_id: 1000 + k as u64,
            organization_id: 1,
            integration: format!("i{k:05}"),
            expires: Some(now() + Duration::days(3)),
            created: now() - Duration::days(27),
            rotated_at: now() - Duration::days(27),
            rotation_id: format!("r{k}"),
            previous_service_account_id: Some(100_000 + 1000 + k as u64),
            projects: vec![],
            retiring: vec![],
        })
        .collect();
    World {
        accounts: Arc::new(Accounts::new("mpr", all)),
        policy,
        payloads,
    }
}

#[divan::bench(sample_count = 10)]
fn index_20000_accounts(b: divan::Bencher) {
    let w = world();
    let list = w.accounts.list().to_vec();
    b.bench(|| Accounts::new("mpr", divan::black_box(list.clone())));
}

#[divan::bench(sample_count = 10)]
fn observe_and_decide_10000_integrations(b: divan::Bencher) {
    let w = world();
    let scope = Scope::of(&w.policy);
    b.bench(|| {
        let mut due = 0usize;
        for (i, p) in w.policy.integrations.iter().zip(&w.payloads) {
            let obs = Observation::new(i, "mpr", &w.accounts, Some((p.clone(), Version("v".into()))));
            let plan = decide(i, &scope, &obs, now(), Request::default());
            due += usize::from(plan.rotate.is_some());
        }
        due
    });
}
