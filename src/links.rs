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
//! Persistence is by [`save`] (temp file + fsync + rename), called from the
//! one task that owns the file (the relay's store task) or, with no daemon
//! running, from the command line under the state-dir lock ([`StateLock`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::topic::FilterSet;

/// File name of the registry inside `state_dir`.
pub const LINKS_FILE: &str = "links.json";
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
    #[serde(default)]
    pub links: Vec<StoredLink>,
    #[serde(default)]
    pub revoked: Vec<Revoked>,
}

/// Reads `state_dir/links.json`; a missing file is an empty registry.
pub fn load_file(state_dir: &Path) -> Result<LinksFile, LinksError> {
    let path = state_dir.join(LINKS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| LinksError::Parse { path, source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LinksFile {
            version: 1,
            ..LinksFile::default()
        }),
        Err(source) => Err(LinksError::Read { path, source }),
    }
}

/// Writes `state_dir/links.json` durably.
pub fn save(state_dir: &Path, file: &LinksFile) -> Result<(), LinksError> {
    let path = state_dir.join(LINKS_FILE);
    let bytes = serde_json::to_vec_pretty(file).map_err(|e| LinksError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    crate::durable::write_atomic(&path, &bytes, 0o600)
        .map_err(|source| LinksError::Write { path, source })
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
        save(dir.path(), &r.load().to_file()).expect("save");
        let back = Registry::from_file(load_file(dir.path()).expect("load")).expect("registry");
        assert!(back.load().is_active("a"));
        assert!(back.load().is_revoked("b"));
        assert_eq!(back.load().to_file(), r.load().to_file());
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
}
