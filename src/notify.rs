//! systemd's notification protocol, without libsystemd: datagrams such as
//! `READY=1` to the socket in `$NOTIFY_SOCKET` (a path, or `@name` for an
//! abstract socket). The environment is read once, at the edge
//! ([`Notifier::from_env`]); a [`Notifier`] without a socket does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go, and how often the watchdog wants to hear from us.
#[derive(Debug, Clone, Default)]
pub(crate) struct Notifier {
    socket: Option<String>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`.
    pub(crate) fn from_env() -> Self {
        Self {
            socket: std::env::var_os("NOTIFY_SOCKET").map(|s| s.to_string_lossy().into_owned()),
            watchdog: watchdog_from_env(),
        }
    }

    /// Half of `$WATCHDOG_USEC`, when the watchdog is on for this process.
    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (e.g. `"READY=1\nSTATUS=..."`) to the service manager.
    pub(crate) fn notify(&self, state: &str) {
        let Some(target) = &self.socket else { return };
        let result = UnixDatagram::unbound().and_then(|sock| {
            // Never block the caller: a service manager that does not drain its
            // socket must not stall the rotator (a full queue drops the message).
            sock.set_nonblocking(true)?;
            if let Some(name) = target.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt as _;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sock.send_to_addr(state.as_bytes(), &addr)
            } else {
                sock.send_to(state.as_bytes(), target)
            }
        });
        match result {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tracing::debug!(socket = %target, "The service manager's socket is full; notification dropped.");
            }
            Err(e) => tracing::warn!(socket = %target, error = %e, "Cannot notify the service manager."),
        }
    }
}

fn watchdog_from_env() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// A `STATUS=` line: one line, no control characters.
pub(crate) fn status_line(s: &str) -> String {
    let clean: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    format!("STATUS={clean}")
}
