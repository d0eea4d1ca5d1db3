//! Deleting one account: the published credential is refused here too (the
//! last line of defence behind [`super::decide`]), and every call is audited.

use super::context::Context;
use super::decide::Disposal;
use super::error::{Cause, Step, StepError};
use crate::audit::{Action, AuditEvent, Outcome};
use crate::policy::Integration;

impl Context {
    /// Deletes the account of `d`, refusing `protected` (the published one).
    pub(crate) async fn delete(
        &self,
        i: &Integration,
        d: &Disposal,
        protected: Option<u64>,
        rotation_id: Option<&str>,
    ) -> Result<(), StepError> {
        // Never the published account, nor the one this process acts as.
        let in_use = self.client.username();
        let acting_as = d.username == *in_use || crate::mixpanel::types::strip_mixpanel_suffix(&d.username) == &*in_use;
        if Some(d.id) == protected || acting_as {
            return Err(StepError::new(&i.name, Step::Delete, Cause::Protected { id: d.id }));
        }
        let event = |outcome| AuditEvent {
            rotation_id,
            account_id: Some(d.id),
            username: Some(&d.username),
            reason: Some(d.reason.to_string()),
            ..self.audit_event(&i.name, Action::Delete, outcome)
        };
        crate::failpoint::point("before_delete", &i.name).await;
        self.audit(event(Outcome::Started));
        let deleted = self.client.delete_account(d.id).await;
        crate::failpoint::point("after_delete", &i.name).await;
        match deleted {
            Ok(existed) => {
                self.audit(event(if existed {
                    Outcome::Deleted
                } else {
                    Outcome::AlreadyGone
                }));
                Ok(())
            }
            Err(e) => {
                self.audit(AuditEvent {
                    detail: Some(e.to_string()),
                    ..event(Outcome::Failed)
                });
                let cause = Cause::Delete {
                    id: d.id,
                    username: d.username.clone(),
                    reason: d.reason,
                    source: e,
                };
                Err(StepError::new(&i.name, Step::Delete, cause))
            }
        }
    }
}
