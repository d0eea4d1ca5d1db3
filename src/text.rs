//! Formatting of times and durations for people and for the policy: one
//! place, so every message writes them the same way. A leaf: it imports
//! nothing of the crate.

use chrono::{DateTime, Duration, SecondsFormat, Utc};

/// A time as RFC 3339 in whole seconds, `2026-11-28T04:00:00Z`.
pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Formats a duration the way the policy writes it (`30d`, `1h30m`, `0s`).
pub(crate) fn format_duration(d: Duration) -> String {
    let secs = d.num_seconds();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    if secs < 0 {
        out.push('-');
    }
    let mut rest = secs.unsigned_abs();
    for (unit, len) in [("d", 86_400u64), ("h", 3_600), ("m", 60), ("s", 1)] {
        let n = rest.checked_div(len).unwrap_or(0);
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            rest = rest.checked_rem(len).unwrap_or(0);
        }
    }
    out
}

/// "in 3d4h" / "2h ago", for people (to the minute beyond an hour).
pub(crate) fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let d = t.signed_duration_since(now);
    let rounded = if d.num_seconds().unsigned_abs() > 3600 {
        Duration::minutes(d.num_minutes())
    } else {
        Duration::seconds(d.num_seconds())
    };
    if d >= Duration::zero() {
        format!("in {}", format_duration(rounded))
    } else {
        format!("{} ago", format_duration(rounded.abs()))
    }
}

/// What a server said, fit to print: its first non-empty line, with every
/// credential-looking run masked, cut to 200 characters. A server's error
/// text may echo a token, so it is never shown whole.
pub(crate) fn server_text(s: &str) -> String {
    let line = s.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    let masked = mask_credentials(line);
    match masked.char_indices().nth(200) {
        None => masked,
        Some((end, _)) => format!("{}…", masked.get(..end).unwrap_or_default()),
    }
}

/// Masks runs that look like credentials: 16 or more characters of the
/// alphabets tokens use (letters, digits, `-_+/=.~`) that mix two of lower
/// case, upper case (past the first character) and digits, or 32 or more of
/// them whatever they hold.
pub(crate) fn mask_credentials(s: &str) -> String {
    let token_char = |c: char| c.is_ascii_alphanumeric() || "-_+/=.~".contains(c);
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let digit = run.chars().any(|c| c.is_ascii_digit());
        let lower = run.chars().any(|c| c.is_ascii_lowercase());
        let upper = run.chars().skip(1).any(|c| c.is_ascii_uppercase());
        let classes = [digit, lower, upper].into_iter().filter(|x| *x).count();
        let n = run.chars().count();
        if (n >= 16 && classes >= 2) || n >= 32 {
            out.push_str("[masked]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in s.chars() {
        if token_char(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(if c.is_control() { ' ' } else { c });
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Every error of `e`'s `source()` chain, `: `-separated.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_text_is_one_line_cut_short_with_credentials_masked() {
        let token = "q8ZrT2vX9LmP4wKd7NfY3bHc";
        let said = format!("\n  invalid secret {token} for user rotator\nsecond line {token}");
        let shown = server_text(&said);
        assert_eq!(shown, "invalid secret [masked] for user rotator");
        assert!(!server_text(&"x".repeat(31)).contains("masked"));
        assert_eq!(server_text(&"y".repeat(32)), "[masked]");
        // A token of letters alone, in both cases (the simulator issues such ones).
        assert_eq!(server_text("from lUeBRlPMWDwgtPHuxafDVnYIkfrnzygM"), "from [masked]");
        assert_eq!(server_text("Internationalization"), "Internationalization");
        assert_eq!(
            server_text("Service account 1003 does not exist"),
            "Service account 1003 does not exist"
        );
        assert_eq!(server_text(&"word ".repeat(100)).chars().count(), 201);
    }

    #[test]
    fn durations_and_relative_times() {
        assert_eq!(format_duration(Duration::minutes(90)), "1h30m");
        assert_eq!(format_duration(Duration::days(30)), "30d");
        assert_eq!(format_duration(Duration::zero()), "0s");
        let now = DateTime::parse_from_rfc3339("2026-11-28T04:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(relative(now + Duration::seconds(90), now), "in 1m30s");
        assert_eq!(relative(now - Duration::hours(2), now), "2h ago");
        assert_eq!(rfc3339(now), "2026-11-28T04:00:00Z");
    }
}
