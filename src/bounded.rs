//! Reads with a size cap: secret files, the policy, stored payloads and HTTP
//! answers. Nothing the rotator reads from outside can make it allocate
//! without bound (a secret reference to `/dev/zero`, a server that never
//! stops talking). A leaf: it imports nothing of the crate.

use std::fmt;
use std::io::Read as _;
use std::path::Path;

use zeroize::Zeroizing;

/// The largest secret (a token, a password, a JWT, a webhook URL): 64 KiB.
pub(crate) const SECRET_MAX: u64 = 64 * 1024;
/// The largest document (a policy, a stored payload, a CA file, an API answer): 4 MiB.
pub(crate) const DOCUMENT_MAX: u64 = 4 * 1024 * 1024;

/// Why a bounded read failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The file could not be opened or read.
    Io(std::io::Error),
    /// Not a regular file (a device, a FIFO, a directory) where one is required.
    NotRegular,
    /// More than the cap.
    TooLarge { max: u64 },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular => f.write_str("it is not a regular file"),
            ReadError::TooLarge { max } => write!(f, "it is larger than {}", size(*max)),
        }
    }
}

impl std::error::Error for ReadError {}

/// `n` bytes for people: `64 KiB`, `4 MiB`.
pub(crate) fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// Reads at most `max` bytes of `path` into a buffer wiped on drop; more is
/// an error. With `regular_only`, anything but a regular file is refused.
pub(crate) fn read_file(path: &Path, max: u64, regular_only: bool) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    read_open(file, &meta, max, regular_only)
}

/// As [`read_file`], for a file the caller opened (its own way) and
/// `fstat`ed already.
pub(crate) fn read_open(
    file: std::fs::File,
    meta: &std::fs::Metadata,
    max: u64,
    regular_only: bool,
) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    if regular_only && !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(usize::try_from(meta.len().min(max)).unwrap_or(0)));
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(ReadError::Io)?;
    if buf.len() as u64 > max {
        return Err(ReadError::TooLarge { max });
    }
    Ok(buf)
}

/// As [`read_file`], as UTF-8 text.
pub(crate) fn read_text(path: &Path, max: u64, regular_only: bool) -> Result<Zeroizing<String>, ReadError> {
    let bytes = read_file(path, max, regular_only)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ReadError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text")))?;
    Ok(Zeroizing::new(text.to_string()))
}

/// Why reading an HTTP answer failed.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The connection failed while reading.
    Transport(reqwest::Error),
    /// More than the cap.
    TooLarge { max: u64 },
}

/// The most an answer's `Content-Length` makes [`read_body`] allocate at once.
const PREALLOCATE_MAX: u64 = 8 * 1024 * 1024;

/// Reads at most `max` bytes of an HTTP answer; more is an error.
pub(crate) async fn read_body(mut resp: reqwest::Response, max: u64) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(BodyError::TooLarge { max });
    }
    // Sized by `Content-Length` when there is one (no copy as it grows: a
    // list of 10,000 accounts is 3 MB, and a grown buffer leaves its old
    // copies behind, not zeroized), up to a bound a lying header cannot
    // turn into a large allocation.
    let hint = resp.content_length().unwrap_or(0).min(PREALLOCATE_MAX);
    let mut buf = Zeroizing::new(Vec::with_capacity(usize::try_from(hint).unwrap_or(0)));
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if (buf.len() as u64).saturating_add(chunk.len() as u64) > max {
            return Err(BodyError::TooLarge { max });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Whether this process may create files in `dir`, asked without writing.
pub(crate) fn writable_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let r = unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_with_a_cap_and_devices_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, vec![b'x'; 100]).unwrap();
        assert_eq!(read_file(&p, 100, true).unwrap().len(), 100);
        assert!(matches!(read_file(&p, 99, true), Err(ReadError::TooLarge { max: 99 })));
        assert!(matches!(
            read_file(Path::new("/dev/zero"), 64, true),
            Err(ReadError::NotRegular)
        ));
        // Not required to be regular: still bounded.
        assert!(matches!(
            read_file(Path::new("/dev/zero"), 64, false),
            Err(ReadError::TooLarge { .. })
        ));
        assert_eq!(size(SECRET_MAX), "64 KiB");
        assert_eq!(size(DOCUMENT_MAX), "4 MiB");
    }

    /// A server that answers every request with `body`, declaring its length or not.
    async fn server(body_len: usize, declared: bool) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).await;
            let head = if declared {
                format!("HTTP/1.1 200 OK\r\ncontent-length: {body_len}\r\n\r\n")
            } else {
                "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_string()
            };
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&vec![b'x'; body_len]).await;
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn answers_are_read_with_a_cap_declared_or_not() {
        for declared in [true, false] {
            let url = server(64 * 1024, declared).await;
            let resp = reqwest::get(&url).await.unwrap();
            assert!(matches!(
                read_body(resp, 1024).await,
                Err(BodyError::TooLarge { max: 1024 })
            ));
            let url = server(1000, declared).await;
            let resp = reqwest::get(&url).await.unwrap();
            assert_eq!(read_body(resp, 1024).await.unwrap().len(), 1000);
        }
    }
}
