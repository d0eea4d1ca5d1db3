//! Lineage usernames: `{namespace}-{integration}-{yyyymmddThhmmssZ}-{4 hex}`.
//! Only accounts whose username parses as this integration's lineage (or the
//! one adopted account) are ever deleted.

use chrono::{DateTime, NaiveDateTime, Utc};
use rand::Rng as _;

use crate::mixpanel::types::strip_mixpanel_suffix;

const TS_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// The lineage of one integration.
#[derive(Debug, Clone)]
pub struct Lineage {
    prefix: String,
}

impl Lineage {
    /// The lineage of `integration` under `namespace`.
    pub fn new(namespace: &str, integration: &str) -> Self {
        Self {
            prefix: format!("{namespace}-{integration}-"),
        }
    }

    /// A fresh username created at `now`.
    pub fn new_username(&self, now: DateTime<Utc>) -> String {
        format!(
            "{}{}-{:04x}",
            self.prefix,
            now.format(TS_FORMAT),
            crate::random::with(|r| r.random::<u16>())
        )
    }

    /// When the account was created, if `username` (with or without
    /// Mixpanel's suffix) belongs to this lineage. The match is exact: the
    /// rest after the prefix must be exactly a timestamp and 4 hex digits, so
    /// integration `etl` never claims `etl-x`'s accounts.
    pub fn parse(&self, username: &str) -> Option<DateTime<Utc>> {
        let base = strip_mixpanel_suffix(username);
        let rest = base.strip_prefix(&self.prefix)?;
        let (ts, hex) = rest.split_once('-')?;
        if ts.len() != 16 || hex.len() != 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return None;
        }
        NaiveDateTime::parse_from_str(ts, TS_FORMAT).ok().map(|n| n.and_utc())
    }
}

/// The integration whose lineage `username` has the shape of, under
/// `namespace` (the part between `{namespace}-` and `-{timestamp}-{hex}`);
/// [`Lineage::parse`] still decides whether it is one.
pub(crate) fn integration_of<'a>(namespace: &str, username: &'a str) -> Option<&'a str> {
    let base = strip_mixpanel_suffix(username);
    let rest = base.strip_prefix(namespace)?.strip_prefix('-')?;
    // `-` + 16 timestamp characters + `-` + 4 hex digits.
    let cut = rest.len().checked_sub(22)?;
    rest.get(cut..)?.starts_with('-').then_some(())?;
    rest.get(..cut).filter(|i| !i.is_empty())
}

/// A new rotation id: a random UUID (v4) string, 36 characters, so it also
/// fits AWS's `ClientRequestToken` (32 to 64 characters).
pub fn new_rotation_id() -> String {
    let mut b: [u8; 16] = crate::random::with(|r| r.random());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exact_match() {
        let now = DateTime::parse_from_rfc3339("2026-11-28T04:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let l = Lineage::new("mpr", "etl");
        let u = l.new_username(now);
        assert!(u.starts_with("mpr-etl-20261128T040000Z-"), "{u}");
        assert_eq!(l.parse(&u), Some(now));
        assert_eq!(l.parse(&format!("{u}.95a0b8.mp-service-account")), Some(now));
        // Another integration's lineage, another namespace, or a lookalike: not ours.
        assert_eq!(l.parse("mpr-etl-x-20261128T040000Z-7f3a"), None);
        assert_eq!(
            Lineage::new("mpr", "etl-x").parse("mpr-etl-x-20261128T040000Z-7f3a"),
            Some(now)
        );
        assert_eq!(l.parse("mpr2-etl-20261128T040000Z-7f3a"), None);
        assert_eq!(l.parse("mpr-etl-20261128T040000Z-7f3a-extra"), None);
        assert_eq!(l.parse("mpr-etl-20261128T040000Z-7F3A"), None);
        assert_eq!(l.parse("etl-legacy.abc.mp-service-account"), None);
    }

    #[test]
    fn the_integration_is_found_from_the_username() {
        assert_eq!(
            integration_of("mpr", "mpr-etl-20261128T040000Z-7f3a.abc.mp-service-account"),
            Some("etl")
        );
        assert_eq!(integration_of("mpr", "mpr-etl-x-20261128T040000Z-7f3a"), Some("etl-x"));
        assert_eq!(integration_of("mpr", "mpr2-etl-20261128T040000Z-7f3a"), None);
        assert_eq!(integration_of("mpr", "mpr-20261128T040000Z-7f3a"), None);
        assert_eq!(integration_of("mpr", "etl-legacy.abc.mp-service-account"), None);
        assert_eq!(integration_of("mpr", "mpr-é-20261128T040000Z-7f3a"), Some("é"));
    }

    #[test]
    fn rotation_ids_are_uuids() {
        let a = new_rotation_id();
        assert_eq!(a.len(), 36);
        assert_ne!(a, new_rotation_id());
    }
}
