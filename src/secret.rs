//! The one type that holds secret material.
//!
//! [`Secret`] prints `**REDACTED**` in both `Debug` and `Display`, is zeroized on
//! drop, and only hands its contents out through [`Secret::expose`], so a
//! secret reaching a log line, an error message or a snapshot takes a
//! deliberate, greppable call.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// A secret string (a service-account token, a Vault token, ...).
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The secret value. Every call site is a place where the secret leaves
    /// this type: keep them few (HTTP auth headers, the sink payload).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**REDACTED**")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**REDACTED**")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        // Length leaks nothing useful here; the comparison is only used in tests
        // and to detect "same credential" in the simulator.
        let (a, b) = (self.expose().as_bytes(), other.expose().as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for Secret {}

/// Serialises the secret in clear: only the sink payload uses this, and it
/// writes into a [`zeroize::Zeroizing`] buffer.
pub(crate) fn serialize_exposed<S: serde::Serializer>(s: &Secret, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose())
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s = zeroize::Zeroizing::new(String::deserialize(de)?);
        Ok(Secret::new(s.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "**REDACTED**");
        assert_eq!(format!("{s}"), "**REDACTED**");
        assert_eq!(format!("{:?}", Some(&s)), "Some(**REDACTED**)");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn equality_compares_contents() {
        assert_eq!(Secret::new("a"), Secret::new("a"));
        assert_ne!(Secret::new("a"), Secret::new("b"));
        assert_ne!(Secret::new("a"), Secret::new("ab"));
    }
}
