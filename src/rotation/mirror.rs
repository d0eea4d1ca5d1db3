//! Mirrors: copies of an integration's credential beside its consumers (a
//! pod's `emptyDir`, a local file), written from the primary. A mirror is
//! never read to decide anything (the primary, shared by every instance, is
//! the one source of truth): it is only compared with the primary's payload
//! and rewritten, atomically, whenever it differs. A failing mirror is an
//! error of the pass, never a reason to touch an account or the primary.

use serde::Serialize;

use super::context::Context;
use super::echo::reported;
use super::error::{Cause, Consequence, Step, StepError};
use crate::audit::{Action, AuditEvent, Outcome};
use crate::policy::{Integration, MirrorConfig};
use crate::sink::{Payload, SinkError, SinkErrorKind};

/// Where a mirror stands after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MirrorState {
    /// It holds exactly the primary's payload.
    InSync,
    /// It was brought up to date in this pass.
    Updated,
    /// It holds nothing (a dry run: the next pass writes it).
    Missing,
    /// It holds another rotation, or something that is not a payload (a dry
    /// run: the next pass rewrites it).
    Stale,
    /// The primary holds nothing this integration may copy (nothing
    /// published yet, or a payload that is not this integration's): the
    /// mirror is left as it is.
    NothingToCopy,
    /// It could not be read or written (the report's errors say why).
    Failed,
}

impl MirrorState {
    /// The state as `status` prints it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MirrorState::InSync => "in sync",
            MirrorState::Updated => "updated",
            MirrorState::Missing => "missing (written at the next pass)",
            MirrorState::Stale => "stale (rewritten at the next pass)",
            MirrorState::NothingToCopy => "left as it is (the primary holds nothing to copy)",
            MirrorState::Failed => "failed",
        }
    }

    /// Whether the mirror holds the primary's payload after the pass.
    pub fn up_to_date(self) -> bool {
        matches!(self, MirrorState::InSync | MirrorState::Updated)
    }
}

/// One mirror of an integration, as a report shows it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MirrorView {
    /// The mirror's sink, by name.
    pub(crate) sink: String,
    pub(crate) path: String,
    /// Whether it holds the primary's payload.
    pub state: MirrorState,
    /// The rotation the mirror holds, when it holds one.
    pub rotation_id: Option<String>,
}

impl MirrorView {
    /// A mirror that could not be read or written.
    fn failed(m: &MirrorConfig) -> Self {
        Self {
            sink: m.sink.clone(),
            path: m.path.clone(),
            state: MirrorState::Failed,
            rotation_id: None,
        }
    }
}

/// What bringing an integration's mirrors up to date came to.
#[derive(Debug, Clone, Default)]
pub struct MirrorSync {
    pub(crate) integration: String,
    /// Each mirror, as found or written.
    pub views: Vec<MirrorView>,
    /// The mirrors that failed.
    pub errors: Vec<StepError>,
}

/// What a mirror holds, as far as syncing cares.
enum Held {
    Nothing,
    /// Something that is not a payload.
    Garbage,
    Payload(Box<Payload>),
}

impl Held {
    fn rotation_id(&self) -> Option<String> {
        match self {
            Held::Payload(p) => Some(p.rotation_id.clone()),
            Held::Nothing | Held::Garbage => None,
        }
    }

    /// Another integration's or organization's payload: never written
    /// over (the mirror and that one's place are the same: an alias the
    /// load-time check could not see, a symlink made later, a second policy).
    fn foreign(&self, i: &Integration, organization_id: u64) -> Option<SinkError> {
        let Held::Payload(p) = self else { return None };
        (!p.is_of(&i.name, organization_id)).then(|| {
            SinkError::invalid(format!(
                "it holds the payload of integration `{}` in organization {}, not `{}`'s: this mirror and that credential's place are one; give the mirror a path of its own. It is left as it is",
                p.integration, p.organization_id, i.name
            ))
        })
    }

    /// Byte for byte the primary's payload (any edited field, the secret
    /// included, makes it stale).
    fn same_as(&self, primary: &Payload) -> bool {
        let Held::Payload(p) = self else { return false };
        match (p.to_json(), primary.to_json()) {
            (Ok(a), Ok(b)) => *a == *b,
            _ => false,
        }
    }
}

/// The payload mirrors may copy from what the primary holds: this
/// integration's, of this organization (anything else is refused by the
/// pass, which reports it).
pub(crate) fn copyable<'a>(i: &Integration, organization_id: u64, primary: Option<&'a Payload>) -> Option<&'a Payload> {
    primary.filter(|p| p.is_of(&i.name, organization_id))
}

/// The mirrors of `i` when its primary could not be read: each left as it is.
pub(super) fn unread(i: &Integration, e: StepError) -> MirrorSync {
    reported!(error, integration = %i.name, "{e}");
    MirrorSync {
        integration: i.name.clone(),
        views: i.mirrors.iter().map(MirrorView::failed).collect(),
        errors: vec![e],
    }
}

/// Brings every mirror of `i` up to date with `primary` (with `write` off,
/// only says where each stands).
pub(super) async fn sync(ctx: &Context, i: &Integration, primary: Option<&Payload>, write: bool) -> MirrorSync {
    let mut out = MirrorSync {
        integration: i.name.clone(),
        ..MirrorSync::default()
    };
    for m in &i.mirrors {
        match sync_one(ctx, i, m, primary, write).await {
            Ok(v) => out.views.push(v),
            Err(e) => {
                reported!(error, integration = %i.name, mirror_sink = %m.sink, mirror_path = %m.path, "{e}");
                out.views.push(MirrorView::failed(m));
                out.errors.push(e);
            }
        }
    }
    out
}

async fn sync_one(
    ctx: &Context,
    i: &Integration,
    m: &MirrorConfig,
    primary: Option<&Payload>,
    write: bool,
) -> Result<MirrorView, StepError> {
    let sink = ctx.sinks.get(&m.sink);
    let fail = |source: SinkError| {
        let sink = sink.map_or_else(|| format!("sink `{}`", m.sink), |s| s.describe());
        StepError::new(
            &i.name,
            Step::Mirror,
            Cause::Sink {
                sink: format!("mirror: {sink}"),
                path: m.path.clone(),
                source,
            },
        )
        .then(Consequence::MirrorLeft)
    };
    // Policy validation guarantees every mirror's sink exists.
    let sink = sink.ok_or_else(|| fail(SinkError::invalid("no such sink is defined")))?;
    let held = match sink.read_current(&m.path).await {
        Ok(Some((p, _))) => Held::Payload(Box::new(p)),
        Ok(None) => Held::Nothing,
        Err(e) if e.kind == SinkErrorKind::Corrupt => Held::Garbage,
        Err(e) => return Err(fail(e)),
    };
    let view = |state, rotation_id| MirrorView {
        sink: m.sink.clone(),
        path: m.path.clone(),
        state,
        rotation_id,
    };
    if let Some(e) = held.foreign(i, ctx.scope.organization_id) {
        return Err(fail(e));
    }
    let Some(primary) = copyable(i, ctx.scope.organization_id, primary) else {
        return Ok(view(MirrorState::NothingToCopy, held.rotation_id()));
    };
    if held.same_as(primary) {
        return Ok(view(MirrorState::InSync, held.rotation_id()));
    }
    if !write {
        let state = match held {
            Held::Nothing => MirrorState::Missing,
            Held::Garbage | Held::Payload(_) => MirrorState::Stale,
        };
        return Ok(view(state, held.rotation_id()));
    }
    sink.overwrite(&m.path, primary).await.map_err(fail)?;
    written(ctx, i, m, primary);
    Ok(view(MirrorState::Updated, Some(primary.rotation_id.clone())))
}

/// Logs and audits a mirror write.
fn written(ctx: &Context, i: &Integration, m: &MirrorConfig, primary: &Payload) {
    tracing::info!(
        integration = %i.name,
        rotation_id = %primary.rotation_id,
        mirror_sink = %m.sink,
        mirror_path = %m.path,
        "Mirror brought up to date from the primary."
    );
    ctx.audit(AuditEvent {
        rotation_id: Some(&primary.rotation_id),
        account_id: Some(primary.service_account_id),
        username: Some(&primary.username),
        detail: Some(format!("mirror: sink `{}` path `{}`", m.sink, m.path)),
        ..ctx.audit_event(&i.name, Action::Mirror, Outcome::Published)
    });
}
