//! Lenient decoding of what Mixpanel really sends (`shared/mixpanel-api.md`,
//! "What real responses look like"): timestamps with or without an offset,
//! `T` or a space, with or without fractions; ids as numbers or numeric
//! strings; `null` anywhere; list rows that do not decode are skipped with a
//! warning instead of failing the whole list. Decode leniently; fail only on
//! what the rotator needs.

use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Mutex;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A timestamp as Mixpanel writes it: RFC 3339 with an offset, or without
/// one (read as UTC), with `T` or a space, with or without fractions.
pub(crate) fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    // The form Mixpanel sends most (no offset), without chrono's format
    // interpreter: a list of 10,000 accounts has 30,000 timestamps.
    if let Some(t) = naive_fast(s) {
        return Some(t.and_utc());
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // A space instead of `T`, with an offset.
    if let Ok(t) = DateTime::parse_from_rfc3339(&s.replacen(' ', "T", 1)) {
        return Some(t.with_timezone(&Utc));
    }
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .map(|n| n.and_utc())
}

/// `YYYY-MM-DD[T ]hh:mm:ss[.fraction]` exactly, or `None` (then the
/// general forms are tried).
fn naive_fast(s: &str) -> Option<NaiveDateTime> {
    let b = s.as_bytes();
    let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"T ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        let part = s.get(from..to)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let date = chrono::NaiveDate::from_ymd_opt(i32::try_from(num(0, 4)?).ok()?, num(5, 7)?, num(8, 10)?)?;
    let nanos = match s.get(19..)? {
        "" => 0,
        f => {
            let digits = f.strip_prefix('.')?;
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            // Nanoseconds: the first nine digits, padded.
            let nine: String = digits.chars().chain(std::iter::repeat('0')).take(9).collect();
            nine.parse().ok()?
        }
    };
    let time = chrono::NaiveTime::from_hms_nano_opt(num(11, 13)?, num(14, 16)?, num(17, 19)?, nanos)?;
    Some(NaiveDateTime::new(date, time))
}

/// What an optional timestamp field held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stamp {
    /// Absent or `null`.
    None,
    At(DateTime<Utc>),
    /// Present, but not a timestamp this client can read.
    Unreadable,
}

impl Stamp {
    /// Reads the value of field `field` (for the warning).
    pub(crate) fn of(field: &'static str, v: Option<&Value>) -> Self {
        match v {
            None | Some(Value::Null) => Stamp::None,
            Some(Value::String(s)) => match parse_timestamp(s) {
                Some(t) => Stamp::At(t),
                None => {
                    warn_once(field, s);
                    Stamp::Unreadable
                }
            },
            Some(other) => {
                warn_once(field, &other.to_string());
                Stamp::Unreadable
            }
        }
    }

    /// The time, if there is one.
    pub(crate) fn at(&self) -> Option<DateTime<Utc>> {
        match self {
            Stamp::At(t) => Some(*t),
            Stamp::None | Stamp::Unreadable => None,
        }
    }
}

/// One warning per field and process: one odd row, listed at every pass,
/// must not flood the log.
fn warn_once(field: &'static str, value: &str) {
    static WARNED: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let first = WARNED.lock().unwrap_or_else(|e| e.into_inner()).insert(field);
    if first {
        tracing::warn!(
            field,
            value = %crate::text::server_text(value),
            "Mixpanel sent a `{field}` that is not a timestamp this client reads; it is taken as unknown (further ones are not logged)."
        );
    }
}

/// An id: a JSON number, or a string of digits.
pub(crate) fn id_of(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A string, if the value is one.
pub(crate) fn string_of(v: Option<&Value>) -> Option<String> {
    v?.as_str().map(str::to_string)
}

/// `#[serde(deserialize_with = "opt_id")]`: an optional id (`null`, absent or unreadable: `None`).
pub(crate) fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(id_of(Some(&v)))
}

/// As a string, or `None` for `null` or any other type.
pub(crate) fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(string_of(Some(&v)))
}

/// A list whose rows are decoded one by one: a row that does not decode is
/// skipped with a warning, and the others are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct List<T>(pub Vec<T>);

impl<'de, T: TryFrom<Value, Error = String>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: TryFrom<Value, Error = String>> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
                let mut out = Vec::new();
                let mut skipped = 0usize;
                let mut first = None;
                while let Some(row) = seq.next_element::<Value>()? {
                    let id = row.get("id").and_then(|v| id_of(Some(v)));
                    match T::try_from(row) {
                        Ok(t) => out.push(t),
                        Err(e) => {
                            skipped = skipped.saturating_add(1);
                            first.get_or_insert((id, e));
                        }
                    }
                }
                if let Some((id, error)) = first {
                    tracing::warn!(
                        skipped,
                        first_id = ?id,
                        first_error = %crate::text::server_text(&error),
                        "Skipped {skipped} row(s) of a Mixpanel list that could not be read; the others are used."
                    );
                }
                Ok(List(out))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_timestamp_form_seen_in_the_wild_parses_as_utc() {
        let want = DateTime::parse_from_rfc3339("2026-07-03T09:21:27Z")
            .unwrap()
            .with_timezone(&Utc);
        for s in [
            "2026-07-03T09:21:27Z",
            "2026-07-03T09:21:27+00:00",
            "2026-07-03T11:21:27+02:00",
            "2026-07-03T09:21:27",
            "2026-07-03 09:21:27",
            "2026-07-03 09:21:27Z",
            " 2026-07-03T09:21:27 ",
        ] {
            assert_eq!(parse_timestamp(s), Some(want), "{s}");
        }
        let frac = parse_timestamp("2026-07-03 09:21:27.250").unwrap();
        assert_eq!(frac.timestamp_subsec_millis(), 250);
        assert_eq!(
            parse_timestamp("2026-07-03T09:21:27.5+00:00")
                .unwrap()
                .timestamp_subsec_millis(),
            500
        );
        assert_eq!(
            parse_timestamp("2026-07-03T09:21:27.1234567891")
                .unwrap()
                .timestamp_subsec_nanos(),
            123_456_789
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-03 09:21:27",
            "1751534487",
            "2026-07-03T09:21:27.",
            "2026-07-03T09:21:27.x",
            "2026-07-03T09:21:60.5x",
            "2026-07-03T24:00:00",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        /// The fast path reads what chrono's formats read, or leaves it to them.
        #[test]
        fn the_fast_path_agrees_with_chrono(
            y in 0u32..10000, mo in 0u32..14, d in 0u32..33, h in 0u32..26, mi in 0u32..61, se in 0u32..62,
            sep in proptest::sample::select(vec!['T', ' ']),
            frac in proptest::option::of("[0-9]{1,12}"),
        ) {
            let s = format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{se:02}{}", frac.map(|f| format!(".{f}")).unwrap_or_default());
            let slow = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(&s, f).ok());
            if let Some(fast) = naive_fast(&s) {
                proptest::prop_assert_eq!(Some(fast), slow, "{}", s);
            } else {
                // Only a leap second (60) may be read by chrono and not here; the general path still reads it.
                proptest::prop_assert!(slow.is_none() || se == 60, "{}", s);
            }
        }
    }

    #[test]
    fn ids_are_numbers_or_numeric_strings() {
        assert_eq!(id_of(Some(&serde_json::json!(7))), Some(7));
        assert_eq!(id_of(Some(&serde_json::json!("7"))), Some(7));
        assert_eq!(id_of(Some(&serde_json::json!("x7"))), None);
        assert_eq!(id_of(Some(&serde_json::json!(-7))), None);
        assert_eq!(id_of(Some(&Value::Null)), None);
    }

    #[test]
    fn a_bad_row_is_skipped_not_fatal() {
        #[derive(Debug, PartialEq)]
        struct Row {
            id: u64,
        }
        impl TryFrom<Value> for Row {
            type Error = String;
            fn try_from(v: Value) -> Result<Self, String> {
                Ok(Row {
                    id: v.get("id").and_then(Value::as_u64).ok_or("no id")?,
                })
            }
        }
        let l: List<Row> = serde_json::from_str(r#"[{"id":1},{"id":"two"},null,{"id":3}]"#).unwrap();
        assert_eq!(l.0, vec![Row { id: 1 }, Row { id: 3 }]);
    }
}
