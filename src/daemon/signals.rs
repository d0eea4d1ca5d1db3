//! Signals, mapped to what the daemon understands: SIGTERM and SIGINT cancel
//! its shutdown token, SIGHUP asks for a policy reload. Nothing else here.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::{Control, Handle, TaskGuard};

/// Installs the handlers and returns the daemon's [`Control`]; the handlers
/// stop with the returned guard.
pub(crate) fn install() -> std::io::Result<(Control, TaskGuard)> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (control, Handle { shutdown, reload }) = Control::new();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = term.recv() => shutdown.cancel(),
                Some(()) = int.recv() => shutdown.cancel(),
                Some(()) = hup.recv() => request_reload(&reload),
                else => break,
            }
        }
    });
    Ok((control, TaskGuard(task)))
}

fn request_reload(reload: &mpsc::Sender<()>) {
    // A reload already queued covers this one.
    let _ = reload.try_send(());
}
