//! The policy: a typed TOML contract (`version = 1`), its validation, and
//! the resolved model the rest of the program reads.
//!
//! - [`file`]: the file as written (serde; unknown keys are errors, every
//!   error carries the key's path);
//! - `validate`: the cross-checks, and each integration's effective
//!   settings (defaults overridden per integration);
//! - `model`: the resolved [`Policy`] and [`Integration`];
//! - `error`: the errors ([`PolicyError`]);
//! - this module: finding and loading the file.
//!
//! Every error names the key, e.g. `` `integrations[1].ttl` ``.

mod error;
pub(crate) mod file;
mod model;
mod sections;
mod validate;

use std::path::{Path, PathBuf};

pub use self::error::PolicyError;
pub use self::file::{AdoptRef, MirrorConfig, PolicyConfig, ProjectsSpec, Region, WebhookConfig};
pub use self::model::{Integration, MixpanelSettings, Policy, SELF_NAME, Settings};
pub(crate) use self::validate::MAX_INTEGRATION_NAME;

/// Where the policy is read from when neither `--config` nor
/// `MIXPANEL_ROTATOR_CONFIG` says otherwise.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/mixpanel-rotator/policy.toml";

/// Which config file to read: `--config`, else `MIXPANEL_ROTATOR_CONFIG`, else the default.
pub(crate) fn config_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os("MIXPANEL_ROTATOR_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

impl Policy {
    /// Reads and checks the policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        use crate::bounded::{DOCUMENT_MAX, ReadError, read_text};
        let text = read_text(path, DOCUMENT_MAX, false).map_err(|e| PolicyError::Io {
            path: path.to_path_buf(),
            source: match e {
                ReadError::Io(e) => e,
                other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
            },
        })?;
        Self::parse(&text)
    }

    /// Parses and checks policy text.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        // A large policy, section by section (a fast path: 25 MB less at
        // 10,000 integrations); otherwise, and for every error, one parse
        // of the whole document serves the version check and the
        // deserialization.
        if let Some(sections) = sections::Sections::parse(text) {
            let mut broken = false;
            let count = sections.len();
            let (root, each) = sections.into_parts();
            let resolved = validate::resolve(
                root,
                count,
                each.map_while(|s| {
                    broken |= s.is_none();
                    s
                }),
            );
            if !broken {
                return resolved;
            }
        }
        let doc = toml::de::DeTable::parse(text).map_err(|e| PolicyError::Parse {
            key: "(file)".into(),
            message: format!(
                "not valid TOML{}: {}{}",
                at(text, e.span()),
                e.message().trim_end(),
                excerpt(text, e.span())
            ),
        })?;
        sections::check_version(doc.get_ref(), text)?;
        let de = toml::Deserializer::from(doc);
        let config: PolicyConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            PolicyError::Parse {
                key,
                message: format!("{}{}", inner.message().trim_end(), at(text, inner.span())),
            }
        })?;
        Self::from_config(config)
    }

    /// Cross-checks a parsed policy and resolves every integration.
    pub(crate) fn from_config(c: PolicyConfig) -> Result<Self, PolicyError> {
        let count = c.integrations.len();
        validate::resolve(c, count, std::iter::empty())
    }

    /// The rotator's own credential (`[mixpanel.self]`), if it rotates it:
    /// always the first of `integrations`.
    pub fn own(&self) -> Option<&Integration> {
        self.integrations.first().filter(|i| i.is_self())
    }

    /// The integration called `name`.
    pub fn integration(&self, name: &str) -> Option<&Integration> {
        self.integrations.iter().find(|i| i.name == name)
    }
}

/// ` (line L, column C)` of a byte span's start, 1-based; empty without a span.
fn at(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some((line, column, _)) = span.and_then(|s| position(text, s.start)) else {
        return String::new();
    };
    format!(" (line {line}, column {column})")
}

/// The line of a span's start, with a caret under the column, indented
/// under the message; empty without a span.
fn excerpt(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some((line, column, source)) = span.and_then(|s| position(text, s.start)) else {
        return String::new();
    };
    let gutter = line.to_string();
    let pad = " ".repeat(gutter.len());
    let caret = " ".repeat(column.saturating_sub(1));
    format!("\n      {pad} |\n      {gutter} | {source}\n      {pad} | {caret}^")
}

/// Line and column (1-based, in characters) of byte `offset`, and the line's text.
fn position(text: &str, offset: usize) -> Option<(usize, usize, &str)> {
    let before = text.get(..offset.min(text.len()))?;
    let line = before.matches('\n').count().saturating_add(1);
    let start = before.rfind('\n').map_or(0, |i| i.saturating_add(1));
    let column = before.get(start..)?.chars().count().saturating_add(1);
    let source = text.get(start..)?.lines().next().unwrap_or("");
    Some((line, column, source))
}

/// A policy for unit tests: a US organization, a file sink `f`, and `integrations`.
#[cfg(test)]
pub(crate) fn test_policy(integrations: &str) -> Policy {
    let text = format!(
        "version = 1\n[mixpanel]\nregion = \"us\"\norganization_id = 1\nusername = \"u\"\nsecret = {{ env = \"X\" }}\n\
         [sinks.f]\ntype = \"file\"\ndir = \"/tmp\"\n{integrations}"
    );
    match Policy::parse(&text) {
        Ok(p) => p,
        Err(e) => panic!("test policy: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy with `rest` after a valid head, parsed; the error's text.
    fn error_of(rest: &str) -> String {
        let text = format!(
            "version = 1\n[mixpanel]\nregion = \"us\"\norganization_id = 1\nusername = \"u\"\nsecret = {{ env = \"X\" }}\n\
             [sinks.f]\ntype = \"file\"\ndir = \"/tmp\"\n{rest}"
        );
        match Policy::parse(&text) {
            Ok(_) => panic!("accepted: {rest}"),
            Err(e) => e.to_string(),
        }
    }

    /// Every duration key, set absurdly long, is refused at load time with
    /// its key named (it would overflow the calendar at run time).
    #[test]
    fn every_duration_key_has_an_upper_bound() {
        let absurd = "\"100000000d\"";
        let etl = "[[integrations]]\nname = \"etl\"\nsink = \"f\"\npath = \"etl.json\"\nadopt = 5\n";
        let cases: Vec<(String, &str)> = [
            "ttl",
            "renew_before",
            "grace",
            "orphan_after",
            "delete_when_idle",
            "max_grace",
            "on_rotate_timeout",
        ]
        .iter()
        .flat_map(|k| {
            [
                (format!("{etl}{k} = {absurd}\n"), *k),
                (format!("[defaults]\n{k} = {absurd}\n{etl}"), *k),
            ]
        })
        .chain([
            (format!("{etl}schedule = \"0 4 * * MON\"\njitter = \"1000000000d\"\n"), "jitter"),
            (format!("{etl}webhook = {{ url = {{ env = \"W\" }}, timeout = {absurd} }}\n"), "webhook.timeout"),
            (format!("[daemon]\nresync_interval = {absurd}\n{etl}"), "daemon.resync_interval"),
            (format!("[daemon]\nspread = {absurd}\n{etl}"), "daemon.spread"),
            (format!("[daemon]\nmirror_interval = {absurd}\n{etl}"), "daemon.mirror_interval"),
            (format!("[sinks.v]\ntype = \"vault\"\naddress = \"https://v\"\nauth = {{ method = \"token\", token = {{ env = \"T\" }} }}\ntimeout = {absurd}\n{etl}"), "sinks.v.timeout"),
        ])
        .collect();
        for (rest, key) in cases {
            let e = error_of(&rest);
            assert!(e.contains(key), "{key}: {e}");
        }
        let timeout = Policy::parse(
            "version = 1\n[mixpanel]\nregion = \"us\"\norganization_id = 1\nusername = \"u\"\nsecret = { env = \"X\" }\ntimeout = \"100000000d\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(timeout.contains("mixpanel.timeout"), "{timeout}");
    }

    /// The text of representative policy errors, snapshot-tested so that
    /// wording changes are reviewed.
    #[test]
    fn user_facing_policy_errors() {
        let etl = "[[integrations]]\nname = \"etl\"\nsink = \"f\"\npath = \"etl.json\"\nadopt = 5\n";
        let cases = [
            "[mixpanel2]\nx = 1\n".to_string(),
            format!("{etl}ttl = \"10d\"\nrenew_before = \"10d\"\n"),
            format!("{etl}grace = \"40d\"\n"),
            format!("{etl}schedule = \"0 0 4 * * MON\"\n"),
            format!("{etl}orphan_after = \"30s\"\n"),
            format!("{etl}ttl = \"thirty days\"\n"),
            "[[integrations]]\nname = \"Etl\"\nsink = \"nope\"\npath = \"../x\"\n".to_string(),
            format!("{etl}{}", etl.replace("adopt = 5", "adopt = 6")),
            "[sinks.v]\ntype = \"vault\"\naddress = \"http://vault.example.com\"\nauth = { method = \"token\", token = \"s3cr3t\" }\n".to_string(),
            "[sinks.g]\ntype = \"gcs\"\n".to_string(),
            "[[integrations]]\nname = \"etl\"\nsink = \"f\"\npath = \"etl\\n.json\"\nadopt = 5\n".to_string(),
            "[[integrations]]\nname = \"etl\"\nsink = \"f\"\npath = \"etl\\u0000.json\"\nadopt = 5\n".to_string(),
            format!("[sinks.f2]\ntype = \"file\"\ndir = \"/tmp\"\n{etl}[[integrations]]\nname = \"ci\"\nsink = \"f2\"\npath = \"etl.json\"\nadopt = 6\n"),
            "[sinks.v]\ntype = \"vault\"\naddress = \"https://rotator:hunter2@vault.example.com\"\nauth = { method = \"token\", token = { env = \"T\" } }\n".to_string(),
        ];
        // Test builds also know the in-memory store (the `testing`
        // feature); the snapshot is the text of a release build.
        let text: Vec<String> = cases.iter().map(|c| error_of(c).replace(", `memory`", "")).collect();
        assert!(
            text.iter().all(|t| !t.contains("hunter2")),
            "a URL's password is never echoed"
        );
        insta::assert_snapshot!("policy_errors", text.join("\n\n"));
        let secret = crate::values::SecretRef::Env("MPR_TEST_SURELY_UNSET".into())
            .resolve("mixpanel.secret")
            .unwrap_err();
        insta::assert_snapshot!("secret_reference_error", secret.to_string());
    }
}
