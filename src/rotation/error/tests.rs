//! The text of every user-facing error of a pass, snapshot-tested: a change
//! of wording shows up as a reviewed diff of `snapshots/`, never by accident.

use super::*;
use crate::mixpanel::types::Role;
use crate::rotation::decide::SharedPath;
use crate::sink::SinkError;

fn api(status: u16) -> MixpanelError {
    on("create-service-account", status)
}

fn on(endpoint: &'static str, status: u16) -> MixpanelError {
    MixpanelError::Api {
        endpoint,
        status,
        message: "Injected fault".into(),
    }
}

fn transport() -> MixpanelError {
    MixpanelError::Transport {
        endpoint: "get-service-account",
        detail: "timed out".into(),
        connect: false,
    }
}

fn sink(source: SinkError) -> Cause {
    Cause::Sink {
        sink: "vault sink `vault` (https://vault.internal:8200, mount `secret`)".into(),
        path: "mixpanel/etl".into(),
        source,
    }
}

fn grants() -> Vec<ProjectGrant> {
    vec![
        ProjectGrant {
            id: 101,
            role: Role::Analyst.into(),
        },
        ProjectGrant {
            id: 102,
            role: Role::Admin.into(),
        },
    ]
}

fn blocked() -> Vec<Blocked> {
    vec![
        Blocked::SharedPath(Box::new(SharedPath {
            sink: "local".into(),
            path: "etl.json".into(),
            path_key: "integrations[1].path".into(),
            integration: "ci".into(),
            organization: 1,
            found_integration: "etl".into(),
            found_organization: 1,
        })),
        Blocked::ForeignCurrent {
            sink: "local".into(),
            path: "etl.json".into(),
            id: 1,
            username: "rotator.abc123.mp-service-account".into(),
            adopt_key: "integrations[0].adopt".into(),
            hint: Default::default(),
        },
        Blocked::OwnAccountAdopted {
            adopt_key: "integrations[0].adopt".into(),
            username: "rotator.abc123.mp-service-account".into(),
        },
        Blocked::AdoptNotFound {
            adopt_key: "integrations[0].adopt".into(),
            adopt: "1002".into(),
            projects_key: "integrations[0].projects".into(),
        },
        Blocked::NothingToCopy {
            adopt_key: "integrations[0].adopt".into(),
            projects_key: "integrations[0].projects".into(),
        },
        Blocked::AdoptShared {
            adopt_key: "integrations[1].adopt".into(),
            other_key: "integrations[0].adopt".into(),
            id: 1002,
        },
        Blocked::AdoptClaimed {
            adopt_key: "integrations[1].adopt".into(),
            id: 1005,
            username: "mpr-etl-20261128T040000Z-7f3a.abc123.mp-service-account".into(),
            claim: crate::rotation::claims::Claim {
                integration: "etl".into(),
                kind: crate::rotation::claims::ClaimKind::Publishes,
            },
        },
    ]
}

/// Every cause at a step where it happens, with its consequence.
fn catalogue() -> Vec<StepError> {
    let e = |step, cause| StepError::new("etl", step, cause);
    let mut out = vec![
        e(Step::ListAccounts, Cause::Mixpanel(on("list-service-accounts", 401))),
        e(Step::ListAccounts, Cause::Mixpanel(transport())),
        e(Step::ReadSink, sink(SinkError::corrupt("mixpanel/etl: the stored payload is not a mixpanel-rotator payload (line 1, column 1: not JSON)"))).then(Consequence::NothingTouched),
        e(Step::ReadSink, sink(SinkError::denied("cannot read secret/data/mixpanel/etl: HTTP 403: permission denied: the token lacks permission or was revoked; check the Vault policy (README, \"vault\" sink)"))).then(Consequence::NothingTouched),
        e(Step::SinkCheck, sink(SinkError::denied("the token lacks create, update on secret/data/mixpanel/etl: grant them in its Vault policy (README, \"vault\" sink)"))),
        e(Step::CopyMemberships, Cause::Project { id: 101, source: transport() }),
        e(Step::Create, Cause::Mixpanel(api(403))),
        e(Step::Create, Cause::Mixpanel(api(500))).then(Consequence::NotCreated),
        e(Step::Create, Cause::Mixpanel(api(500))).then(Consequence::StrayDeleted { id: 1005 }),
        e(Step::Create, Cause::Mixpanel(api(500))).then(Consequence::StrayDeleteFailed { id: 1005, error: "account 1005 (mpr-etl-20261128T040000Z-7f3a, orphan): Mixpanel delete-service-account: no answer (timed out)".into() }),
        e(Step::Create, Cause::Mixpanel(transport())).then(Consequence::Unchecked { error: transport().to_string() }),
        e(Step::ReadBack, Cause::Account { id: 1005, source: transport() }).then(Consequence::NewDeleted { id: 1005 }),
        e(Step::ReadBack, Cause::Project { id: 101, source: transport() }).then(Consequence::NewDeleted { id: 1005 }),
        e(Step::ReadBack, Cause::AddMemberships { account: 1005, missing: grants(), source: on("add-to-project", 500) }).then(Consequence::NewDeleted { id: 1005 }),
        e(Step::ReadBack, Cause::MembershipsMissing { account: 1005, missing: grants() }).then(Consequence::NewDeleteFailed { id: 1005, error: "account 1005 (mpr-etl-20261128T040000Z-7f3a, orphan): Mixpanel delete-service-account answered HTTP 500: Injected fault; the next pass tries again".into() }),
        e(Step::Verify, Cause::NotAccepted { attempts: 6, over: chrono::Duration::seconds(58), last: Box::new(Cause::WrongOrganization { organization: 1 }) }).then(Consequence::NewDeleted { id: 1005 }),
        e(Step::Verify, Cause::NotAccepted { attempts: 6, over: chrono::Duration::seconds(58), last: Box::new(Cause::Mixpanel(MixpanelError::Api { endpoint: "me", status: 401, message: "Invalid credentials".into() })) }).then(Consequence::NewDeleted { id: 1005 }),
        e(Step::Publish, sink(SinkError::conflict("secret/data/mixpanel/etl is no longer at version 3"))).then(Consequence::NewDeleted { id: 1005 }),
        e(Step::Publish, sink(SinkError::unavailable("cannot write secret/data/mixpanel/etl: HTTP 503"))).then(Consequence::NewKept { id: 1005, read_error: "cannot read secret/data/mixpanel/etl: HTTP 503".into() }),
        e(Step::Delete, Cause::Delete { id: 1001, username: "etl-legacy.abc123.mp-service-account".into(), reason: DeleteReason::Retiring, source: on("delete-service-account", 500) }),
        e(Step::Delete, Cause::Protected { id: 1005 }),
        e(Step::Create, Cause::UnexpectedCreate { asked: "mpr-etl-20261128T040000Z-7f3a".into(), id: 1, username: "rotator.abc123.mp-service-account".into() }).then(Consequence::StrayDeleted { id: 1005 }),
        e(Step::Publish, Cause::TooSlow { took: chrono::Duration::seconds(68), deadline: chrono::Duration::seconds(45) }).then(Consequence::NewDeleted { id: 1005 }),
        e(Step::CheckAccounts, Cause::InUseElsewhere(crate::rotation::decide::InUse {
            id: 1004,
            username: "mpr-etl-20261128T040000Z-7f3a.abc123.mp-service-account".into(),
            last_used: chrono::DateTime::parse_from_rfc3339("2026-11-28T05:00:00Z").unwrap().with_timezone(&chrono::Utc),
            last_used_unknown: false,
            idle_at: chrono::DateTime::parse_from_rfc3339("2026-11-29T05:00:00Z").unwrap().with_timezone(&chrono::Utc),
        })),
        e(Step::CheckAccounts, Cause::InUseElsewhere(crate::rotation::decide::InUse {
            id: 1004,
            username: "mpr-etl-20261128T040000Z-7f3a.abc123.mp-service-account".into(),
            last_used: chrono::DateTime::parse_from_rfc3339("2026-11-28T05:00:00Z").unwrap().with_timezone(&chrono::Utc),
            last_used_unknown: true,
            idle_at: chrono::DateTime::parse_from_rfc3339("2026-11-29T05:00:00Z").unwrap().with_timezone(&chrono::Utc),
        })),
        e(Step::CopyMemberships, Cause::NoProjectsVisible { organization: 1, account: 1002, key: "integrations[0].projects".into() }),
    ];
    out.extend(blocked().into_iter().map(|b| e(b.step(), Cause::Blocked(b))));
    out
}

#[test]
fn user_facing_step_errors() {
    let text: Vec<String> = catalogue().iter().map(|e| e.to_string()).collect();
    insta::assert_snapshot!("step_errors", text.join("\n\n"));
}

#[test]
fn mixpanel_errors() {
    let redirect = MixpanelError::Redirect {
        endpoint: "list-service-accounts",
        status: 301,
        location: "https://eu.mixpanel.com/api/app/organizations/1/service-accounts".into(),
    };
    let decode = MixpanelError::Decode {
        endpoint: "create-service-account",
        status: 201,
        detail: "missing field `token`".into(),
    };
    let text: Vec<String> = [api(401), api(403), api(429), api(500), transport(), redirect, decode]
        .iter()
        .map(|e| e.to_string())
        .collect();
    insta::assert_snapshot!("mixpanel_errors", text.join("\n\n"));
}

#[test]
fn step_errors_serialize_with_their_message() {
    let e = &catalogue()[7];
    let v = serde_json::to_value(e).unwrap();
    assert_eq!(v["integration"], "etl");
    assert_eq!(v["step"], "create");
    assert_eq!(v["message"], e.message());
    assert!(e.message().ends_with("once `orphan_after` has passed)"));
}

/// Every failure has a code made of listed parts, every listed part is
/// made by some failure, and the catalogue's codes are snapshot-tested (a
/// code is a contract: docs/output.schema.json lists the parts, scripts and
/// the Troubleshooting page match on them).
#[test]
fn every_error_code_is_made_of_listed_parts_and_every_part_occurs() {
    use std::collections::BTreeSet;
    let e = |step, cause| StepError::new("etl", step, cause);
    let mut extra = catalogue();
    let stale = Cause::StaleMirror {
        id: 1001,
        mirrors: "sink `local` path `etl.json`".into(),
    };
    extra.push(e(Step::Delete, stale));
    extra.push(e(
        Step::Audit,
        Cause::Audit(crate::audit::AuditError {
            path: "/var/log/x".into(),
            reason: "Permission denied (os error 13)".into(),
            before_change: true,
        }),
    ));
    extra.push(e(Step::Verify, Cause::WrongOrganization { organization: 1 }));
    extra.push(e(
        Step::Verify,
        Cause::NotAdmin {
            account: "mpr-rotator-20261128T040000Z-7f3a.abc123.mp-service-account".into(),
            role: "member".into(),
        },
    ));
    let steps: BTreeSet<&str> = Step::ALL.iter().map(|s| s.code()).collect();
    let sink_kinds: BTreeSet<&str> = crate::sink::SinkErrorKind::ALL.iter().map(|k| k.code()).collect();
    let (mut own, mut blocked_seen) = (BTreeSet::new(), BTreeSet::new());
    for err in &extra {
        let code = err.code();
        assert!(steps.contains(code.step.code()), "{code}");
        match code.source {
            Some("mixpanel") => assert!(MixpanelError::CODES.contains(&code.kind), "{code}"),
            Some("sink") => assert!(sink_kinds.contains(code.kind), "{code}"),
            Some("blocked") => assert!(blocked_seen.insert(code.kind) || Blocked::CODES.contains(&code.kind)),
            Some(other) => panic!("{code}: unknown source {other}"),
            None => {
                own.insert(code.kind);
            }
        }
        let text = code.to_string();
        assert!(
            text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.'),
            "{text}"
        );
    }
    assert_eq!(own, Cause::OWN_CODES.into_iter().collect(), "Cause::OWN_CODES");
    assert_eq!(blocked_seen, Blocked::CODES.into_iter().collect(), "Blocked::CODES");
    let redirect = MixpanelError::Redirect {
        endpoint: "x",
        status: 301,
        location: String::new(),
    };
    let decode = MixpanelError::Decode {
        endpoint: "x",
        status: 200,
        detail: String::new(),
    };
    let wait = MixpanelError::RetryAfterTooLong {
        endpoint: "x",
        status: 429,
        wait: std::time::Duration::from_secs(600),
        max: std::time::Duration::from_secs(60),
    };
    let mixpanel: BTreeSet<&str> = [
        api(401),
        api(403),
        api(404),
        api(429),
        api(500),
        api(400),
        transport(),
        redirect,
        decode,
        wait,
        MixpanelError::UnknownRegion { domain: "x".into() },
        MixpanelError::Setup("x".into()),
    ]
    .iter()
    .map(MixpanelError::code)
    .collect();
    assert_eq!(
        mixpanel,
        MixpanelError::CODES.into_iter().collect(),
        "MixpanelError::CODES"
    );
    let codes: Vec<String> = catalogue()
        .iter()
        .map(|e| format!("{}  {}", e.code(), e.step))
        .collect();
    insta::assert_snapshot!("error_codes", codes.join("\n"));
}
