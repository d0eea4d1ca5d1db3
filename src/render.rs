//! Reports as people read them: `plan`, `reconcile`/`rotate-now` and
//! `status`. Pure functions of [`Report`]s; nothing here decides anything.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::mixpanel::types::Grants;
use crate::rotation::{DeleteReason, Disposal, MirrorState, MirrorView, Report, RotationPlan, Rule};
use crate::text::{format_duration, relative, rfc3339};

/// The line that ends `plan` output.
pub const PLAN_ONLY: &str = "(plan only: nothing was changed)";

/// `plan` output: what each integration would do (without [`PLAN_ONLY`]).
pub fn plan_text(reports: &[Report]) -> String {
    let mut s = String::new();
    for r in reports {
        s.push_str(&format!("{} (sink `{}`, path `{}`):\n", r.integration, r.sink, r.path));
        for line in plan_lines(r) {
            s.push_str(&format!("  - {line}\n"));
        }
        for m in &r.mirrors {
            s.push_str(&format!("  - {}\n", mirror_line(m)));
        }
        for w in &r.warnings {
            s.push_str(&format!("  ! warning: {w}\n"));
        }
        for e in &r.errors {
            s.push_str(&format!("  ! error: {e}\n"));
        }
    }
    s
}

/// One line per action the plan of `r` would take.
fn plan_lines(r: &Report) -> Vec<String> {
    let (p, now) = (&r.plan, r.at);
    let mut lines: Vec<String> = p
        .delete_now
        .iter()
        .map(|x| format!("delete account {} ({}): {}, {}", x.id, x.username, x.reason, why(x)))
        .collect();
    lines.extend(p.in_use.iter().map(|u| {
        format!(
            "keep account {} ({}): in use but not published here (last_used {}); deleted at {} if unused until then",
            u.id,
            u.username,
            rfc3339(u.last_used),
            rfc3339(u.idle_at)
        )
    }));
    if let Some(rp) = &p.rotate {
        lines.extend(rotation_lines(rp, r.preview.as_deref(), r, now));
    } else if p.blocked.is_none() {
        lines.push(match p.next_rotation() {
            Some(t) => format!("no rotation due; next at {} ({})", rfc3339(t), relative(t, now)),
            None => "no rotation due".into(),
        });
    }
    lines.extend(p.delete_later.iter().map(|x| later_line(x, now)));
    lines
}

fn rotation_lines(
    rp: &RotationPlan,
    desired: Option<&[crate::mixpanel::types::ProjectGrant]>,
    r: &Report,
    now: DateTime<Utc>,
) -> Vec<String> {
    let desired = desired
        .map(|g| Grants(g).to_string())
        .unwrap_or_else(|| "(unknown: see error)".into());
    let mut lines = vec![format!(
        "rotate ({}): create {} with role `{}`, expires {} (ttl {}), projects {desired}; verify it; publish to sink `{}` at `{}`",
        rp.reason,
        rp.username_pattern,
        rp.role,
        rfc3339(crate::clock::after(now, rp.ttl)),
        format_duration(rp.ttl),
        r.sink,
        r.path
    )];
    if rp.revoke_old {
        for x in &rp.revoke {
            lines.push(format!(
                "delete account {} ({}) as soon as the new one is published (--revoke-old)",
                x.id, x.username
            ));
        }
    } else if let Some(old) = &rp.replaces {
        lines.push(format!(
            "keep the old account {} ({}) for `grace` ({}), then delete it",
            old.id,
            old.username,
            format_duration(rp.grace)
        ));
    }
    lines
}

fn later_line(x: &Disposal, now: DateTime<Utc>) -> String {
    let when = match x.due {
        None => "once the policy is fixed (nothing is deleted while blocked)".to_string(),
        Some(due) => format!("at {} ({})", rfc3339(due), relative(due, now)),
    };
    format!(
        "later: delete account {} ({}, {}) {when}: {}",
        x.id,
        x.username,
        x.reason,
        why(x)
    )
}

/// The rule that allows a deletion, and its evidence.
fn why(x: &Disposal) -> String {
    let used = x.last_used.map(rfc3339).unwrap_or_else(|| "never".into());
    match x.rule {
        Rule::Grace => "the predecessor of the published account, after `grace`".into(),
        Rule::NotBefore => "in the payload's `retiring` list, after its `not_before`".into(),
        Rule::Idle => format!("after `grace`, once idle for `delete_when_idle` (last_used {used})"),
        Rule::MaxGrace => format!("`max_grace` after its successor's publish, in use or not (last_used {used})"),
        Rule::NeverUsed => format!(
            "of this lineage but neither published nor vouched for by the sink, and never used after its own verification (last_used {used}), after `orphan_after`"
        ),
        Rule::Unused => format!(
            "of this lineage but neither published nor vouched for by the sink, and unused for `grace` (last_used {used})"
        ),
        Rule::Expired => "expired: it authenticates nobody".into(),
        Rule::RevokeOld => "`--revoke-old`".into(),
        Rule::FailedRotation => "created by a rotation that failed before its publish".into(),
        Rule::Retire => format!("`retire --yes`: the integration is decommissioned (last_used {used})"),
    }
}

/// `retire` output: what it deletes and removes (`done`: what it did).
pub fn retire_text(
    plan: &crate::rotation::retire::RetirePlan,
    done: Option<&crate::rotation::retire::Retired>,
) -> String {
    let verb = |did: bool, planned: &str, past: &str| {
        if done.is_some() && did {
            past.to_string()
        } else {
            planned.to_string()
        }
    };
    let mut s = format!("retire {}:\n", plan.integration);
    for x in &plan.delete {
        let d = &x.disposal;
        let did = done.is_some_and(|x| x.deleted.contains(&d.id));
        let used = d.last_used.map(rfc3339).unwrap_or_else(|| "never".into());
        let _ = writeln!(
            s,
            "  - {} account {} ({}; last used {used}): {}",
            verb(did, "delete", "deleted"),
            d.id,
            d.username,
            x.why
        );
    }
    for k in &plan.kept {
        let _ = writeln!(s, "  - keep account {} ({}): {}", k.id, k.username, k.why);
    }
    for c in &plan.checks {
        let verdict = if c.ok { "ok" } else { "FAILED, nothing will be changed" };
        let _ = writeln!(
            s,
            "  - check sink `{}` path `{}`: {verdict}: {}",
            c.sink, c.path, c.detail
        );
    }
    for p in plan.places.iter().filter(|p| p.present) {
        let did = done.is_some_and(|x| x.removed.iter().any(|r| r.sink == p.sink && r.path == p.path));
        let what = if p.mirror {
            "the mirror's payload"
        } else {
            "the payload"
        };
        let act = match &p.foreign {
            Some(whose) => format!("leave {what} at sink `{}` path `{}`: {whose}", p.sink, p.path),
            None => format!(
                "{} {what} at sink `{}` path `{}`",
                verb(did, "remove", "removed"),
                p.sink,
                p.path
            ),
        };
        let _ = writeln!(s, "  - {act}");
    }
    if plan.delete.is_empty() && !plan.places.iter().any(|p| p.present && p.foreign.is_none()) {
        let _ = writeln!(s, "  (no account and no payload left)");
    }
    retire_outcome(&mut s, &plan.integration, done);
    s
}

/// How `retire` ended, or what `--yes` would do.
fn retire_outcome(s: &mut String, integration: &str, done: Option<&crate::rotation::retire::Retired>) {
    match done {
        None => s.push_str("(nothing was changed: run again with --yes to do it)\n"),
        Some(d) if d.errors.is_empty() => {
            let _ = writeln!(
                s,
                "retired: now remove `{}` from the policy (while it is there, a pass would bootstrap it again)",
                integration
            );
        }
        Some(d) => {
            for e in &d.errors {
                let _ = writeln!(s, "  error: {e}");
            }
            s.push_str("not finished: fix the cause and run `retire --yes` again\n");
        }
    }
}

/// `reconcile` / `rotate-now` output: what was done.
pub(crate) fn outcome_text(reports: &[Report]) -> String {
    let mut s = String::new();
    for r in reports {
        match &r.rotated {
            Some(rot) => s.push_str(&format!(
                "{}: rotated ({}): now account {} ({}), expires {}, projects {}\n",
                r.integration,
                rot.reason,
                rot.service_account_id,
                rot.username,
                rot.expires.map(rfc3339).unwrap_or_else(|| "never".into()),
                Grants(&rot.projects)
            )),
            None if r.failed() => s.push_str(&format!("{}: FAILED\n", r.integration)),
            None => s.push_str(&format!("{}: up to date\n", r.integration)),
        }
        for d in &r.deleted {
            s.push_str(&format!("  deleted account {} ({}): {}\n", d.id, d.username, d.reason));
        }
        for m in r.mirrors.iter().filter(|m| m.state != MirrorState::InSync) {
            s.push_str(&format!("  {}\n", mirror_line(m)));
        }
        for w in &r.warnings {
            s.push_str(&format!("  warning: {w}\n"));
        }
        for e in &r.errors {
            s.push_str(&format!("  error: {e}\n"));
        }
    }
    s
}

/// One mirror and where it stands.
fn mirror_line(m: &MirrorView) -> String {
    let holds = m
        .rotation_id
        .as_deref()
        .map(|id| format!(", holds rotation {id}"))
        .unwrap_or_default();
    format!("mirror `{}` path `{}`: {}{holds}", m.sink, m.path, m.state.as_str())
}

const STATUS_HEADER: [&str; 9] = [
    "INTEGRATION",
    "SINK",
    "ACCOUNT",
    "EXPIRES",
    "NEXT ROTATION",
    "RETIRING",
    "ORPHANS",
    "MIRRORS",
    "STATE",
];

/// `status` output: one row per integration.
pub fn status_table(reports: &[Report]) -> String {
    let rows: Vec<[String; 9]> = reports.iter().map(status_row).collect();
    let mut widths = STATUS_HEADER.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i.saturating_add(1) == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut s = line(STATUS_HEADER.to_vec());
    for row in &rows {
        s.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    for r in reports {
        for m in r.mirrors.iter().filter(|m| !m.state.up_to_date()) {
            s.push_str(&format!("{}: {}\n", r.integration, mirror_line(m)));
        }
        for w in &r.warnings {
            s.push_str(&format!("{}: warning: {w}\n", r.integration));
        }
    }
    s
}

/// `-` without mirrors, else how many hold the primary's payload.
fn mirrors_cell(mirrors: &[MirrorView]) -> String {
    if mirrors.is_empty() {
        return "-".into();
    }
    let good = mirrors.iter().filter(|m| m.state.up_to_date()).count();
    format!("{good}/{} in sync", mirrors.len())
}

fn status_row(r: &Report) -> [String; 9] {
    let (p, now) = (&r.plan, r.at);
    let when = |t: DateTime<Utc>| format!("{} ({})", t.format("%Y-%m-%d %H:%M"), relative(t, now));
    let account = r
        .current
        .as_ref()
        .map(|c| {
            let note = match c.exists {
                Some(true) => "",
                Some(false) => " (gone)",
                None => " (unchecked)",
            };
            format!("{}{note}", c.service_account_id)
        })
        .unwrap_or_else(|| "-".into());
    let expires = r.current.as_ref().and_then(|c| c.expires).map(when);
    let next = match (&p.rotate, p.next_rotation()) {
        (Some(_), _) => "now".to_string(),
        (None, Some(t)) => when(t),
        (None, None) => "-".into(),
    };
    let state = match (r.errors.first(), &p.rotate) {
        (Some(e), _) => format!("error: {}", e.message()),
        (None, Some(rp)) => format!("due: {}", rp.reason),
        (None, None) if !r.warnings.is_empty() => format!("ok, {} warning(s) below", r.warnings.len()),
        (None, None) => "ok".into(),
    };
    [
        r.integration.clone(),
        r.sink.clone(),
        account,
        expires.unwrap_or_else(|| "-".into()),
        next,
        p.pending(DeleteReason::Retiring).to_string(),
        p.pending(DeleteReason::Orphan).to_string(),
        mirrors_cell(&r.mirrors),
        state,
    ]
}

/// The `-o json` document of `plan`, `status`, `rotate-now` and `reconcile`
/// (`docs/output.schema.json`, version 1): per integration its state, the
/// published account, when it next acts, the actions planned or performed
/// (accounts by id; a planned create by its username pattern), warnings and
/// errors. Never a secret.
pub(crate) fn json_document(command: &str, reports: &[Report], at: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "command": command,
        "at": rfc3339(at),
        "ok": !reports.iter().any(Report::failed),
        "integrations": reports.iter().map(integration_json).collect::<Vec<_>>(),
    })
}

fn integration_json(r: &Report) -> serde_json::Value {
    let next_action = r.plan.next_action().map(|at| {
        let what = if r.plan.next_rotation() == Some(at) {
            "rotate"
        } else {
            "delete"
        };
        serde_json::json!({ "at": rfc3339(at), "what": what })
    });
    serde_json::json!({
        "name": r.integration,
        "self": r.integration == crate::policy::SELF_NAME,
        "sink": r.sink,
        "path": r.path,
        "state": r.state(),
        "current": r.current.as_ref().map(|c| serde_json::json!({
            "service_account_id": c.service_account_id,
            "username": c.username,
            "expires": c.expires.map(rfc3339),
            "rotated_at": rfc3339(c.rotated_at),
            "rotation_id": c.rotation_id,
            "exists": c.exists,
        })),
        "next_rotation": r.next_rotation().map(rfc3339),
        "next_action": next_action,
        "actions": actions_json(r),
        "mirrors": r.mirrors.iter().map(|m| serde_json::json!({
            "sink": m.sink, "path": m.path, "state": m.state, "rotation_id": m.rotation_id,
        })).collect::<Vec<_>>(),
        "warnings": r.warnings,
        "errors": r.errors.iter().map(|e| serde_json::json!({
            "code": e.code().to_string(), "step": e.step.to_string(), "message": e.to_string(),
        })).collect::<Vec<_>>(),
    })
}

/// Planned (`done: false`) and performed (`done: true`) creates and deletes,
/// each account once (a deletion done, or due now, is not listed again as
/// a later one).
fn actions_json(r: &Report) -> Vec<serde_json::Value> {
    let delete = |d: &Disposal, done: bool, at: Option<DateTime<Utc>>| {
        serde_json::json!({
            "kind": "delete", "done": done, "account_id": d.id, "username": d.username,
            "username_pattern": null, "reason": d.reason.as_str(), "at": at.map(rfc3339),
        })
    };
    let mut out = vec![];
    let mut deletes: Vec<(&Disposal, bool, Option<DateTime<Utc>>)> = vec![];
    match (&r.rotated, &r.plan.rotate) {
        (Some(rot), _) => out.push(serde_json::json!({
            "kind": "create", "done": true, "account_id": rot.service_account_id, "username": rot.username,
            "username_pattern": null, "reason": rot.reason.to_string(), "at": rfc3339(rot.rotated_at),
        })),
        (None, Some(rp)) if !r.failed() => {
            out.push(serde_json::json!({
                "kind": "create", "done": false, "account_id": null, "username": null,
                "username_pattern": rp.username_pattern, "reason": rp.reason.to_string(), "at": rfc3339(r.at),
            }));
            deletes.extend(rp.revoke.iter().map(|d| (d, false, Some(r.at))));
        }
        _ => {}
    }
    deletes.extend(r.deleted.iter().map(|d| (d, true, Some(r.at))));
    deletes.extend(r.plan.delete_now.iter().map(|d| (d, false, Some(r.at))));
    deletes.extend(r.plan.delete_later.iter().map(|d| (d, false, d.due)));
    // Done first, then due now, then later: the first mention of an account wins.
    deletes.sort_by_key(|(_, done, _)| !*done);
    let mut seen: Vec<u64> = vec![];
    for (d, done, at) in deletes {
        if !seen.contains(&d.id) {
            seen.push(d.id);
            out.push(delete(d, done, at));
        }
    }
    out
}
