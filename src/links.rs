//! Assistant links: the registry the relay reads on every message, and its
//! persistence in `state_dir/links.json`.
//!
//! The registry is an immutable [`Snapshot`] behind an `ArcSwap`: readers
//! (routing in the relay, the revocation check in the cloud writer, command
//! checks) never lock, and a change is a new snapshot swapped in atomically,
//! so a revocation is seen by the very next message anybody looks at.
//! Writers (the cloud reader on `revoke`, the relay on `link`, the control
//! socket) serialise through a small mutex; they are rare.
//!
//! Revoked ids are kept forever as tombstones: a revoked id can never be
//! made active again (protocol section 4, `link`).
//!
//! Persistence is by a [`Store`], used by the one task that owns the files
//! (the relay's store task) or, with no daemon running, by the command line
//! under the state-dir lock ([`StateLock`]). A change is made durable in
//! `links.slots` (one in-place write and one data flush, see
//! [`crate::slots`]), then mirrored to `links.json` (temp file, fsync,
//! rename) when nothing else waits: the mirror is what people and older
//! versions read. Each write carries a sequence number, and [`load_file`]
//! takes the newer of the two, so an acknowledged change is never lost to
//! a mirror that a power loss cut short.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::slots::{SlotError, Slots};
use crate::topic::FilterSet;

/// File name of the registry inside `state_dir`.
pub const LINKS_FILE: &str = "links.json";
/// File name of the registry's slot file inside `state_dir`.
pub const SLOTS_FILE: &str = "links.slots";
/// File name of the lock a running daemon holds inside `state_dir`.
pub const LOCK_FILE: &str = "hearthlink.lock";

/// What kind of assistant a link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Alexa,
    Google,
    Homekit,
    Other,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Alexa => "alexa",
            Kind::Google => "google",
            Kind::Homekit => "homekit",
            Kind::Other => "other",
        }
    }
}

/// Who revoked a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Cloud,
    Local,
}

/// An active link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub id: Arc<str>,
    pub kind: Kind,
    pub expose: FilterSet,
    pub commands: FilterSet,
}

/// A tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    pub at_ms: i64,
    pub origin: Origin,
    /// False for a local revocation the cloud has not been sent yet.
    pub cloud_told: bool,
}

/// One immutable view of the registry.
#[derive(Debug, Default)]
pub struct Snapshot {
    active: Vec<Arc<Link>>,
    by_id: HashMap<Arc<str>, Arc<Link>>,
    revoked: HashMap<Arc<str>, Revoked>,
}

impl Snapshot {
    /// Is `id` an active (linked, not revoked) link?
    pub fn is_active(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Link>> {
        self.by_id.get(id)
    }

    /// The tombstone of `id`, when revoked.
    pub fn revoked_entry(&self, id: &str) -> Option<&Revoked> {
        self.revoked.get(id)
    }

    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.contains_key(id)
    }

    /// Active links, ordered by id.
    pub fn active(&self) -> &[Arc<Link>] {
        &self.active
    }

    pub fn revoked(&self) -> impl Iterator<Item = &Revoked> {
        self.revoked.values()
    }

    /// How many links were ever revoked (tombstones are kept forever, so
    /// this only grows).
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }

    /// Active links whose `expose` filters match `topic`.
    pub fn routes<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a Arc<Link>> + 'a {
        self.active.iter().filter(move |l| l.expose.matches(topic))
    }

    fn rebuild(links: Vec<Arc<Link>>, revoked: HashMap<Arc<str>, Revoked>) -> Self {
        let mut active = links;
        active.sort_by(|a, b| a.id.cmp(&b.id));
        let by_id = active.iter().map(|l| (l.id.clone(), l.clone())).collect();
        Snapshot {
            active,
            by_id,
            revoked,
        }
    }

    /// The persisted form of this snapshot.
    pub fn to_file(&self) -> LinksFile {
        let mut revoked: Vec<Revoked> = self.revoked.values().cloned().collect();
        revoked.sort_by(|a, b| a.id.cmp(&b.id));
        LinksFile {
            version: 1,
            seq: 0, // set by the store
            links: self
                .active
                .iter()
                .map(|l| StoredLink {
                    id: l.id.to_string(),
                    kind: l.kind,
                    expose: l.expose.as_slice().to_vec(),
                    commands: l.commands.as_slice().to_vec(),
                })
                .collect(),
            revoked,
        }
    }
}

/// Errors of the link registry.
#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    #[error("link {0:?} was revoked and can never be made active again")]
    Revoked(String),
    #[error("link {id:?}: invalid topic filter {filter:?}: {source}")]
    Filter {
        id: String,
        filter: String,
        source: crate::topic::TopicError,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid links file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state dir {path} is locked by a running hearthlink (pid file lock held)")]
    Locked { path: PathBuf },
    /// Reading `links.slots` (its errors name the file).
    #[error(transparent)]
    Slots(#[from] SlotError),
}

/// The registry shared by the relay, the cloud task and the control socket.
#[derive(Debug, Default)]
pub struct Registry {
    current: ArcSwap<Snapshot>,
    write: Mutex<()>,
}

impl Registry {
    /// Builds a registry from a persisted file.
    pub fn from_file(file: LinksFile) -> Result<Self, LinksError> {
        let mut revoked = HashMap::new();
        for r in file.revoked {
            revoked.insert(Arc::<str>::from(r.id.as_str()), r);
        }
        let mut links = Vec::new();
        for l in file.links {
            if revoked.contains_key(l.id.as_str()) {
                continue; // a tombstone always wins
            }
            links.push(Arc::new(to_link(&l.id, l.kind, l.expose, l.commands)?));
        }
        Ok(Registry {
            current: ArcSwap::from_pointee(Snapshot::rebuild(links, revoked)),
            write: Mutex::new(()),
        })
    }

    /// The current snapshot; cheap, lock-free.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    fn update(&self, f: impl FnOnce(&Snapshot) -> Option<Snapshot>) -> bool {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.current.load();
        match f(&cur) {
            Some(next) => {
                self.current.store(Arc::new(next));
                true
            }
            None => false,
        }
    }

    /// Creates or updates an active link. Refused for a revoked id.
    pub fn upsert(
        &self,
        id: &str,
        kind: Kind,
        expose: Vec<String>,
        commands: Vec<String>,
    ) -> Result<(), LinksError> {
        let link = Arc::new(to_link(id, kind, expose, commands)?);
        let mut refused = false;
        self.update(|cur| {
            if cur.is_revoked(id) {
                refused = true;
                return None;
            }
            let mut links: Vec<Arc<Link>> = cur
                .active
                .iter()
                .filter(|l| &*l.id != id)
                .cloned()
                .collect();
            links.push(link);
            Some(Snapshot::rebuild(links, cur.revoked.clone()))
        });
        if refused {
            return Err(LinksError::Revoked(id.to_owned()));
        }
        Ok(())
    }

    /// Revokes `id` in memory, at once. Returns false when it already was.
    pub fn revoke(&self, id: &str, origin: Origin, at_ms: i64) -> bool {
        self.update(|cur| {
            if cur.is_revoked(id) {
                return None;
            }
            let kind = cur.get(id).map(|l| l.kind);
            let links = cur
                .active
                .iter()
                .filter(|l| &*l.id != id)
                .cloned()
                .collect();
            let mut revoked = cur.revoked.clone();
            revoked.insert(
                Arc::from(id),
                Revoked {
                    id: id.to_owned(),
                    kind,
                    at_ms,
                    origin,
                    cloud_told: origin == Origin::Cloud,
                },
            );
            Some(Snapshot::rebuild(links, revoked))
        })
    }

    /// Records that the cloud has been sent the `revoked` frame for `id`.
    pub fn mark_told(&self, id: &str) -> bool {
        self.update(|cur| {
            let r = cur.revoked.get(id)?;
            if r.cloud_told {
                return None;
            }
            let mut revoked = cur.revoked.clone();
            if let Some(r) = revoked.get_mut(id) {
                r.cloud_told = true;
            }
            Some(Snapshot::rebuild(cur.active.clone(), revoked))
        })
    }
}

fn to_link(
    id: &str,
    kind: Kind,
    expose: Vec<String>,
    commands: Vec<String>,
) -> Result<Link, LinksError> {
    let set = |filters: Vec<String>| {
        FilterSet::new(filters).map_err(|(filter, source)| LinksError::Filter {
            id: id.to_owned(),
            filter,
            source,
        })
    };
    Ok(Link {
        id: Arc::from(id),
        kind,
        expose: set(expose)?,
        commands: set(commands)?,
    })
}

/// A link as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredLink {
    pub id: String,
    pub kind: Kind,
    #[serde(default)]
    pub expose: Vec<String>,
    #[serde(default)]
    pub commands: Vec<String>,
}

/// The content of `links.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinksFile {
    pub version: u32,
    /// Number of the write that made it (0 in files of older versions):
    /// the newer of `links.json` and `links.slots` is the state.
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub links: Vec<StoredLink>,
    #[serde(default)]
    pub revoked: Vec<Revoked>,
}

/// Reads the registry's state: the newer of `links.json` and the newest
/// whole record of `links.slots`. Missing files are an empty registry.
pub fn load_file(state_dir: &Path) -> Result<LinksFile, LinksError> {
    Ok(load(state_dir)?.file)
}

/// What [`load`] found.
struct Loaded {
    file: LinksFile,
    /// The slot file ready for the next write (`None` when missing: the
    /// next write makes one).
    slots: Option<Slots>,
    /// The slot record's text when it is newer than `links.json`.
    unmirrored: Option<Vec<u8>>,
}

fn load(state_dir: &Path) -> Result<Loaded, LinksError> {
    let path = state_dir.join(LINKS_FILE);
    let json = match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| LinksError::Parse { path, source })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => LinksFile {
            version: 1,
            ..LinksFile::default()
        },
        Err(source) => return Err(LinksError::Read { path, source }),
    };
    let path = state_dir.join(SLOTS_FILE);
    let (slots, record) = match Slots::open(&path) {
        Ok(Some((slots, record))) => (Some(slots), record),
        Ok(None) => (None, None),
        // It may hold the newest state (an acknowledged revocation):
        // starting from `links.json` alone could bring a revoked link back.
        Err(e) => return Err(e.into()),
    };
    match record {
        Some(r) if r.seq > json.seq => {
            let file = serde_json::from_slice(&r.body)
                .map_err(|source| LinksError::Parse { path, source })?;
            Ok(Loaded {
                file,
                slots,
                unmirrored: Some(r.body),
            })
        }
        _ => Ok(Loaded {
            file: json,
            slots,
            unmirrored: None,
        }),
    }
}

/// Writes the registry's state durably (see the module doc). One owner at
/// a time: the daemon's store task, or the command line under the lock.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Number of the last write (or of the state loaded).
    seq: u64,
    slots: Option<Slots>,
    /// The last state made durable in a slot only, for `links.json`.
    unmirrored: Option<Vec<u8>>,
}

/// Where a [`Store::save`] made the state durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    /// In `links.slots`; `links.json` waits for [`Store::mirror`].
    Slot,
    /// In `links.json` (the slot file was missing, damaged or too small).
    Json,
}

impl Store {
    /// Opens `state_dir`'s state: the store and the registry's content.
    /// When the slot file is the newer, `links.json` is due a copy.
    pub fn open(state_dir: &Path) -> Result<(Store, LinksFile), LinksError> {
        let Loaded {
            file,
            slots,
            unmirrored,
        } = load(state_dir)?;
        let seq = file.seq.max(slots.as_ref().map_or(0, Slots::newest));
        let store = Store {
            dir: state_dir.to_owned(),
            seq,
            slots,
            unmirrored,
        };
        Ok((store, file))
    }

    /// Makes `file` durable as the next write. When the slot write fails
    /// (missing, damaged or too small file, an I/O error), `links.json` is
    /// written instead and a new slot file made for the next time.
    pub fn save(&mut self, mut file: LinksFile) -> Result<Durable, LinksError> {
        self.seq += 1;
        file.seq = self.seq;
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| LinksError::Write {
            path: self.dir.join(LINKS_FILE),
            source: std::io::Error::other(e),
        })?;
        if let Some(slots) = &mut self.slots {
            match slots.write(self.seq, &bytes) {
                Ok(()) => {
                    self.unmirrored = Some(bytes);
                    return Ok(Durable::Slot);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "slot write failed; writing links.json instead");
                    self.slots = None;
                }
            }
        }
        self.write_json(&bytes)?;
        self.unmirrored = None;
        // `links.json` now holds the newest state: a new, empty slot file
        // loses nothing.
        let path = self.dir.join(SLOTS_FILE);
        match Slots::create(&path, 2 * bytes.len(), 0o600) {
            Ok(slots) => self.slots = Some(slots),
            Err(e) => {
                tracing::warn!(error = %e, "could not make the slot file; links.json is written each time")
            }
        }
        Ok(Durable::Json)
    }

    /// True when the newest state is not in `links.json` yet.
    pub fn needs_mirror(&self) -> bool {
        self.unmirrored.is_some()
    }

    /// Copies the newest state to `links.json` (temp file, fsync, rename).
    pub fn mirror(&mut self) -> Result<(), LinksError> {
        let Some(bytes) = &self.unmirrored else {
            return Ok(());
        };
        self.write_json(bytes)?;
        self.unmirrored = None;
        Ok(())
    }

    /// `links.json`, durably (temp file, fsync, rename, directory fsync).
    fn write_json(&self, bytes: &[u8]) -> Result<(), LinksError> {
        let path = self.dir.join(LINKS_FILE);
        crate::durable::write_atomic(&path, bytes, 0o600)
            .map_err(|source| LinksError::Write { path, source })
    }
}

/// An exclusive lock on `state_dir`, held by a running daemon for its whole
/// life and by `links revoke` while it edits the file with no daemon running.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the lock without waiting.
    pub fn try_acquire(state_dir: &Path) -> Result<Self, LinksError> {
        let path = state_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LinksError::Write {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(LinksError::Locked {
                path: state_dir.to_path_buf(),
            }),
            Err(std::fs::TryLockError::Error(source)) => Err(LinksError::Write { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registry {
        Registry::from_file(LinksFile::default()).expect("empty registry")
    }

    #[test]
    fn revoked_id_never_comes_back() {
        let r = reg();
        r.upsert("a", Kind::Alexa, vec!["x/#".into()], vec![])
            .expect("link");
        assert!(r.load().is_active("a"));
        assert!(r.revoke("a", Origin::Cloud, 1));
        assert!(!r.load().is_active("a"));
        assert!(!r.revoke("a", Origin::Cloud, 2), "second revoke is a no-op");
        assert!(matches!(
            r.upsert("a", Kind::Alexa, vec![], vec![]),
            Err(LinksError::Revoked(_))
        ));
    }

    #[test]
    fn revoke_unknown_is_recorded() {
        let r = reg();
        assert!(r.revoke("ghost", Origin::Local, 5));
        let snap = r.load();
        let t = snap.revoked().next().expect("tombstone");
        assert_eq!(t.id, "ghost");
        assert!(!t.cloud_told);
        drop(snap);
        assert!(r.mark_told("ghost"));
        assert!(r.load().revoked().all(|t| t.cloud_told));
    }

    #[test]
    fn routing_by_expose() {
        let r = reg();
        r.upsert("a", Kind::Alexa, vec!["s/#".into()], vec![])
            .expect("a");
        r.upsert("b", Kind::Google, vec!["t/+".into()], vec![])
            .expect("b");
        let snap = r.load();
        let ids: Vec<&str> = snap.routes("s/1").map(|l| &*l.id).collect();
        assert_eq!(ids, ["a"]);
        assert_eq!(snap.routes("t/1").count(), 1);
        assert_eq!(snap.routes("u").count(), 0);
    }

    #[test]
    fn persist_roundtrip_keeps_tombstones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = reg();
        r.upsert("a", Kind::Homekit, vec!["s/#".into()], vec!["c/#".into()])
            .expect("a");
        r.upsert("b", Kind::Other, vec![], vec![]).expect("b");
        r.revoke("b", Origin::Cloud, 9);
        let (mut store, _) = Store::open(dir.path()).expect("open");
        // Through links.json (the first write), then through a slot.
        for way in [Durable::Json, Durable::Slot] {
            assert_eq!(store.save(r.load().to_file()).expect("save"), way);
            let back = Registry::from_file(load_file(dir.path()).expect("load")).expect("registry");
            assert!(back.load().is_active("a"));
            assert!(back.load().is_revoked("b"));
            assert_eq!(back.load().to_file(), r.load().to_file());
        }
    }

    #[test]
    fn invalid_filter_is_refused() {
        let r = reg();
        assert!(matches!(
            r.upsert("a", Kind::Alexa, vec!["a/#/b".into()], vec![]),
            Err(LinksError::Filter { .. })
        ));
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = StateLock::try_acquire(dir.path()).expect("first lock");
        assert!(matches!(
            StateLock::try_acquire(dir.path()),
            Err(LinksError::Locked { .. })
        ));
        drop(first);
        StateLock::try_acquire(dir.path()).expect("lock after release");
    }

    /// The registry's state as a reader sees it: ids of active and revoked.
    fn ids(file: &LinksFile) -> (Vec<&str>, Vec<&str>) {
        (
            file.links.iter().map(|l| l.id.as_str()).collect(),
            file.revoked.iter().map(|r| r.id.as_str()).collect(),
        )
    }

    fn json_on_disk(dir: &Path) -> LinksFile {
        serde_json::from_slice(&std::fs::read(dir.join(LINKS_FILE)).expect("links.json"))
            .expect("links.json parses")
    }

    #[test]
    fn store_acks_from_a_slot_and_the_newer_copy_wins_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, file) = Store::open(dir.path()).expect("open empty");
        assert_eq!(file.seq, 0);
        let r = Registry::from_file(file).expect("registry");
        r.upsert("a", Kind::Alexa, vec!["x/#".into()], vec![])
            .expect("link a");
        // No slot file yet: the first write is links.json, and makes one.
        assert!(matches!(store.save(r.load().to_file()), Ok(Durable::Json)));
        assert!(dir.path().join(SLOTS_FILE).exists());
        assert!(!store.needs_mirror());
        // Next: one slot write; links.json still shows the link active.
        r.revoke("a", Origin::Cloud, 7);
        assert!(matches!(store.save(r.load().to_file()), Ok(Durable::Slot)));
        assert!(store.needs_mirror());
        assert_eq!(ids(&json_on_disk(dir.path())), (vec!["a"], vec![]));
        // A reader (a restart after a power loss here) takes the slot, and
        // a store opened then owes links.json the copy.
        let loaded = load_file(dir.path()).expect("load");
        assert_eq!(loaded.seq, 2);
        assert_eq!(ids(&loaded), (vec![], vec!["a"]));
        let (mut restarted, _) = Store::open(dir.path()).expect("reopen");
        assert!(restarted.needs_mirror());
        restarted.mirror().expect("mirror after a restart");
        assert_eq!(json_on_disk(dir.path()).seq, 2);
        // The copy catches up, with the same number.
        store.mirror().expect("mirror");
        assert!(!store.needs_mirror());
        let json = json_on_disk(dir.path());
        assert_eq!((json.seq, ids(&json)), (2, (vec![], vec!["a"])));
        // Reopened, numbering goes on from the newest.
        let (mut again, file) = Store::open(dir.path()).expect("reopen");
        assert_eq!(file.seq, 2);
        assert!(matches!(again.save(file), Ok(Durable::Slot)));
        assert_eq!(load_file(dir.path()).expect("load").seq, 3);
    }

    #[test]
    fn a_lost_slot_file_falls_back_to_links_json_and_is_made_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, file) = Store::open(dir.path()).expect("open");
        let r = Registry::from_file(file).expect("registry");
        r.revoke("gone", Origin::Local, 1);
        store.save(r.load().to_file()).expect("first write");
        store.save(r.load().to_file()).expect("slot write");
        store.mirror().expect("mirror");
        std::fs::remove_file(dir.path().join(SLOTS_FILE)).expect("rm slots");
        r.revoke("gone-too", Origin::Local, 2);
        assert!(matches!(store.save(r.load().to_file()), Ok(Durable::Json)));
        assert_eq!(ids(&json_on_disk(dir.path())).1, vec!["gone", "gone-too"]);
        assert!(dir.path().join(SLOTS_FILE).exists(), "made again");
        assert!(matches!(store.save(r.load().to_file()), Ok(Durable::Slot)));
        assert_eq!(load_file(dir.path()).expect("load").seq, 4);
    }

    #[test]
    fn a_damaged_slot_file_is_an_error_naming_it_not_a_silent_fallback() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(SLOTS_FILE), b"odd").expect("write");
        let e = load_file(dir.path()).expect_err("damaged slot file");
        let text = e.to_string();
        assert!(
            text.contains(SLOTS_FILE) && text.contains("not two slots"),
            "{text}"
        );
    }

    #[test]
    fn links_json_of_older_versions_loads_with_number_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(LINKS_FILE),
            br#"{"version":1,"links":[],"revoked":[{"id":"old","origin":"cloud","at_ms":5,"cloud_told":true}]}"#,
        )
        .expect("write");
        let (mut store, file) = Store::open(dir.path()).expect("open");
        assert_eq!((file.seq, ids(&file).1), (0, vec!["old"]));
        assert!(matches!(store.save(file), Ok(Durable::Json)));
        assert_eq!(json_on_disk(dir.path()).seq, 1);
    }
}
