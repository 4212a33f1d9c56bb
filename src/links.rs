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
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::slots::{SlotError, Slots};
use crate::tombstones::{self, Event};
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

/// A checked link waiting for the disk before it enters the registry.
#[derive(Debug, Clone)]
pub struct Grant(Arc<Link>);

impl Grant {
    pub fn id(&self) -> &str {
        &self.0.id
    }
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

/// Tombstones only grow and are kept forever, so every snapshot shares the
/// one map instead of copying it (a copy per revoke made the 50 000th
/// revoke cost 50 000 clones, protocol rule 20).
type Tombs = Arc<RwLock<HashMap<Arc<str>, Revoked>>>;

/// One immutable view of the active links (the tombstones beside it are
/// shared, see [`Tombs`]).
#[derive(Debug, Default)]
pub struct Snapshot {
    active: Vec<Arc<Link>>,
    by_id: HashMap<Arc<str>, Arc<Link>>,
    revoked: Tombs,
}

fn read(t: &Tombs) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Revoked>> {
    t.read().unwrap_or_else(|p| p.into_inner())
}

fn write(t: &Tombs) -> std::sync::RwLockWriteGuard<'_, HashMap<Arc<str>, Revoked>> {
    t.write().unwrap_or_else(|p| p.into_inner())
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
    pub fn revoked_entry(&self, id: &str) -> Option<Revoked> {
        read(&self.revoked).get(id).cloned()
    }

    pub fn is_revoked(&self, id: &str) -> bool {
        read(&self.revoked).contains_key(id)
    }

    /// Active links, ordered by id.
    pub fn active(&self) -> &[Arc<Link>] {
        &self.active
    }

    /// Every tombstone, in no order (a copy: callers are rare).
    pub fn revoked(&self) -> Vec<Revoked> {
        read(&self.revoked).values().cloned().collect()
    }

    /// How many links were ever revoked (tombstones are kept forever, so
    /// this only grows).
    pub fn revoked_count(&self) -> usize {
        read(&self.revoked).len()
    }

    /// Active links whose `expose` filters match `topic`.
    pub fn routes<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a Arc<Link>> + 'a {
        self.active.iter().filter(move |l| l.expose.matches(topic))
    }

    /// This snapshot with `grants` created or updated in order (revoked
    /// ids skipped: a tombstone always wins).
    fn with(&self, grants: &[Grant]) -> Snapshot {
        let mut links = self.active.clone();
        for g in grants.iter().filter(|g| !self.is_revoked(g.id())) {
            links.retain(|l| l.id != g.0.id);
            links.push(g.0.clone());
        }
        Snapshot::rebuild(links, self.revoked.clone())
    }

    fn rebuild(links: Vec<Arc<Link>>, revoked: Tombs) -> Self {
        let mut active = links;
        active.sort_by(|a, b| a.id.cmp(&b.id));
        let by_id = active.iter().map(|l| (l.id.clone(), l.clone())).collect();
        Snapshot {
            active,
            by_id,
            revoked,
        }
    }

    /// The whole state, active links and tombstones, as `links list` and
    /// older versions see it.
    pub fn to_file(&self) -> LinksFile {
        let mut revoked = self.revoked();
        revoked.sort_by(|a, b| a.id.cmp(&b.id));
        LinksFile {
            revoked,
            ..self.active_file()
        }
    }

    /// The active links as the store writes them (the tombstones are in
    /// [`crate::tombstones`]).
    fn active_file(&self) -> LinksFile {
        LinksFile {
            version: 1,
            seq: 0, // set by the store
            revoked: Vec::new(),
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
    write: Mutex<Unsaved>,
}

/// Changes the store has not written yet.
#[derive(Debug, Default)]
struct Unsaved {
    /// Tombstone events for [`crate::tombstones`], oldest first.
    events: Vec<Event>,
    /// Bumped by every change of the active links.
    generation: u64,
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
        let tombs = Arc::new(RwLock::new(revoked));
        Ok(Registry {
            current: ArcSwap::from_pointee(Snapshot::rebuild(links, tombs)),
            write: Mutex::default(),
        })
    }

    fn unsaved(&self) -> std::sync::MutexGuard<'_, Unsaved> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the changes to write: the tombstone events and the active
    /// links' generation.
    pub fn take_unsaved(&self) -> (Vec<Event>, u64) {
        let mut u = self.unsaved();
        (std::mem::take(&mut u.events), u.generation)
    }

    /// Gives back events a failed write did not make durable.
    pub fn restore_unsaved(&self, mut events: Vec<Event>) {
        let mut u = self.unsaved();
        events.append(&mut u.events);
        u.events = events;
    }

    /// The current snapshot; cheap, lock-free.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swaps in the snapshot `f` makes of the current one, if any, as a
    /// change of the active links.
    fn update(&self, f: impl FnOnce(&Snapshot) -> Option<Snapshot>) -> bool {
        let mut u = self.unsaved();
        let cur = self.current.load();
        match f(&cur) {
            Some(next) => {
                self.current.store(Arc::new(next));
                u.generation += 1;
                true
            }
            None => false,
        }
    }

    /// Checks a `link` frame's link without applying it: refused for a
    /// revoked id or an invalid filter. Protocol rule 18: the grant enters
    /// the registry only once it is on disk ([`Registry::file_with`], then
    /// [`Registry::apply`]).
    pub fn prepare(
        &self,
        id: &str,
        kind: Kind,
        expose: Vec<String>,
        commands: Vec<String>,
    ) -> Result<Grant, LinksError> {
        let link = Arc::new(to_link(id, kind, expose, commands)?);
        if self.load().is_revoked(id) {
            return Err(LinksError::Revoked(id.to_owned()));
        }
        Ok(Grant(link))
    }

    /// The active links as the store writes them, with `grants` applied,
    /// leaving the registry as it is.
    pub fn file_with(&self, grants: &[Grant]) -> LinksFile {
        let cur = self.load();
        if grants.is_empty() {
            return cur.active_file();
        }
        cur.with(grants).active_file()
    }

    /// Puts a persisted grant in force. Refused when the id was revoked
    /// since it was prepared (the tombstone wins, on disk too).
    pub fn apply(&self, grant: &Grant) -> Result<(), LinksError> {
        let mut refused = false;
        self.update(|cur| {
            if cur.is_revoked(&grant.0.id) {
                refused = true;
                return None;
            }
            Some(cur.with(std::slice::from_ref(grant)))
        });
        if refused {
            return Err(LinksError::Revoked(grant.0.id.to_string()));
        }
        Ok(())
    }

    /// Creates or updates an active link at once, with no disk in between
    /// (tests, benches and the offline tools; the daemon grants through
    /// [`Registry::prepare`]).
    pub fn upsert(
        &self,
        id: &str,
        kind: Kind,
        expose: Vec<String>,
        commands: Vec<String>,
    ) -> Result<(), LinksError> {
        self.apply(&self.prepare(id, kind, expose, commands)?)
    }

    /// Revokes `id` in memory, at once. Returns false when it already was.
    pub fn revoke(&self, id: &str, origin: Origin, at_ms: i64) -> bool {
        let mut u = self.unsaved();
        let cur = self.current.load_full();
        let link = cur.get(id).cloned();
        let tomb = Revoked {
            id: id.to_owned(),
            kind: link.as_ref().map(|l| l.kind),
            at_ms,
            origin,
            cloud_told: origin == Origin::Cloud,
        };
        {
            let mut t = write(&cur.revoked);
            if t.contains_key(id) {
                return false;
            }
            t.insert(Arc::from(id), tomb.clone());
        }
        u.events.push(Event::Revoked(tomb));
        if link.is_some() {
            let links = cur
                .active
                .iter()
                .filter(|l| &*l.id != id)
                .cloned()
                .collect();
            self.current
                .store(Arc::new(Snapshot::rebuild(links, cur.revoked.clone())));
            u.generation += 1;
        }
        true
    }

    /// Records that the cloud has been sent the `revoked` frame for `id`.
    pub fn mark_told(&self, id: &str) -> bool {
        let mut u = self.unsaved();
        let cur = self.current.load();
        match write(&cur.revoked).get_mut(id) {
            Some(r) if !r.cloud_told => r.cloud_told = true,
            _ => return false,
        }
        u.events.push(Event::Told {
            told: id.to_owned(),
        });
        true
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

/// Reads the registry's state: the active links of the newer of
/// `links.json` and the newest whole record of `links.slots`, and the
/// tombstones of `revoked.log` (with those older versions kept in
/// `links.json`). Missing files are an empty registry.
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
    /// The tombstone log is due a rewrite: mostly superseded lines, or
    /// tombstones of an older version's `links.json` not in it.
    compact: bool,
}

/// Adds the tombstone log to `file.revoked`; true when the log should be
/// rewritten (see [`Loaded::compact`]).
fn merge_tombstones(state_dir: &Path, file: &mut LinksFile) -> Result<bool, LinksError> {
    let path = state_dir.join(tombstones::TOMBSTONES_FILE);
    let mut log =
        tombstones::load(state_dir).map_err(|source| LinksError::Read { path, source })?;
    let logged = log.revoked.len();
    for r in file.revoked.drain(..) {
        tombstones::apply(&mut log.revoked, Event::Revoked(r));
    }
    let compact = log.revoked.len() > logged || log.lines > 2 * logged + 64;
    file.revoked = log.revoked.into_values().collect();
    file.revoked.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(compact)
}

fn load(state_dir: &Path) -> Result<Loaded, LinksError> {
    let path = state_dir.join(LINKS_FILE);
    let json = match crate::statefile::read(&path) {
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
    let (mut file, unmirrored) = match record {
        Some(r) if r.seq > json.seq => {
            let mut file: LinksFile = serde_json::from_slice(&r.body)
                .map_err(|source| LinksError::Parse { path, source })?;
            // Tombstones an older version wrote only to links.json.
            file.revoked.extend(json.revoked);
            (file, Some(r.body))
        }
        _ => (json, None),
    };
    let compact = merge_tombstones(state_dir, &mut file)?;
    Ok(Loaded {
        file,
        slots,
        unmirrored,
        compact,
    })
}

fn to_json(file: &LinksFile) -> Result<Vec<u8>, LinksError> {
    serde_json::to_vec_pretty(file).map_err(|e| LinksError::Write {
        path: PathBuf::from(LINKS_FILE),
        source: std::io::Error::other(e),
    })
}

/// The registry's tombstones of every id `events` name, as they are now.
fn carried_tombstones(events: &[Event], registry: &Registry) -> Vec<Revoked> {
    let snap = registry.load();
    carried_tombstone_ids(events)
        .into_iter()
        .filter_map(|id| snap.revoked_entry(id))
        .collect()
}

/// The ids `events` name, sorted, once each.
fn carried_tombstone_ids(events: &[Event]) -> Vec<&str> {
    let mut ids: Vec<&str> = events
        .iter()
        .map(|e| match e {
            Event::Told { told } => told.as_str(),
            Event::Revoked(r) => r.id.as_str(),
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
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
    /// Tombstone events written in a slot record, not yet in the log.
    carried: Vec<Event>,
    /// The registry generation last written (`None`: write at the first
    /// [`Store::persist`]).
    saved: Option<u64>,
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
            compact,
        } = load(state_dir)?;
        if compact {
            let path = state_dir.join(tombstones::TOMBSTONES_FILE);
            tombstones::rewrite(state_dir, file.revoked.iter())
                .map_err(|source| LinksError::Write { path, source })?;
        }
        let seq = file.seq.max(slots.as_ref().map_or(0, Slots::newest));
        let store = Store {
            dir: state_dir.to_owned(),
            seq,
            slots,
            unmirrored,
            saved: None,
            carried: Vec::new(),
        };
        Ok((store, file))
    }

    /// Makes every change of `registry` durable, with `grants` applied.
    ///
    /// When the active links changed (a grant, the revoke of an active
    /// link), one write does it all: the links, with the new tombstones
    /// carried beside them until [`Store::mirror`] appends them to the log.
    /// Otherwise (the revoke of an unknown id, "told") the events are
    /// appended to the log. Either way one flush; events a failed write
    /// did not make durable go back to the registry for the next try.
    pub fn persist(&mut self, registry: &Registry, grants: &[Grant]) -> Result<(), LinksError> {
        let (events, generation) = registry.take_unsaved();
        if self.saved == Some(generation) && grants.is_empty() {
            return self
                .append_some(&events)
                .inspect_err(|_| registry.restore_unsaved(events));
        }
        let carried = self.carried.len();
        self.carried.extend(events);
        let mut file = registry.file_with(grants);
        file.revoked = carried_tombstones(&self.carried, registry);
        if let Err(e) = self.save(file) {
            registry.restore_unsaved(self.carried.split_off(carried));
            return Err(e);
        }
        self.saved = Some(generation);
        Ok(())
    }

    /// Appends `events` to the log; none is no write.
    fn append_some(&self, events: &[Event]) -> Result<(), LinksError> {
        if events.is_empty() {
            return Ok(());
        }
        tombstones::append(&self.dir, events).map_err(|source| LinksError::Write {
            path: self.dir.join(tombstones::TOMBSTONES_FILE),
            source,
        })
    }

    /// Makes `file` durable as the next write. When the slot write fails
    /// (missing, damaged or too small file, an I/O error), `links.json` is
    /// written instead and a new slot file made for the next time.
    pub fn save(&mut self, mut file: LinksFile) -> Result<Durable, LinksError> {
        self.seq += 1;
        file.seq = self.seq;
        let bytes = to_json(&file)?;
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

    /// True when the newest state is not in `links.json` yet, or
    /// tombstones wait in a slot record for the log.
    pub fn needs_mirror(&self) -> bool {
        self.unmirrored.is_some() || !self.carried.is_empty()
    }

    /// Moves carried tombstones to the log, then copies the newest state
    /// to `links.json` (temp file, fsync, rename) without them.
    pub fn mirror(&mut self) -> Result<(), LinksError> {
        let carried = std::mem::take(&mut self.carried);
        if let Err(e) = self.append_some(&carried) {
            self.carried = carried;
            return Err(e);
        }
        let logged = carried_tombstone_ids(&carried);
        let Some(bytes) = &self.unmirrored else {
            return Ok(());
        };
        let path = self.dir.join(LINKS_FILE);
        let mut file: LinksFile =
            serde_json::from_slice(bytes).map_err(|source| LinksError::Parse { path, source })?;
        file.revoked
            .retain(|r| logged.binary_search(&r.id.as_str()).is_err());
        self.write_json(&to_json(&file)?)?;
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
        let file =
            crate::statefile::open_or_create(&path, 0o600).map_err(|source| LinksError::Write {
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
        let t = snap.revoked().into_iter().next().expect("tombstone");
        assert_eq!(t.id, "ghost");
        assert!(!t.cloud_told);
        drop(snap);
        assert!(r.mark_told("ghost"));
        assert!(r.load().revoked().iter().all(|t| t.cloud_told));
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

    /// Rule 20: a revoke costs the same at the 5 000th as at the first: the
    /// link files do not grow, the log grows by one line, and the active
    /// links' snapshot is not copied for an unknown id.
    #[test]
    fn revoking_costs_the_same_at_the_5000th_as_at_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, file) = Store::open(dir.path()).expect("open");
        let r = Registry::from_file(file).expect("registry");
        r.upsert("kept", Kind::Alexa, vec!["x/#".into()], vec![])
            .expect("link");
        store.persist(&r, &[]).expect("first write");
        store.mirror().expect("mirror");
        let size = |name: &str| std::fs::metadata(dir.path().join(name)).map_or(0, |m| m.len());
        let files = (size(SLOTS_FILE), size(LINKS_FILE));
        let mut growth = Vec::new();
        for round in 0..5 {
            let before = size(tombstones::TOMBSTONES_FILE);
            for i in 0..1000 {
                let snap = r.snapshot();
                assert!(r.revoke(&format!("gone-{round}-{i:04}"), Origin::Cloud, 1));
                assert!(Arc::ptr_eq(&snap, &r.snapshot()), "snapshot copied");
                if i % 10 == 9 {
                    store.persist(&r, &[]).expect("persist");
                }
            }
            store.mirror().expect("mirror");
            growth.push(size(tombstones::TOMBSTONES_FILE) - before);
            assert_eq!((size(SLOTS_FILE), size(LINKS_FILE)), files, "round {round}");
        }
        assert!(growth.iter().all(|g| *g == growth[0]), "{growth:?}");
        assert!(growth[0] < 1000 * 128, "{growth:?}");
        // All of it comes back, the link too.
        let back = Registry::from_file(load_file(dir.path()).expect("load")).expect("registry");
        assert_eq!(back.load().revoked_count(), 5000);
        assert!(back.load().is_active("kept"));
    }

    #[test]
    fn revoking_an_active_link_is_one_slot_write_and_reaches_the_log_at_the_mirror() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, file) = Store::open(dir.path()).expect("open");
        let r = Registry::from_file(file).expect("registry");
        r.upsert("a", Kind::Alexa, vec!["x/#".into()], vec![])
            .expect("link");
        store.persist(&r, &[]).expect("grant");
        store.mirror().expect("mirror");
        let log = dir.path().join(tombstones::TOMBSTONES_FILE);
        assert!(r.revoke("a", Origin::Cloud, 7));
        store.persist(&r, &[]).expect("revoke");
        // Durable before the mirror: in the slot record, not yet in the log.
        assert!(!log.exists(), "the log was written on the revoke's path");
        let back = load_file(dir.path()).expect("load");
        assert!(back.links.is_empty() && back.revoked.len() == 1, "{back:?}");
        assert!(store.needs_mirror());
        store.mirror().expect("mirror");
        assert!(!store.needs_mirror());
        assert_eq!(tombstones::load(dir.path()).expect("log").revoked.len(), 1);
        assert!(json_on_disk(dir.path()).revoked.is_empty());
        let back = load_file(dir.path()).expect("load");
        assert_eq!(back.revoked[0].id, "a");
        assert!(back.links.is_empty());
    }

    #[test]
    fn tombstones_of_an_older_links_json_move_to_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(LINKS_FILE),
            br#"{"version":1,"links":[{"id":"old","kind":"alexa"}],"revoked":[{"id":"old","origin":"cloud","at_ms":5,"cloud_told":false}]}"#,
        )
        .expect("write");
        let (mut store, file) = Store::open(dir.path()).expect("open");
        let r = Registry::from_file(file).expect("registry");
        assert!(r.load().is_revoked("old") && !r.load().is_active("old"));
        assert!(r.mark_told("old"));
        store.persist(&r, &[]).expect("persist");
        store.mirror().expect("mirror");
        let log = tombstones::load(dir.path()).expect("log").revoked;
        assert!(log["old"].cloud_told, "{log:?}");
        let back = load_file(dir.path()).expect("load");
        assert_eq!(back.revoked.len(), 1);
        assert!(back.revoked[0].cloud_told);
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
