//! Where a path of a sink lands, in one canonical spelling: two spellings
//! of one place (`dir` and `dir/.`, `a//b`, a symlinked directory, a Vault
//! address with or without its default port, a namespace written into the
//! mount, the default AWS profile named or not) compare equal, so that the
//! load-time check "one place per primary and mirror" cannot be defeated by
//! writing a place another way.

use std::path::{Component, Path, PathBuf};

/// A file sink's `dir` joined with `path`: made absolute and lexically
/// normalized (`.` and empty components dropped, `..` taken back), then
/// the longest part of it that exists resolved through the file system
/// (symbolic links, as `realpath` does), the rest appended as written.
pub(crate) fn file(dir: &Path, path: &str) -> PathBuf {
    let joined = dir.join(path);
    let absolute = if joined.is_absolute() {
        joined
    } else {
        std::env::current_dir().unwrap_or_default().join(joined)
    };
    let mut lexical = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                lexical.pop();
            }
            other => lexical.push(other.as_os_str()),
        }
    }
    // The longest existing ancestor, resolved; what does not exist yet
    // cannot be a link, so it is kept as written.
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    let mut head = lexical.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(head) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                head = parent;
            }
            _ => return lexical,
        }
    }
}

/// A URL's scheme, host and port, lowercased, with the scheme's default
/// port written out and a loopback host written one way (`localhost`,
/// `127.0.0.1` and `[::1]` are the same server to this host).
pub(crate) fn origin(url: &str) -> String {
    let Ok(u) = reqwest::Url::parse(url.trim()) else {
        return url.trim().trim_end_matches('/').to_ascii_lowercase();
    };
    let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>();
    let host = if host == "localhost" || ip.is_ok_and(|a| a.is_loopback()) {
        "loopback".to_string()
    } else {
        host
    };
    let port = u.port_or_known_default().map(|p| format!(":{p}")).unwrap_or_default();
    let path = u.path().trim_end_matches('/');
    format!("{}://{host}{port}{path}", u.scheme())
}

/// Slash-separated segments, without empty and `.` ones.
pub(crate) fn segments(s: &str) -> String {
    s.split('/')
        .filter(|x| !x.is_empty() && *x != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// A Vault KV v2 path: the server, and the full path from the root
/// namespace (a namespace is a path prefix: namespace `a` with mount `b`
/// is mount `a/b` at the root).
pub(crate) fn vault(address: &str, namespace: Option<&str>, mount: &str, path: &str) -> String {
    let full = [namespace.unwrap_or(""), mount, "data", path]
        .iter()
        .map(|s| segments(s))
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/");
    format!("vault {} {full}", origin(address))
}

/// An AWS secret: its region, the endpoint (none: the region's public one),
/// the credentials' profile (none: `default`) and its name.
pub(crate) fn aws(region: &str, endpoint: Option<&str>, profile: Option<&str>, name: &str) -> String {
    let region = region.trim().to_ascii_lowercase();
    let endpoint = endpoint.map_or_else(|| format!("https://secretsmanager.{region}.amazonaws.com:443"), origin);
    let profile = profile.map(str::trim).filter(|p| !p.is_empty()).unwrap_or("default");
    format!("aws {region} {endpoint} {profile} {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_file_are_one_place() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("creds");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&dir, d.path().join("link")).unwrap();
        let at = file(&dir, "etl.json");
        let dotted = PathBuf::from(format!("{}/.", dir.display()));
        let doubled = PathBuf::from(format!("{}//creds", d.path().display()));
        for (dir, path) in [
            (dotted.as_path(), "etl.json"),
            (doubled.as_path(), "etl.json"),
            (d.path().join("link").as_path(), "etl.json"),
            (d.path(), "creds/./etl.json"),
            (d.path(), "creds//etl.json"),
            (&d.path().join("nosuch").join(".."), "creds/etl.json"),
        ] {
            assert_eq!(file(dir, path), at, "{dir:?} {path}");
        }
        assert_ne!(file(&dir, "ci.json"), at);
        // Not existing yet: normalized as written.
        assert_eq!(file(&dir.join("sub"), "x.json"), file(&dir, "sub//x.json"));
    }

    #[test]
    fn spellings_of_one_vault_path_or_aws_secret_are_one_place() {
        let v = vault("https://vault.internal:8200", None, "secret", "mixpanel/etl");
        assert_eq!(
            vault("HTTPS://Vault.Internal:8200/", None, "/secret/", "mixpanel/etl"),
            v
        );
        assert_eq!(
            vault("https://vault.internal", None, "secret", "x"),
            vault("https://vault.internal:443", None, "secret", "x")
        );
        assert_eq!(
            vault("http://127.0.0.1:8200", Some("team/"), "kv", "etl"),
            vault("http://localhost:8200", None, "team/kv", "etl")
        );
        assert_ne!(vault("https://vault.internal:8200", None, "secret", "mixpanel/ci"), v);
        let a = aws("us-east-1", None, None, "mixpanel/etl");
        assert_eq!(
            aws(
                "US-EAST-1",
                Some("https://secretsmanager.us-east-1.amazonaws.com/"),
                Some("default"),
                "mixpanel/etl"
            ),
            a
        );
        assert_ne!(aws("eu-west-1", None, None, "mixpanel/etl"), a);
        assert_ne!(aws("us-east-1", None, Some("prod"), "mixpanel/etl"), a);
    }
}
