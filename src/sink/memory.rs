//! The `memory` sink: payloads in the process's memory, for tests and the
//! deterministic simulation (the `testing` feature; never in a release or a
//! plain build: a credential kept only in memory is lost with the process).
//!
//! It keeps the [`Sink`] contract as the real backends do: a payload is
//! stored as the JSON every sink stores (read back through
//! [`Payload::from_json`], so a corrupt value is refused the same way),
//! `publish` is a compare-and-swap on a version that only grows, and
//! `overwrite` is unconditional. Sinks naming the same `store` share it, as
//! two sinks over one directory share its files: a store outlives the
//! engines that use it (a "restarted process" in a test finds what the
//! crashed one published). A test reaches a store with [`store`] to read
//! it, write something else into it, or make it fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Deserialize;

use super::contract::{Backend, Payload, Sink, SinkError, SinkErrorKind, Version};
use crate::values::{Invalid, KeyError};

/// `[sinks.NAME] type = "memory"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySinkConfig {
    /// The store's name: sinks naming the same store share its payloads.
    pub store: String,
}

impl Backend for MemorySinkConfig {
    fn check(&self) -> Result<(), KeyError> {
        if self.store.is_empty() || self.store.chars().any(char::is_control) {
            return Err(KeyError::new("store", "must name the store (any printable name)"));
        }
        Ok(())
    }

    fn check_path(&self, path: &str) -> Result<(), Invalid> {
        if path.is_empty() || path.chars().any(char::is_control) {
            return Err(Invalid(format!("is `{path}`: use a non-empty printable key")));
        }
        Ok(())
    }

    fn location(&self, path: &str) -> String {
        format!("memory {}/{path}", self.store)
    }

    fn durable(&self) -> Result<(), Invalid> {
        Err(Invalid("a memory store lives and dies with the process".into()))
    }

    fn build(&self, name: &str) -> Result<Arc<dyn Sink>, SinkError> {
        Ok(Arc::new(MemorySink {
            name: name.to_string(),
            store_name: self.store.clone(),
            store: store(&self.store),
        }))
    }
}

/// One store: its payloads (JSON, with their version) and the fault it is
/// told to answer with.
#[derive(Debug, Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, (zeroize::Zeroizing<Vec<u8>>, u64)>,
    /// The last version given out: versions only grow, a removed and
    /// republished path never gets an old one back.
    last: u64,
    /// While set, every operation fails with this kind.
    fault: Option<SinkErrorKind>,
    /// Publishes still to be raced: just before each, someone else
    /// rewrites the payload there (same bytes, a new version).
    races: u32,
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding it left consistent data: each
        // operation changes the map in one step.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every operation fail with `kind` (`None`: answer again).
    pub fn fail_with(&self, kind: Option<SinkErrorKind>) {
        self.lock().fault = kind;
    }

    /// Makes the next `n` publishes lose a race: just before each, someone
    /// else rewrites what the path holds (the same bytes, a new version), so
    /// a compare-and-swap on the version read before fails with a conflict.
    pub fn race_next_publishes(&self, n: u32) {
        self.lock().races = n;
    }

    /// What is stored at `path`, as stored (JSON bytes).
    pub fn raw(&self, path: &str) -> Option<Vec<u8>> {
        self.lock().entries.get(path).map(|(b, _)| b.to_vec())
    }

    /// Stores `bytes` at `path` whatever was there (what someone else with
    /// write access to the store does).
    pub fn put_raw(&self, path: &str, bytes: &[u8]) {
        let mut s = self.lock();
        let v = s.next_version();
        s.entries.insert(path.to_string(), (bytes.to_vec().into(), v));
    }

    /// Removes what `path` holds (a store that lost data: a restore from an
    /// old snapshot); whether it held something.
    pub fn remove(&self, path: &str) -> bool {
        self.lock().entries.remove(path).is_some()
    }

    /// The paths stored, sorted.
    pub fn paths(&self) -> Vec<String> {
        let mut p: Vec<String> = self.lock().entries.keys().cloned().collect();
        p.sort();
        p
    }
}

impl Inner {
    fn next_version(&mut self) -> u64 {
        self.last = self.last.saturating_add(1);
        self.last
    }

    fn answer(&self, store: &str) -> Result<(), SinkError> {
        match self.fault {
            None => Ok(()),
            Some(kind) => Err(fault(kind, store)),
        }
    }
}

fn fault(kind: SinkErrorKind, store: &str) -> SinkError {
    let what = format!("memory store `{store}` is told to fail");
    match kind {
        SinkErrorKind::Conflict => SinkError::conflict(what),
        SinkErrorKind::NotFound => SinkError::not_found(what),
        SinkErrorKind::Denied => SinkError::denied(what),
        SinkErrorKind::Unavailable => SinkError::unavailable(what),
        SinkErrorKind::Corrupt => SinkError::corrupt(what),
        SinkErrorKind::Invalid => SinkError::invalid(what),
    }
}

/// The store called `name` (made empty the first time it is named).
pub fn store(name: &str) -> Arc<Store> {
    static STORES: Mutex<Option<HashMap<String, Arc<Store>>>> = Mutex::new(None);
    let mut stores = STORES.lock().unwrap_or_else(PoisonError::into_inner);
    stores
        .get_or_insert_with(HashMap::new)
        .entry(name.to_string())
        .or_default()
        .clone()
}

/// A memory sink.
#[derive(Debug)]
pub struct MemorySink {
    name: String,
    store_name: String,
    store: Arc<Store>,
}

impl MemorySink {
    fn write(&self, path: &str, payload: &Payload, expected: Option<Option<&Version>>) -> Result<Version, SinkError> {
        let json = payload.to_json()?;
        let mut s = self.store.lock();
        s.answer(&self.store_name)?;
        if let Some(expected) = expected {
            if s.races > 0 {
                s.races = s.races.saturating_sub(1);
                let v = s.next_version();
                if let Some(entry) = s.entries.get_mut(path) {
                    entry.1 = v;
                }
            }
            let stored = s.entries.get(path).map(|(_, v)| Version(v.to_string()));
            if stored.as_ref() != expected {
                return Err(SinkError::conflict(format!(
                    "version {} expected, {} stored",
                    expected.map_or("none".into(), ToString::to_string),
                    stored.map_or("none".into(), |v| v.to_string())
                )));
            }
        }
        let v = s.next_version();
        s.entries.insert(path.to_string(), (json, v));
        Ok(Version(v.to_string()))
    }
}

#[async_trait::async_trait]
impl Sink for MemorySink {
    fn describe(&self) -> String {
        format!("memory sink `{}` (store `{}`)", self.name, self.store_name)
    }

    async fn read_current(&self, path: &str) -> Result<Option<(Payload, Version)>, SinkError> {
        let s = self.store.lock();
        s.answer(&self.store_name)?;
        match s.entries.get(path) {
            None => Ok(None),
            Some((bytes, v)) => Ok(Some((Payload::from_json(bytes)?, Version(v.to_string())))),
        }
    }

    async fn publish(&self, path: &str, payload: &Payload, expected: Option<&Version>) -> Result<Version, SinkError> {
        // The crash points every backend has (tests stop the pass there).
        crate::failpoint::point("publish_before_cas", &payload.integration).await;
        let v = self.write(path, payload, Some(expected))?;
        crate::failpoint::point("publish_after_cas", &payload.integration).await;
        Ok(v)
    }

    async fn overwrite(&self, path: &str, payload: &Payload) -> Result<Version, SinkError> {
        self.write(path, payload, None)
    }

    async fn healthcheck(&self, _path: &str) -> Result<String, SinkError> {
        self.store.lock().answer(&self.store_name)?;
        Ok(format!("memory store `{}` answers", self.store_name))
    }

    async fn remove(&self, path: &str) -> Result<bool, SinkError> {
        let mut s = self.store.lock();
        s.answer(&self.store_name)?;
        Ok(s.entries.remove(path).is_some())
    }

    async fn removable(&self, _path: &str) -> Result<String, SinkError> {
        self.store.lock().answer(&self.store_name)?;
        Ok(format!("memory store `{}` answers", self.store_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(rotation: &str) -> Payload {
        crate::sink::contract::sample_payload(rotation)
    }

    fn sink(store: &str) -> Arc<dyn Sink> {
        let c = MemorySinkConfig { store: store.into() };
        c.check().unwrap();
        c.build("m").unwrap()
    }

    #[tokio::test]
    async fn publish_is_a_compare_and_swap_on_versions_that_only_grow() {
        let (a, b) = (sink("unit-cas"), sink("unit-cas"));
        assert!(a.read_current("p").await.unwrap().is_none());
        let v1 = a.publish("p", &payload("r1"), None).await.unwrap();
        // The second sink over the same store sees it, and loses a race on it.
        let (read, v) = b.read_current("p").await.unwrap().unwrap();
        assert_eq!((read.rotation_id.as_str(), &v), ("r1", &v1));
        let e = b.publish("p", &payload("r2"), None).await.unwrap_err();
        assert_eq!(e.kind, SinkErrorKind::Conflict);
        let v2 = b.publish("p", &payload("r2"), Some(&v1)).await.unwrap();
        assert_eq!(
            a.publish("p", &payload("r3"), Some(&v1)).await.unwrap_err().kind,
            SinkErrorKind::Conflict
        );
        // Removed and published again: never an old version back.
        assert!(a.remove("p").await.unwrap() && !a.remove("p").await.unwrap());
        let v3 = a.publish("p", &payload("r4"), None).await.unwrap();
        assert!(v3 != v1 && v3 != v2);
        assert_eq!(a.overwrite("p", &payload("r5")).await.unwrap(), Version("4".into()));
    }

    #[tokio::test]
    async fn a_store_fails_when_told_and_refuses_what_is_not_a_payload() {
        let s = sink("unit-faults");
        let st = store("unit-faults");
        st.fail_with(Some(SinkErrorKind::Unavailable));
        for e in [
            s.read_current("p").await.unwrap_err(),
            s.publish("p", &payload("r1"), None).await.unwrap_err(),
            s.healthcheck("p").await.unwrap_err(),
        ] {
            assert!(e.retryable(), "{e}");
        }
        st.fail_with(None);
        st.put_raw("p", br#"{"secret": "hunter2"}"#);
        let e = s.read_current("p").await.unwrap_err();
        assert_eq!(e.kind, SinkErrorKind::Corrupt);
        assert!(!e.to_string().contains("hunter2"));
        assert_eq!(st.paths(), vec!["p".to_string()]);
    }

    #[test]
    fn two_spellings_of_one_store_are_one_place() {
        let a = MemorySinkConfig { store: "x".into() };
        assert_eq!(a.location("p"), a.clone().location("p"));
        assert!(a.check_path("").is_err() && a.check_path("a\nb").is_err());
        assert!(MemorySinkConfig { store: String::new() }.check().is_err());
    }
}
