//! The `file` sink: one JSON payload per integration at `{dir}/{path}`.
//!
//! The file is created with mode 0600 from the start (never world-readable,
//! not even briefly), written to a temporary name in the same directory,
//! fsynced and renamed over the old one. Writers serialise on an `flock` of a
//! sibling lock file; the compare-and-swap compares the stored payload's
//! `rotation_id` under that lock.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::Rng as _;
use serde::Deserialize;

use super::contract::{Backend, Payload, Sink, SinkError, Version};
use crate::values::{Invalid, KeyError};

/// `[sinks.NAME] type = "file"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Directory holding one file per integration (created 0700 if missing).
    pub dir: PathBuf,
    /// Permissions of the credential files, as an octal string: `"0600"`
    /// (default) or `"0640"` to let the directory's group (the consumers)
    /// read them. Never readable by others.
    #[serde(default)]
    pub(crate) mode: Option<String>,
}

impl Backend for FileSinkConfig {
    fn check(&self) -> Result<(), KeyError> {
        if !self.dir.is_absolute() {
            return Err(KeyError::new(
                "dir",
                format!("is `{}`: use an absolute path", self.dir.display()),
            ));
        }
        self.file_mode().map(|_| ()).map_err(|m| KeyError::new("mode", m))
    }

    fn check_path(&self, path: &str) -> Result<(), Invalid> {
        check_path(path)
    }

    fn location(&self, path: &str) -> String {
        format!("file {}", super::place::file(&self.dir, path).display())
    }

    fn build(&self, name: &str) -> Result<Arc<dyn Sink>, SinkError> {
        Ok(Arc::new(FileSink::new(name, self.clone())))
    }

    /// Not on a memory file system (tmpfs, ramfs: `/run`, `/tmp` on many
    /// hosts), judged at the directory or, before it exists, its nearest
    /// existing parent.
    fn durable(&self) -> Result<(), Invalid> {
        const TMPFS: i64 = 0x0102_1994;
        const RAMFS: i64 = 0x8584_58f6;
        let Some(dir) = self.dir.ancestors().find(|d| d.exists()) else {
            return Ok(());
        };
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
            return Ok(());
        };
        // SAFETY: `c` is a NUL-terminated path and `fs` a zeroed statfs that
        // the call fills in; nothing else is touched.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 {
            return Ok(());
        }
        #[allow(clippy::unnecessary_cast, reason = "f_type's width differs between targets")]
        let kind = fs.f_type as i64;
        if kind == TMPFS || kind == RAMFS {
            return Err(Invalid(format!(
                "{} is on a memory file system (tmpfs): its files are lost at reboot",
                dir.display()
            )));
        }
        Ok(())
    }
}

impl FileSinkConfig {
    /// The credential files' mode (default 0600).
    pub(crate) fn file_mode(&self) -> Result<u32, Invalid> {
        let Some(m) = &self.mode else { return Ok(0o600) };
        let bits = u32::from_str_radix(m.trim_start_matches("0o"), 8)
            .map_err(|_| Invalid(format!("is `{m}`: write an octal mode such as \"0600\" or \"0640\"")))?;
        if bits & 0o007 != 0 || bits & 0o400 == 0 || bits & 0o111 != 0 || bits > 0o777 {
            return Err(Invalid(format!(
                "is `{m}`: credential files must be readable by their owner, never by others, and not executable (\"0600\" or \"0640\")"
            )));
        }
        Ok(bits)
    }
}

/// Checks an integration's `path` for a file sink: a relative file name
/// inside `dir`.
fn check_path(path: &str) -> Result<(), Invalid> {
    let p = Path::new(path);
    if path.chars().any(char::is_control) {
        return Err(Invalid(
            "contains a control character (a NUL, a newline, ...): use a plain file name".into(),
        ));
    }
    let ok = !path.is_empty()
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && !path.ends_with(".lock")
        && !path.ends_with('/');
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!(
            "is `{path}`: use a relative file name inside the sink's `dir` (no `..`, no leading `/`, not ending in `.lock`)"
        )))
    }
}

/// A file sink.
#[derive(Debug)]
pub(crate) struct FileSink {
    name: String,
    config: FileSinkConfig,
    /// The temporary files a dead writer left in each directory, listed
    /// once per directory and process (not once per read or write: that is
    /// quadratic in the number of integrations), and taken off as they are
    /// removed.
    leftovers: Arc<Mutex<HashMap<PathBuf, Vec<String>>>>,
    /// Reads waiting for the blocking reader (see `read_current`).
    reads: Arc<Mutex<ReadQueue>>,
    /// Paths whose last read found a mode other than `mode`, with that mode
    /// (so a pass learns of it without another system call per file).
    drift: Arc<Mutex<HashMap<String, u32>>>,
}

/// A read's answer, sent back from the blocking reader.
type ReadAnswer = Result<Option<(Payload, Version)>, SinkError>;

/// Reads asked for while the blocking reader works: it takes them all at
/// each turn. A pass over 10,000 integrations makes a handful of blocking
/// tasks instead of 10,000 (each a hand-off between threads: 17,700 futex
/// calls and 0.2 s of CPU, measured).
#[derive(Debug, Default)]
struct ReadQueue {
    waiting: Vec<(String, tokio::sync::oneshot::Sender<ReadAnswer>)>,
    /// Whether a blocking reader is running (it empties `waiting` before it stops).
    running: bool,
}

/// Ends the blocking reader's turn in every case, a panic included: the
/// queue is marked idle and the reads still waiting are answered with an
/// error by dropping their senders, so no caller waits forever.
struct ReaderDone(Arc<Mutex<ReadQueue>>);

impl Drop for ReaderDone {
    fn drop(&mut self) {
        let mut q = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        q.running = false;
        q.waiting.clear();
    }
}

impl FileSink {
    /// A file sink called `name`.
    pub(crate) fn new(name: &str, config: FileSinkConfig) -> Self {
        Self {
            name: name.into(),
            config,
            leftovers: Arc::default(),
            reads: Arc::default(),
            drift: Arc::default(),
        }
    }

    /// Another handle on the same sink (for a blocking task).
    fn handle(&self) -> Self {
        Self {
            name: self.name.clone(),
            config: self.config.clone(),
            leftovers: self.leftovers.clone(),
            reads: self.reads.clone(),
            drift: self.drift.clone(),
        }
    }

    /// The blocking reader: answers every waiting read, then the ones that
    /// arrived meanwhile, until none is left. `_done` ends its turn however
    /// it ends (it is made before the task is spawned, so a task that never
    /// runs, at shutdown, still releases the waiters).
    fn read_waiting(&self, _done: ReaderDone) {
        loop {
            let batch = {
                let mut q = self.reads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if q.waiting.is_empty() {
                    q.running = false;
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            for (path, answer) in batch {
                // The caller may have gone (its pass was cancelled): nothing to do.
                let _ = answer.send(self.read_blocking(&path));
            }
        }
    }

    fn target(&self, path: &str) -> Result<PathBuf, SinkError> {
        check_path(path).map_err(|m| SinkError::invalid(format!("path {m}")))?;
        // The directories of `path` below `dir` are never links either (a
        // link there would take the write out of `dir`); `dir` itself may be
        // one (`/var/run` is). A file name alone costs nothing here.
        let mut at = self.config.dir.clone();
        let mut parts = path.split('/').filter(|p| !p.is_empty() && *p != ".").peekable();
        while let Some(part) = parts.next() {
            at.push(part);
            if parts.peek().is_some() {
                refuse_symlink(&at)?;
            }
        }
        Ok(self.config.dir.join(path))
    }

    /// Creates the target's directory if missing (0700, or 0750 when
    /// `mode` lets the group read: the group must reach the file); returns it.
    fn ensure_dir(&self, target: &Path) -> Result<PathBuf, SinkError> {
        let dir = target.parent().unwrap_or(&self.config.dir).to_path_buf();
        let group = self.config.file_mode().unwrap_or(0o600) & 0o040 != 0;
        let mode = if group { 0o750 } else { 0o700 };
        let existed = fs::symlink_metadata(&dir).is_ok();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&dir)
            .map_err(|e| self.io("create directory", &dir, e))?;
        if !existed {
            // The process's umask (systemd's `UMask=0077`, say) would
            // narrow it: the group must reach the file all the same.
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                .map_err(|e| self.io("set the mode of", &dir, e))?;
        }
        Ok(dir)
    }

    fn io(&self, what: &str, p: &Path, e: std::io::Error) -> SinkError {
        let detail = format!("cannot {what} {}: {e}", p.display());
        match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => SinkError::denied(detail),
            std::io::ErrorKind::NotFound => SinkError::not_found(detail),
            _ => SinkError::unavailable(detail),
        }
    }
}

/// The failpoints of one kind of write (tests crash the process there).
#[derive(Debug, Clone, Copy)]
struct Points {
    /// The temporary file is written and synced, not yet renamed.
    before_rename: &'static str,
    /// Renamed into place.
    after_rename: &'static str,
}

impl Points {
    const PUBLISH: Self = Self {
        before_rename: "publish_before_cas",
        after_rename: "publish_after_cas",
    };
    const MIRROR: Self = Self {
        before_rename: "mirror_before_rename",
        after_rename: "mirror_after_rename",
    };
}

/// As root, a file written into a directory someone else owns is given to
/// the directory's owner and group: root running `rotate-now` into a
/// service's directory (sudo on the day of a leak) leaves the files the
/// service's, readable by it and its consumers as before, not root's. Any
/// other writer keeps its own (with a setgid directory, the directory's
/// group). Best effort: where root cannot (a user namespace that does not
/// map the owner), the file stays root's, as it would have, and that is
/// logged.
fn give_to_dir(file: &File, path: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    // One fstat for every writer; the directory is looked at only by root.
    let Ok(mine) = file.metadata() else { return };
    if mine.uid() != 0 {
        return;
    }
    let Some(Ok(dir)) = path.parent().map(fs::metadata) else {
        return;
    };
    if (dir.uid(), dir.gid()) == (mine.uid(), mine.gid()) {
        return;
    }
    if let Err(e) = std::os::unix::fs::fchown(file, Some(dir.uid()), Some(dir.gid())) {
        tracing::warn!(
            path = %path.display(),
            uid = dir.uid(),
            gid = dir.gid(),
            error = %e,
            "Running as root, could not give the file to its directory's owner and group; it stays root's, which the directory's owner may not be able to read."
        );
    }
}

fn lock_path(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// The credential file is never a symbolic link: the sink writes a regular
/// file in its `dir` (renaming over a link would silently replace it).
fn refuse_symlink(target: &Path) -> Result<(), SinkError> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => Err(symlink_error(target)),
        _ => Ok(()),
    }
}

fn symlink_error(target: &Path) -> SinkError {
    SinkError::invalid(format!(
        "{} is a symbolic link: the file sink reads and writes a regular file in its `dir`; point `dir` at the real directory instead",
        target.display()
    ))
}

/// The stored payload's bytes (at most 4 MiB) and its permission bits, or
/// `None` when there is none: one `open` (never through a symbolic link,
/// never blocking on a FIFO) and one `fstat`, as a read runs once per
/// integration per pass.
fn read_stored(target: &Path) -> Result<Option<Stored>, ReadFailure> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(target)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(ReadFailure::Symlink),
        Err(e) => return Err(ReadFailure::Io(e)),
    };
    let meta = file.metadata().map_err(ReadFailure::Io)?;
    let buf = crate::bounded::read_open(file, &meta, crate::bounded::DOCUMENT_MAX, true).map_err(|e| match e {
        crate::bounded::ReadError::Io(e) => ReadFailure::Io(e),
        other => ReadFailure::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string())),
    })?;
    Ok(Some((buf, meta.permissions().mode() & 0o777)))
}

/// A stored payload's bytes (wiped on drop) and permission bits.
type Stored = (zeroize::Zeroizing<Vec<u8>>, u32);

/// Why a stored payload could not be read.
enum ReadFailure {
    Symlink,
    Io(std::io::Error),
}

/// The stored payload's bytes (at most 4 MiB, a regular file), or `None` when there is none.
fn read_payload(target: &Path) -> std::io::Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
    use crate::bounded::{DOCUMENT_MAX, ReadError, read_file};
    match read_file(target, DOCUMENT_MAX, true) {
        Ok(b) => Ok(Some(b)),
        Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(ReadError::Io(e)) => Err(e),
        Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
    }
}

impl FileSink {
    fn read_blocking(&self, path: &str) -> Result<Option<(Payload, Version)>, SinkError> {
        let target = self.target(path)?;
        self.clean_if_idle(&target);
        let (bytes, mode) = match read_stored(&target) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(None),
            Err(ReadFailure::Symlink) => return Err(symlink_error(&target)),
            Err(ReadFailure::Io(e)) => return Err(self.io("read", &target, e)),
        };
        let wanted = self.config.file_mode().unwrap_or(0o600);
        {
            let mut drift = self.drift.lock().unwrap_or_else(|e| e.into_inner());
            if mode == wanted {
                drift.remove(path);
            } else {
                drift.insert(path.to_string(), mode);
            }
        }
        let payload = Payload::from_json(&bytes).map_err(|e| e.context(target.display()))?;
        let version = Version(payload.rotation_id.clone());
        Ok(Some((payload, version)))
    }

    fn publish_blocking(
        &self,
        path: &str,
        payload: &Payload,
        expected: Option<&Version>,
    ) -> Result<Version, SinkError> {
        let target = self.target(path)?;
        let dir = self.ensure_dir(&target)?;
        let lock = self.lock(&target)?;
        refuse_symlink(&target)?;
        self.clean_stale_temps(&dir, &target);
        // Compare under the lock.
        let found = match read_payload(&target).map_err(|e| self.io("read", &target, e))? {
            None => None,
            Some(bytes) => Some(
                Payload::from_json(&bytes)
                    .map_err(|e| e.context(target.display()))?
                    .rotation_id,
            ),
        };
        if found.as_deref() != expected.map(|v| v.0.as_str()) {
            return Err(SinkError::conflict(format!(
                "{} holds rotation {}, expected {}",
                target.display(),
                found.as_deref().unwrap_or("(none)"),
                expected.map(|v| v.0.as_str()).unwrap_or("(none)")
            )));
        }
        self.write_atomically(&dir, &target, payload, Points::PUBLISH)?;
        drop(lock); // releases the flock
        Ok(Version(payload.rotation_id.clone()))
    }

    /// Writes `payload` whatever the file holds (a mirror), under the lock.
    fn overwrite_blocking(&self, path: &str, payload: &Payload) -> Result<Version, SinkError> {
        let target = self.target(path)?;
        let dir = self.ensure_dir(&target)?;
        let lock = self.lock(&target)?;
        refuse_symlink(&target)?;
        self.clean_stale_temps(&dir, &target);
        self.write_atomically(&dir, &target, payload, Points::MIRROR)?;
        drop(lock);
        Ok(Version(payload.rotation_id.clone()))
    }

    /// Removes the payload at `path` and its lock file, under the lock.
    fn remove_blocking(&self, path: &str) -> Result<bool, SinkError> {
        let target = self.target(path)?;
        if !target.parent().is_some_and(Path::exists) {
            return Ok(false);
        }
        let lock = self.lock(&target)?;
        refuse_symlink(&target)?;
        let removed = match fs::remove_file(&target) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(self.io("remove", &target, e)),
        };
        let _ = fs::remove_file(lock_path(&target));
        drop(lock);
        Ok(removed)
    }

    /// Creates and removes a temporary file in `dir`.
    fn probe(&self, dir: &Path) -> Result<(), SinkError> {
        let probe = dir.join(format!(".health.{:08x}.tmp", rand::rng().random::<u32>()));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&probe)
            .map_err(|e| self.io("write in", dir, e))?;
        let _ = fs::remove_file(&probe);
        Ok(())
    }

    /// Before a rotation: the directory made if missing, and a file
    /// written and removed there, so that an unwritable sink costs no
    /// account.
    fn writable_blocking(&self, path: &str) -> Result<(), SinkError> {
        let target = self.target(path)?;
        let dir = self.ensure_dir(&target)?;
        self.probe(&dir)
    }

    /// Sets the credential file's permissions to `mode` (never through a link).
    fn set_mode(&self, path: &str, mode: u32) -> Result<(), SinkError> {
        let target = self.target(path)?;
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&target)
            .map_err(|e| self.io("open", &target, e))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| self.io("set the mode of", &target, e))
    }

    /// Takes the writers' lock of `target`: `{target}.lock`, never through a
    /// symbolic link (which could make the rotator create a file elsewhere).
    fn lock(&self, target: &Path) -> Result<File, SinkError> {
        let lock_file = lock_path(target);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_file)
            .map_err(|e| self.io("open lock file", &lock_file, e))?;
        self.wait_for(&lock, &lock_file)?;
        // Root's lock file would shut the directory's owner out of its next
        // publish: it is the owner's.
        give_to_dir(&lock, &lock_file);
        Ok(lock)
    }

    /// Takes the `flock` of `lock`, waiting at most [`LOCK_WAIT`]: a lock
    /// another process holds for longer (anyone who can write the
    /// directory can take it) fails the write instead of hanging the pass.
    fn wait_for(&self, lock: &File, lock_file: &Path) -> Result<(), SinkError> {
        let started = std::time::Instant::now();
        loop {
            match lock.try_lock() {
                Ok(()) => return Ok(()),
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(SinkError::unavailable(format!(
                        "cannot lock {}: another process has held it for more than {}s (`fuser {}` names it); nothing was written, the next pass tries again",
                        lock_file.display(),
                        LOCK_WAIT.as_secs(),
                        lock_file.display()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(self.io("lock", lock_file, e)),
            }
        }
    }

    /// At a read: if no writer holds the lock, removes what a dead writer
    /// left (best effort; the lock file is never created here, so a
    /// read-only command changes nothing else).
    fn clean_if_idle(&self, target: &Path) {
        let Some(dir) = target.parent() else { return };
        if self.leftovers_of(dir, target, false).is_empty() {
            return;
        }
        let Ok(lock) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(lock_path(target))
        else {
            return;
        };
        if lock.try_lock().is_ok() {
            self.clean_stale_temps(dir, target);
            let _ = lock.unlock();
        }
    }

    /// The temporary files of `target` (`.{name}.XXXXXXXX.tmp`) found when
    /// its directory was first listed; `take` removes them from the list.
    fn leftovers_of(&self, dir: &Path, target: &Path, take: bool) -> Vec<PathBuf> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!(".{name}.");
        let mine = |file: &String| {
            file.strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".tmp"))
                .is_some_and(|hex| hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        let mut all = self.leftovers.lock().unwrap_or_else(|e| e.into_inner());
        let list = all.entry(dir.to_path_buf()).or_insert_with(|| {
            fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|f| f.starts_with('.') && f.ends_with(".tmp"))
                        .collect()
                })
                .unwrap_or_default()
        });
        let found: Vec<PathBuf> = list.iter().filter(|f| mine(f)).map(|f| dir.join(f)).collect();
        if take {
            list.retain(|f| !mine(f));
        }
        found
    }

    /// Removes this path's temporary files left by a writer that died
    /// (they hold a secret). Called under the lock, so no live writer's file
    /// is among them.
    fn clean_stale_temps(&self, dir: &Path, target: &Path) {
        for p in self.leftovers_of(dir, target, true) {
            if fs::remove_file(&p).is_ok() {
                tracing::warn!(sink = %self.name, file = %p.display(), "Removed a temporary file left by an interrupted publish.");
            }
        }
    }

    /// Writes the payload to a temporary file (0600 from its creation,
    /// widened to `mode` while still empty), fsyncs it, and renames it over `target`.
    fn write_atomically(&self, dir: &Path, target: &Path, payload: &Payload, points: Points) -> Result<(), SinkError> {
        let json = payload.to_json()?;
        let mode = self
            .config
            .file_mode()
            .map_err(|m| SinkError::invalid(format!("`mode` {m}")))?;
        let file_name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.{:08x}.tmp", rand::rng().random::<u32>()));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            give_to_dir(&f, target);
            if mode != 0o600 {
                f.set_permissions(fs::Permissions::from_mode(mode))?;
            }
            f.write_all(&json)?;
            f.sync_all()?;
            if crate::failpoint::tripped(points.before_rename, &payload.integration) {
                return Err(std::io::Error::other(crate::failpoint::CRASHED));
            }
            fs::rename(&tmp, target)?;
            File::open(dir)?.sync_all()
        };
        match write() {
            Err(e) if e.to_string() == crate::failpoint::CRASHED => Err(SinkError::invalid(crate::failpoint::CRASHED)),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(self.io("write", target, e))
            }
            Ok(()) if crate::failpoint::tripped(points.after_rename, &payload.integration) => {
                Err(SinkError::invalid(crate::failpoint::CRASHED))
            }
            Ok(()) => Ok(()),
        }
    }

    /// Whether a publish could write `path`, leaving nothing behind: an
    /// existing directory gets a temporary file, removed at once; a missing
    /// one is not created: the nearest existing directory above it must let
    /// this process create it (`access(W_OK | X_OK)`, which also sees a
    /// read-only mount).
    fn health_blocking(&self, path: &str) -> Result<String, SinkError> {
        let target = self.target(path)?;
        let dir = target.parent().unwrap_or(&self.config.dir).to_path_buf();
        let mut at = dir.as_path();
        while fs::symlink_metadata(at).is_err() {
            match at.parent() {
                Some(p) => at = p,
                None => break,
            }
        }
        if at == dir {
            self.probe(&dir)?;
            return Ok(format!("{} is writable", dir.display()));
        }
        crate::bounded::writable_dir(at).map_err(|e| self.io("write in", at, e))?;
        Ok({
            format!(
                "{} does not exist yet; the first publish creates it in {}, which is writable",
                dir.display(),
                at.display()
            )
        })
    }
}

/// The longest wait for a writers' lock held by another process.
pub(crate) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The longest a file operation may take (a stuck network file system):
/// past it the operation is reported as failed; its thread is left behind.
pub(crate) const FILE_OP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    match tokio::time::timeout(FILE_OP_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(done) => done.map_err(|e| SinkError::unavailable(format!("the file sink's task failed: {e}")))?,
        Err(_) => Err(SinkError::unavailable(format!(
            "the file system did not answer within {}s (a stuck network mount?); the outcome is unknown and is read back at the next pass",
            FILE_OP_TIMEOUT.as_secs()
        ))),
    }
}

#[async_trait::async_trait]
impl Sink for FileSink {
    fn describe(&self) -> String {
        format!("file sink `{}` ({})", self.name, self.config.dir.display())
    }

    async fn read_current(&self, path: &str) -> Result<Option<(Payload, Version)>, SinkError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = self.reads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            q.waiting.push((path.to_string(), tx));
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let me = self.handle();
            let done = ReaderDone(self.reads.clone());
            drop(tokio::task::spawn_blocking(move || me.read_waiting(done)));
        }
        rx.await
            .map_err(|_| SinkError::unavailable("the file sink's reader stopped before answering"))?
    }

    async fn publish(&self, path: &str, payload: &Payload, expected: Option<&Version>) -> Result<Version, SinkError> {
        let me = self.handle();
        let (path, payload, expected) = (path.to_string(), payload.clone(), expected.cloned());
        let published = blocking(move || me.publish_blocking(&path, &payload, expected.as_ref())).await;
        if published.as_ref().is_err_and(|e| e.detail == crate::failpoint::CRASHED) {
            // A test made the process "die" inside the publish.
            std::future::pending::<()>().await;
        }
        published
    }

    async fn overwrite(&self, path: &str, payload: &Payload) -> Result<Version, SinkError> {
        let me = self.handle();
        let (path, payload) = (path.to_string(), payload.clone());
        let written = blocking(move || me.overwrite_blocking(&path, &payload)).await;
        if written.as_ref().is_err_and(|e| e.detail == crate::failpoint::CRASHED) {
            std::future::pending::<()>().await;
        }
        written
    }

    async fn healthcheck(&self, path: &str) -> Result<String, SinkError> {
        let me = self.handle();
        let path = path.to_string();
        blocking(move || me.health_blocking(&path)).await
    }

    async fn remove(&self, path: &str) -> Result<bool, SinkError> {
        let me = self.handle();
        let path = path.to_string();
        blocking(move || me.remove_blocking(&path)).await
    }

    async fn writable(&self, path: &str) -> Result<(), SinkError> {
        let me = self.handle();
        let path = path.to_string();
        blocking(move || me.writable_blocking(&path)).await
    }

    async fn removable(&self, path: &str) -> Result<String, SinkError> {
        let target = self.target(path)?;
        let dir = target.parent().unwrap_or(&self.config.dir).to_path_buf();
        blocking(move || {
            crate::bounded::writable_dir(&dir)
                .map(|()| format!("{} is writable", dir.display()))
                .map_err(|e| SinkError::denied(format!("cannot remove files in {}: {e}", dir.display())))
        })
        .await
    }

    async fn mode_drift(&self, path: &str, fix: bool) -> Result<Option<String>, SinkError> {
        let found = self.drift.lock().unwrap_or_else(|e| e.into_inner()).get(path).copied();
        let Some(found) = found else { return Ok(None) };
        let wanted = self.config.file_mode().unwrap_or(0o600);
        let said = format!("{found:04o}, not the sink's `mode` {wanted:04o}");
        if !fix {
            return Ok(Some(said));
        }
        let me = self.handle();
        let owned = path.to_string();
        blocking(move || me.set_mode(&owned, wanted)).await?;
        self.drift.lock().unwrap_or_else(|e| e.into_inner()).remove(path);
        Ok(Some(said))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file sink `t` writing into `dir`, with `mode`.
    fn sink_in(dir: &Path, mode: Option<&str>) -> FileSink {
        FileSink::new(
            "t",
            FileSinkConfig {
                dir: dir.to_path_buf(),
                mode: mode.map(String::from),
            },
        )
    }

    fn payload(rotation: &str) -> Payload {
        crate::sink::contract::sample_payload(rotation)
    }

    #[tokio::test]
    async fn publish_is_cas_and_0600() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(
            "t",
            FileSinkConfig {
                dir: dir.path().join("creds"),
                mode: None,
            },
        );
        assert!(sink.read_current("etl.json").await.unwrap().is_none());
        let v1 = sink.publish("etl.json", &payload("r1"), None).await.unwrap();
        let mode = fs::metadata(dir.path().join("creds/etl.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(dir.path().join("creds")).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        // A second writer that read "nothing" loses.
        let err = sink.publish("etl.json", &payload("r2"), None).await.unwrap_err();
        assert_eq!(err.kind, crate::sink::contract::SinkErrorKind::Conflict, "{err}");
        let v2 = sink.publish("etl.json", &payload("r2"), Some(&v1)).await.unwrap();
        let err = sink.publish("etl.json", &payload("r3"), Some(&v1)).await.unwrap_err();
        assert_eq!(err.kind, crate::sink::contract::SinkErrorKind::Conflict);
        let (p, v) = sink.read_current("etl.json").await.unwrap().unwrap();
        assert_eq!(v, v2);
        assert_eq!(p.secret.expose(), "s3cr3t-value");
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("creds"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}"); // etl.json + etl.json.lock
        assert!(sink.healthcheck("etl.json").await.is_ok());
    }

    #[tokio::test]
    async fn group_readable_mode_when_asked_never_world() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = |m: &str| FileSinkConfig {
            dir: dir.path().to_path_buf(),
            mode: Some(m.into()),
        };
        let sink = FileSink::new("t", cfg("0640"));
        sink.publish("etl.json", &payload("r1"), None).await.unwrap();
        let mode = fs::metadata(dir.path().join("etl.json")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        for bad in ["0644", "0604", "0200", "0700", "rw", "01600"] {
            assert!(cfg(bad).check().is_err(), "{bad}");
        }
        assert_eq!(cfg("0440").file_mode(), Ok(0o440));
    }

    /// Root writing into another user's directory (`rotate-now` run with
    /// sudo beside the service) leaves every file the directory owner's, in
    /// its group: the service and its consumers read them as before. Needs
    /// root, as CI and the booted-systemd test run.
    #[tokio::test]
    async fn root_writes_leave_the_files_to_the_directorys_owner_and_group() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            fs::metadata(dir.path()).unwrap().uid(),
            0,
            "this test needs root (it checks what root's writes leave behind); CI runs as root"
        );
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        let sink = sink_in(dir.path(), Some("0640"));
        assert!(sink.healthcheck("etl.json").await.is_ok());
        sink.publish("etl.json", &payload("r1"), None).await.unwrap();
        sink.publish("etl.json", &payload("r2"), Some(&Version("r1".into())))
            .await
            .unwrap();
        for f in ["etl.json", "etl.json.lock"] {
            let m = fs::metadata(dir.path().join(f)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{f}");
        }
        let m = fs::metadata(dir.path().join("etl.json")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o640, "chown keeps the mode");
        // A directory root owns: root's files stay root's.
        let own = tempfile::tempdir().unwrap();
        let sink = sink_in(own.path(), None);
        sink.publish("etl.json", &payload("r1"), None).await.unwrap();
        assert_eq!(fs::metadata(own.path().join("etl.json")).unwrap().uid(), 0);
    }

    #[tokio::test]
    async fn stale_temporary_files_are_removed_under_the_lock_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink_in(dir.path(), None);
        // A publish killed between its temporary write and its rename left this behind.
        let stale = dir.path().join(".etl.json.0badc0de.tmp");
        std::fs::write(&stale, "{\"secret\": \"left behind\"}").unwrap();
        let others = [
            ".ci.json.0badc0de.tmp",
            ".etl.json.bak",
            "etl.json.0badc0de.tmp",
            ".etl.json.xyz.tmp",
        ];
        for o in others {
            std::fs::write(dir.path().join(o), "x").unwrap();
        }
        sink.publish("etl.json", &payload("r1"), None).await.unwrap();
        assert!(!stale.exists(), "the stale temporary file is removed");
        for o in others {
            assert!(dir.path().join(o).exists(), "{o} is not the sink's own temporary file");
        }
    }

    #[tokio::test]
    async fn symbolic_links_are_never_followed_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let sink = sink_in(dir.path(), None);
        // A symlinked lock file would make the rotator create a file elsewhere.
        let elsewhere = outside.path().join("created-here");
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("etl.json.lock")).unwrap();
        assert!(sink.publish("etl.json", &payload("r1"), None).await.is_err());
        assert!(!elsewhere.exists(), "nothing is created through the link");
        // A symlinked credential file is refused, not silently replaced by a regular file.
        let real = outside.path().join("real.json");
        std::fs::write(&real, "{}").unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("ci.json")).unwrap();
        let e = sink.publish("ci.json", &payload("r1"), None).await.unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert!(
            std::fs::symlink_metadata(dir.path().join("ci.json"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(sink.read_current("ci.json").await.is_err());
        // Finding 11 of issue 21: a directory of `path` that is a link takes
        // the write out of `dir`: refused too, for reads and writes.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("sub")).unwrap();
        let e = sink.publish("sub/etl.json", &payload("r1"), None).await.unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert!(!outside.path().join("etl.json").exists());
        assert!(sink.read_current("sub/etl.json").await.is_err());
        assert!(sink.overwrite("sub/etl.json", &payload("r1")).await.is_err());
        // `dir` itself may be a link (as `/var/run` is).
        let linked = sink_in(&dir.path().join("sub"), None);
        linked.publish("etl.json", &payload("r1"), None).await.unwrap();
    }

    #[test]
    fn paths_are_checked() {
        assert!(check_path("etl.json").is_ok());
        assert!(check_path("team/etl.json").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "x.lock", "dir/"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}
