//! Value types of the configuration, shared by the policy and the sinks:
//! durations, cron schedules, secret references and service URLs. They know
//! nothing of the policy's layout; errors that need a key take it from the
//! caller ([`KeyError`]).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use chrono::{DateTime, Duration, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};

use zeroize::Zeroizing;

use crate::bounded::{SECRET_MAX, read_text, size};
use crate::secret::Secret;
use crate::text::format_duration;

/// A problem with the value of one configuration key: `` `key` message ``.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}` {message}")]
pub struct KeyError {
    /// The key, e.g. `mixpanel.secret`.
    pub(crate) key: String,
    /// What is wrong and what to do.
    pub(crate) message: String,
}

impl KeyError {
    /// An error about `key`.
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A value refused, its key named by whoever reads it: what is wrong and
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Invalid {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl From<Invalid> for String {
    fn from(e: Invalid) -> Self {
        e.0
    }
}

/// A duration written as `30s`, `15m`, `24h`, `30d` (or a sum such as `1h30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses `30s`, `15m`, `24h`, `30d`, `1h30m`.
    pub(crate) fn parse(s: &str) -> Result<Self, Invalid> {
        let err = || {
            Invalid(format!(
                "`{s}` is not a duration: write a number and a unit, e.g. `30s`, `15m`, `24h`, `30d`"
            ))
        };
        let s = s.trim();
        if s.is_empty() {
            return Err(err());
        }
        let mut total = Duration::zero();
        let mut digits = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let n: i64 = digits.parse().map_err(|_| err())?;
            digits.clear();
            let unit = match c {
                's' => Duration::try_seconds(n),
                'm' => Duration::try_minutes(n),
                'h' => Duration::try_hours(n),
                'd' => Duration::try_days(n),
                _ => None,
            }
            .ok_or_else(err)?;
            total = total.checked_add(&unit).ok_or_else(err)?;
        }
        if !digits.is_empty() {
            return Err(err());
        }
        Ok(Self(total))
    }

    /// As a `std::time::Duration` (never negative).
    pub(crate) fn to_std(self) -> std::time::Duration {
        self.0.to_std().unwrap_or_default()
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(de::Error::custom)
    }
}

/// A standard 5-field cron expression (minute hour day-of-month month
/// day-of-week, POSIX weekdays: 0 or 7 = Sunday, 1 = Monday), evaluated in UTC.
#[derive(Clone)]
pub struct Schedule {
    text: String,
    /// Boxed: a parsed cron line is large, and every integration has a `schedule` field.
    cron: Box<Cron>,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

/// The cron fields, in order, with what a name in them may be.
const CRON_FIELDS: [(&str, &[&str]); 5] = [
    ("minute", &[]),
    ("hour", &[]),
    ("day-of-month", &[]),
    (
        "month",
        &[
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ],
    ),
    ("day-of-week", &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]),
];

/// Names in a cron line, checked field by field before the cron parser sees
/// them (it rewrites names into numbers first, so `MONDAY` reached the user
/// as an internal `1DAY`).
fn check_cron_names(s: &str) -> Result<(), Invalid> {
    for ((field, names), value) in CRON_FIELDS.iter().zip(s.split_whitespace()) {
        for word in value
            .split([',', '-', '/'])
            .filter(|w| w.chars().any(|c| c.is_ascii_alphabetic()))
        {
            if names.iter().any(|n| n.eq_ignore_ascii_case(word)) {
                continue;
            }
            return Err(if names.is_empty() {
                format!("`{s}`: the {field} field `{value}` has `{word}`; write numbers there").into()
            } else {
                format!(
                    "`{s}`: the {field} field `{value}` has `{word}`; write a number or a three-letter name ({})",
                    names.join(", ")
                )
                .into()
            });
        }
    }
    Ok(())
}

/// Each cron field's numbers within its range (croner's own words for one
/// out of range are "Component error: Number out of bounds").
fn check_cron_ranges(s: &str) -> Result<(), Invalid> {
    const RANGES: [(&str, u32, u32, &str); 5] = [
        ("minute", 0, 59, "minutes are 0 to 59"),
        ("hour", 0, 23, "hours are 0 to 23"),
        ("day-of-month", 1, 31, "days of the month are 1 to 31"),
        ("month", 1, 12, "months are 1 to 12, or JAN to DEC"),
        (
            "day-of-week",
            0,
            7,
            "days of the week are 0 to 7 (0 and 7 are Sunday), or SUN to SAT",
        ),
    ];
    for ((field, lo, hi, says), value) in RANGES.iter().zip(s.split_whitespace()) {
        // Ranges, lists and steps; `L`, `W` and `#` suffixes aside. A step
        // (after `/`) is a count, not a value of the field.
        for part in value.split(',') {
            let (values, _step) = part.split_once('/').unwrap_or((part, ""));
            for word in values.split('-') {
                let digits: String = word.chars().take_while(char::is_ascii_digit).collect();
                let Ok(n) = digits.parse::<u32>() else { continue };
                if n < *lo || n > *hi {
                    return Err(format!("`{s}`: the {field} field `{value}` has {n}, out of range: {says}").into());
                }
            }
        }
    }
    Ok(())
}

impl Schedule {
    /// Parses a 5-field cron line; seconds and years are rejected.
    pub(crate) fn parse(s: &str) -> Result<Self, Invalid> {
        let fields = s.split_whitespace().count();
        if !s.trim_start().starts_with('@') && fields != 5 {
            return Err(format!(
                "`{s}` has {fields} fields; write a standard 5-field cron line (minute hour day-of-month month day-of-week), e.g. `0 4 * * MON`"
            ).into());
        }
        if !s.trim_start().starts_with('@') {
            check_cron_names(s)?;
            check_cron_ranges(s)?;
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(s)
            .map_err(|e| format!("`{s}` is not a valid cron line (minute hour day-of-month month day-of-week): {e}"))?;
        Ok(Self {
            text: s.to_string(),
            cron: Box::new(cron),
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first slot strictly after `t`.
    pub(crate) fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Schedule::parse(&s).map_err(de::Error::custom)
    }
}

/// A reference to a secret: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `{ env = "NAME" }`: the value of an environment variable of the rotator.
    Env(String),
    /// `{ file = "/path" }`: a file's contents (one trailing newline removed).
    File(PathBuf),
    /// `{ credential = "name" }`: a systemd credential, `$CREDENTIALS_DIRECTORY/name`
    /// (`LoadCredential=` / `SetCredentialEncrypted=` in the unit).
    Credential(String),
}

impl SecretRef {
    /// Reads the secret. `key` names the configuration key in errors.
    pub(crate) fn resolve(&self, key: &str) -> Result<Secret, KeyError> {
        let value = self.read().map_err(|m| KeyError::new(key, m))?;
        let trimmed = value.strip_suffix('\n').unwrap_or(&value);
        let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(KeyError::new(key, "refers to an empty secret"));
        }
        Ok(Secret::new(trimmed))
    }

    /// The raw value: at most 64 KiB, from a regular file when it is one.
    fn read(&self) -> Result<Zeroizing<String>, String> {
        match self {
            SecretRef::Env(name) => {
                let v = Zeroizing::new(std::env::var(name).map_err(|_| {
                    format!(
                        "refers to environment variable `{name}`, which is not set: export it, or use {{ file = \"...\" }}"
                    )
                })?);
                if v.len() as u64 > SECRET_MAX {
                    return Err(format!(
                        "refers to environment variable `{name}`, which is larger than {}: that is not a credential",
                        size(SECRET_MAX)
                    ));
                }
                Ok(v)
            }
            SecretRef::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    format!("refers to systemd credential `{name}`, but $CREDENTIALS_DIRECTORY is not set: load it with LoadCredential={name}:/path in the unit")
                })?;
                let path = PathBuf::from(dir).join(name);
                read_text(&path, SECRET_MAX, true).map_err(|e| {
                    format!(
                        "refers to systemd credential `{name}` ({}), which cannot be read: {e}",
                        path.display()
                    )
                })
            }
            SecretRef::File(path) => read_text(path, SECRET_MAX, true)
                .map_err(|e| format!("refers to file {}, which cannot be read: {e}", path.display())),
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretRefVisitor)
    }
}

struct SecretRefVisitor;

impl<'de> Visitor<'de> for SecretRefVisitor {
    type Value = SecretRef;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a secret reference: { env = \"NAME\" }, { file = \"/path\" } or { credential = \"name\" }")
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<SecretRef, E> {
        Err(E::custom(
            "secrets are never written inline in the policy (it gets copied, committed and printed): \
             use { env = \"NAME\" } or { file = \"/path/to/secret\" }",
        ))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretRef, A::Error> {
        let mut out = None;
        while let Some(k) = map.next_key::<String>()? {
            if out.is_some() {
                return Err(de::Error::custom(
                    "a secret reference has exactly one key: `env`, `file` or `credential`",
                ));
            }
            out = Some(match k.as_str() {
                "env" => SecretRef::Env(map.next_value()?),
                "file" => SecretRef::File(map.next_value()?),
                "credential" => {
                    let name: String = map.next_value()?;
                    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                        return Err(de::Error::custom(format!("`{name}` is not a systemd credential name")));
                    }
                    SecretRef::Credential(name)
                }
                other => return Err(de::Error::unknown_field(other, &["env", "file", "credential"])),
            });
        }
        out.ok_or_else(|| de::Error::custom("empty secret reference: use { env = \"NAME\" } or { file = \"/path\" }"))
    }
}

/// Checks a service URL: https, or plain http only to a loopback host; returns it without a trailing slash.
pub(crate) fn check_url(u: &str) -> Result<String, Invalid> {
    let url = reqwest::Url::parse(u).map_err(|e| format!("is not a URL ({e})"))?;
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: it holds a credential.
        return Err(
            "holds credentials (`user:password@`): they would be logged and sent where they do not belong; remove them (the rotator authenticates with `mixpanel.secret`, Vault with `auth`)"
                .into(),
        );
    }
    let host = url.host_str().unwrap_or_default();
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(host) => {}
        "http" => {
            return Err(format!(
                "`{u}` uses plain http to a non-loopback host: secrets would cross the network in clear; use https"
            )
            .into());
        }
        s => return Err(format!("`{u}` has scheme `{s}`: use https").into()),
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{u}` must not have a query or fragment").into());
    }
    Ok(u.trim_end_matches('/').to_string())
}

/// Whether a URL host is a loopback address (plain http is allowed only there).
fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(HumanDuration::parse("30s").map(|d| d.0), Ok(Duration::seconds(30)));
        assert_eq!(HumanDuration::parse("15m").map(|d| d.0), Ok(Duration::minutes(15)));
        assert_eq!(HumanDuration::parse("24h").map(|d| d.0), Ok(Duration::hours(24)));
        assert_eq!(HumanDuration::parse("30d").map(|d| d.0), Ok(Duration::days(30)));
        assert_eq!(HumanDuration::parse("1h30m").map(|d| d.0), Ok(Duration::minutes(90)));
        for bad in ["", "30", "d", "3x", "1.5h", "-1h", "h30"] {
            assert!(HumanDuration::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schedule_is_standard_five_field_cron() {
        let s = Schedule::parse("0 4 * * MON").unwrap();
        // 2026-11-28 is a Saturday; the next Monday is 2026-11-30.
        let t = DateTime::parse_from_rfc3339("2026-11-28T05:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(s.next_after(t).unwrap().to_rfc3339(), "2026-11-30T04:00:00+00:00");
        // POSIX numbering: 1 is Monday too.
        let s1 = Schedule::parse("0 4 * * 1").unwrap();
        assert_eq!(s1.next_after(t), s.next_after(t));
        assert!(Schedule::parse("0 0 4 * * MON").is_err(), "seconds are rejected");
        assert!(Schedule::parse("0 4 * *").is_err());
        assert!(Schedule::parse("61 4 * * *").is_err());
        // Names are explained in cron terms, field by field.
        let e = Schedule::parse("0 4 * * MONDAY").unwrap_err().0;
        assert!(
            e.contains("the day-of-week field `MONDAY`") && e.contains("MON, TUE") && !e.contains("1DAY"),
            "{e}"
        );
        let e = Schedule::parse("0 4 * JANUARY MON").unwrap_err().0;
        assert!(e.contains("the month field `JANUARY`"), "{e}");
        let e = Schedule::parse("0 four * * *").unwrap_err().0;
        assert!(e.contains("the hour field `four`") && e.contains("numbers"), "{e}");
        assert!(
            Schedule::parse("0 4 * jan-mar mon-fri").is_ok(),
            "names in ranges, any case"
        );
        let e = Schedule::parse("61 4 * * *").unwrap_err().0;
        assert!(
            e.contains("the minute field `61` has 61, out of range: minutes are 0 to 59"),
            "{e}"
        );
        assert!(
            Schedule::parse("*/15 0-23 1-31/2 1-12 0-7").is_ok(),
            "the bounds themselves"
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            check_url("http://127.0.0.1:8080/api/app/").unwrap(),
            "http://127.0.0.1:8080/api/app"
        );
        assert!(check_url("http://example.com").is_err());
        assert!(check_url("https://example.com?x=1").is_err());
        assert!(check_url("ftp://example.com").is_err());
    }
}
