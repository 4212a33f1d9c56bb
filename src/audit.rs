//! The audit trail: what each third party was sent, and every link and
//! revoke event, as JSON lines in `state_dir/audit.jsonl`.
//!
//! One task owns the file. Disclosures are counted by the cloud writer at
//! the moment a frame is written (so a frame dropped by a revocation is
//! never counted) in a [`Tally`] keyed by (link, topic, keys sent), and
//! handed to the task every `audit.flush_s` seconds (within a second of a
//! link's revocation, at once when the cloud link drops or the daemon
//! stops) as one record per key with a count and the first and last `ts`:
//! an assistant linked to a busy topic would otherwise cost a flash write
//! per message. Values are
//! never recorded, only key paths.
//!
//! The file is rotated past `audit.max_file_bytes` and once a day; rotated
//! files older than `audit.retention_days` and beyond `audit.max_files` are
//! deleted. `hearthlink audit export` reads them all, oldest first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::AuditConfig;
use crate::links::{Kind, Origin};
use crate::topic::TopicMap;

/// Current audit file inside `state_dir`.
pub const AUDIT_FILE: &str = "audit.jsonl";
const ROTATED_PREFIX: &str = "audit.";
const ROTATE_EVERY: Duration = Duration::from_secs(24 * 3600);
/// Records waiting for the audit task.
const CHANNEL_CAPACITY: usize = 4096;

/// One line of the audit file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
    /// A link was created or updated.
    Link {
        ts: i64,
        link: String,
        kind: Kind,
        expose: Vec<String>,
        commands: Vec<String>,
    },
    /// A link was revoked.
    Revoke {
        ts: i64,
        link: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<Kind>,
        origin: Origin,
    },
    /// `count` state frames on `topic` were written for `link`, carrying
    /// these key paths (never the values).
    Disclosure {
        link: Arc<str>,
        kind: Kind,
        topic: Arc<str>,
        keys: Arc<[String]>,
        count: u64,
        first_ts: i64,
        last_ts: i64,
    },
}

impl Record {
    pub fn link(&self) -> &str {
        match self {
            Record::Link { link, .. } | Record::Revoke { link, .. } => link,
            Record::Disclosure { link, .. } => link,
        }
    }
}

/// Key paths of a JSON value, sorted and unique: `a`, `a.b`, `list[].x`.
pub fn key_paths(v: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>, depth: usize) {
        if depth > crate::privacy::MAX_DEPTH {
            return;
        }
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(child, &path, out, depth + 1);
                    out.push(path);
                }
            }
            serde_json::Value::Array(items) => {
                let path = format!("{prefix}[]");
                for child in items {
                    walk(child, &path, out, depth + 1);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, "", &mut out, 0);
    out.sort();
    out.dedup();
    out
}

/// Disclosures counted by the cloud writer between two flushes, by topic,
/// then key paths, then link: the writer looks a message's topic up once
/// and then only the link of each frame.
#[derive(Debug, Default)]
pub struct Tally {
    topics: TopicMap<Vec<TopicCounts>>,
    /// About what the records of [`Tally::drain`] take as JSON lines: the
    /// writer hands them over before this passes `audit.max_file_bytes`,
    /// so the tally's memory is bounded whatever the number of topics.
    weight: usize,
}

/// A disclosure record's bytes besides its link, topic and key names (the
/// member names, the kind and three numbers).
const RECORD_OVERHEAD: usize = 140;

/// The frames of one topic that carried one set of key paths, per link.
///
/// The links of a topic come in the same order message after message, so
/// `add` is told the link's position: when the entry there is the same
/// link (pointer comparison) no hashing is needed.
#[derive(Debug)]
pub struct TopicCounts {
    /// What one record of this set takes before its link's name.
    base: usize,
    keys: Arc<[String]>,
    links: Vec<(Arc<str>, Count)>,
    index: HashMap<Arc<str>, usize>,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    kind: Kind,
    n: u64,
    first_ts: i64,
    last_ts: i64,
}

impl TopicCounts {
    /// Counts one frame written for `link`, usually found at `hint`;
    /// returns the bytes a new record adds to the tally's weight (0 when
    /// the link was counted already), for [`Tally::grew`].
    pub fn add(&mut self, hint: usize, link: &Arc<str>, kind: Kind, ts: i64) -> usize {
        let at = match self.links.get(hint) {
            Some((l, _)) if Arc::ptr_eq(l, link) => Some(hint),
            _ => self.index.get(link).copied(),
        };
        match at {
            Some(at) => {
                let c = &mut self.links[at].1;
                c.n += 1;
                c.first_ts = c.first_ts.min(ts);
                c.last_ts = c.last_ts.max(ts);
                0
            }
            None => {
                let c = Count {
                    kind,
                    n: 1,
                    first_ts: ts,
                    last_ts: ts,
                };
                self.index.insert(link.clone(), self.links.len());
                self.links.push((link.clone(), c));
                self.base + link.len()
            }
        }
    }
}

impl Tally {
    /// The counts of frames on `topic` carrying `keys`.
    pub fn slot(&mut self, topic: &Arc<str>, keys: &Arc<[String]>) -> &mut TopicCounts {
        let sets = self.topics.entry(topic.clone()).or_default();
        // Messages of a topic usually share one key set: compare the
        // pointer first, the paths only when it differs.
        let at = sets
            .iter()
            .position(|s| Arc::ptr_eq(&s.keys, keys) || s.keys == *keys);
        let at = match at {
            Some(at) => at,
            None => {
                let names: usize = keys.iter().map(|k| k.len() + 3).sum();
                sets.push(TopicCounts {
                    base: RECORD_OVERHEAD + topic.len() + names,
                    keys: keys.clone(),
                    links: Vec::new(),
                    index: HashMap::new(),
                });
                sets.len() - 1
            }
        };
        let slot = &mut sets[at];
        // Later messages share this `Arc`, so the pointer test hits.
        slot.keys = keys.clone();
        slot
    }

    /// Counts one frame on `topic` carrying `keys` written for `link`.
    pub fn add(
        &mut self,
        link: &Arc<str>,
        kind: Kind,
        topic: &Arc<str>,
        keys: &Arc<[String]>,
        ts: i64,
    ) {
        let added = self.slot(topic, keys).add(usize::MAX, link, kind, ts);
        self.grew(added);
    }

    /// Adds what [`TopicCounts::add`] returned to the weight.
    pub fn grew(&mut self, bytes: usize) {
        self.weight += bytes;
    }

    /// About the bytes [`Tally::drain`]'s records take as JSON lines.
    pub fn weight(&self) -> usize {
        self.weight
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Takes the counted disclosures as records, oldest first.
    pub fn drain(&mut self) -> Vec<Record> {
        self.weight = 0;
        let mut out = Vec::new();
        for (topic, sets) in self.topics.drain() {
            for set in sets {
                for (link, c) in set.links {
                    out.push(Record::Disclosure {
                        link,
                        kind: c.kind,
                        topic: topic.clone(),
                        keys: set.keys.clone(),
                        count: c.n,
                        first_ts: c.first_ts,
                        last_ts: c.last_ts,
                    });
                }
            }
        }
        out.sort_by_key(|r| match r {
            Record::Disclosure { first_ts, .. } => *first_ts,
            _ => 0,
        });
        out
    }
}

/// Errors of the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Handle to the audit task.
#[derive(Debug, Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<Vec<Record>>,
}

impl AuditHandle {
    /// Queues records; waits when the task is behind (records are never
    /// dropped), at most `timeout`.
    pub async fn record(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        let t = Duration::from_secs(5);
        match tokio::time::timeout(t, self.tx.send(records)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!("audit task stopped; audit records lost"),
            Err(_) => tracing::error!("audit task did not take records within 5 s; records lost"),
        }
    }

    /// Queues records without waiting; returns false when the queue is full.
    pub fn try_record(&self, records: Vec<Record>) -> bool {
        records.is_empty() || self.tx.try_send(records).is_ok()
    }
}

/// Creates the handle and the task future; the task writes until `token`
/// is cancelled and every sender is gone... it drains what is queued first.
pub fn spawn(
    state_dir: &Path,
    cfg: &AuditConfig,
    token: CancellationToken,
) -> (AuditHandle, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let writer = Writer::new(
        state_dir.to_path_buf(),
        cfg.max_file_bytes,
        cfg.max_files as usize,
        Duration::from_secs(u64::from(cfg.retention_days) * 86_400),
    );
    (AuditHandle { tx }, run(writer, rx, token))
}

async fn run(mut w: Writer, mut rx: mpsc::Receiver<Vec<Record>>, token: CancellationToken) {
    w = off_thread(w, |w| w.housekeep()).await;
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        let batch = tokio::select! {
            b = rx.recv() => match b { Some(b) => b, None => break },
            _ = tick.tick() => { w = off_thread(w, |w| w.housekeep()).await; continue }
            _ = token.cancelled() => break,
        };
        let mut all = batch;
        while let Ok(more) = rx.try_recv() {
            all.extend(more);
        }
        w = off_thread(w, move |w| w.append(&all)).await;
    }
    // Drain what is already queued before stopping.
    let mut rest = Vec::new();
    while let Ok(more) = rx.try_recv() {
        rest.extend(more);
    }
    off_thread(w, move |w| w.append(&rest)).await;
}

/// Runs file work (serialising, appending, fsync, rotation) on the blocking
/// pool: the daemon's runtime has one thread, and an fsync on flash would
/// stall every link for its duration.
async fn off_thread(mut w: Writer, f: impl FnOnce(&mut Writer) + Send + 'static) -> Writer {
    let dir = w.dir.clone();
    let (max_bytes, max_files, retention) = (w.max_bytes, w.max_files, w.retention);
    match tokio::task::spawn_blocking(move || {
        f(&mut w);
        w
    })
    .await
    {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "audit write task failed");
            Writer::new(dir, max_bytes, max_files, retention)
        }
    }
}

struct Writer {
    dir: PathBuf,
    max_bytes: u64,
    max_files: usize,
    retention: Duration,
    opened: Instant,
    /// Whole lines a failed write left (a full disk, say), written first
    /// next time; at most `max_bytes`, the oldest dropped beyond.
    unwritten: Vec<u8>,
}

impl Writer {
    fn new(dir: PathBuf, max_bytes: u64, max_files: usize, retention: Duration) -> Writer {
        Writer {
            dir,
            max_bytes,
            max_files,
            retention,
            opened: Instant::now(),
            unwritten: Vec::new(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(AUDIT_FILE)
    }

    /// Appends `records`, rotating first whenever the next one would take
    /// a non-empty file past `max_bytes`: a file exceeds the bound only by
    /// a single record larger than the bound itself (edge rule 20).
    fn append(&mut self, records: &[Record]) {
        if records.is_empty() && self.unwritten.is_empty() {
            return;
        }
        let path = self.path();
        let mut len = crate::statefile::open_read(&path)
            .and_then(|f| f.metadata())
            .map_or(0, |m| m.len());
        // Lines a failed write kept go first, into a fresh file if the
        // current one has no room for them.
        let kept = self.unwritten.len() as u64;
        if kept > 0 && len > 0 && len + kept > self.max_bytes {
            self.rotate();
            len = 0;
        }
        len += kept;
        let mut lines = Vec::new();
        for r in records {
            let mark = lines.len();
            if let Err(e) = serde_json::to_writer(&mut lines, r) {
                tracing::error!(error = %e, "an audit record could not be serialised");
                lines.truncate(mark);
                continue;
            }
            lines.push(b'\n');
            if len + lines.len() as u64 > self.max_bytes && len + mark as u64 > 0 {
                if !self.write(&lines[..mark]) {
                    self.keep(&lines[mark..]);
                    return;
                }
                self.rotate();
                lines.drain(..mark);
                len = 0;
            }
        }
        if self.write(&lines) && self.opened.elapsed() > ROTATE_EVERY {
            self.rotate();
        }
    }

    /// Appends whole lines to the current file, after what an earlier
    /// failure left; false when that failed (the lines are kept for later).
    fn write(&mut self, lines: &[u8]) -> bool {
        let path = self.path();
        if !self.unwritten.is_empty() {
            if let Err(e) = crate::durable::append_lines(&path, &self.unwritten, 0o600) {
                tracing::error!(path = %path.display(), error = %e, "writing the audit trail failed; kept in memory for the next try");
                self.keep(lines);
                return false;
            }
            tracing::info!(
                bytes = self.unwritten.len(),
                "audit records kept after a failed write are written now"
            );
            self.unwritten.clear();
        }
        if lines.is_empty() {
            return true;
        }
        match crate::durable::append_lines(&path, lines, 0o600) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "writing the audit trail failed; kept in memory for the next try");
                self.keep(lines);
                false
            }
        }
    }

    /// Keeps whole `lines` for the next write, within `max_bytes` (the
    /// oldest lines go first, and how many is logged).
    fn keep(&mut self, lines: &[u8]) {
        self.unwritten.extend_from_slice(lines);
        let bound = usize::try_from(self.max_bytes).unwrap_or(usize::MAX);
        let mut dropped = 0;
        while self.unwritten.len() > bound {
            let cut =
                memchr::memchr(b'\n', &self.unwritten).map_or(self.unwritten.len(), |i| i + 1);
            self.unwritten.drain(..cut);
            dropped += 1;
        }
        if dropped > 0 {
            tracing::error!(
                dropped,
                "audit records lost: more failed to be written than audit.max_file_bytes"
            );
        }
    }

    fn rotate(&mut self) {
        // Rotations within one millisecond must not overwrite each other.
        let mut at = crate::clock::local_ms().max(0);
        let to = loop {
            let to = self.dir.join(format!("{ROTATED_PREFIX}{at:013}.jsonl"));
            if std::fs::symlink_metadata(&to).is_err() {
                break to;
            }
            at += 1;
        };
        if let Err(e) = std::fs::rename(self.path(), &to) {
            tracing::error!(error = %e, "rotating the audit file failed");
        }
        self.opened = Instant::now();
        self.housekeep();
    }

    /// Deletes rotated files past retention or past `max_files`.
    fn housekeep(&self) {
        let now = crate::clock::local_ms();
        let mut rotated = rotated_files(&self.dir);
        let keep_from = rotated.len().saturating_sub(self.max_files);
        for (i, (at, path)) in rotated.drain(..).enumerate() {
            let too_old = now.saturating_sub(at) > self.retention.as_millis() as i64;
            if i < keep_from || too_old {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "removing an old audit file failed");
                }
            }
        }
    }
}

/// Appends records with no daemon running (the caller holds the state
/// lock). A line torn by a power cut stays one bad line (skipped by
/// [`read_all`]).
pub fn append(state_dir: &Path, records: &[Record]) -> Result<(), AuditError> {
    let path = state_dir.join(AUDIT_FILE);
    crate::durable::append_jsonl(&path, records, 0o600)
        .map(|_| ())
        .map_err(|source| AuditError::Io { path, source })
}

/// Rotated audit files, oldest first, with their rotation time.
fn rotated_files(dir: &Path) -> Vec<(i64, PathBuf)> {
    let mut out: Vec<(i64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stamp = name.strip_prefix(ROTATED_PREFIX)?.strip_suffix(".jsonl")?;
            Some((stamp.parse().ok()?, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Every audit record, oldest first, and the lines that could not be read.
#[derive(Debug, Default)]
pub struct Trail {
    pub records: Vec<Record>,
    /// `file line N: why`, for lines that are not a record (a line torn by
    /// a power cut, a hand edit): reported, not fatal.
    pub unreadable: Vec<String>,
}

/// Reads every audit record, oldest first, optionally for one link.
pub fn read_all(state_dir: &Path, link: Option<&str>) -> Result<Trail, AuditError> {
    let mut files: Vec<PathBuf> = rotated_files(state_dir)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    files.push(state_dir.join(AUDIT_FILE));
    let mut out = Trail::default();
    for path in files {
        let text = match crate::statefile::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(AuditError::Io { path, source }),
        };
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(line) {
                Ok(rec) if link.is_none_or(|l| rec.link() == l) => out.records.push(rec),
                Ok(_) => {}
                Err(e) => out
                    .unreadable
                    .push(format!("{} line {}: {e}", path.display(), i + 1)),
            }
        }
    }
    Ok(out)
}

/// The export document: every record plus a summary per link.
pub fn export(state_dir: &Path, link: Option<&str>) -> Result<serde_json::Value, AuditError> {
    let Trail {
        records,
        unreadable,
    } = read_all(state_dir, link)?;
    let mut links: serde_json::Map<String, serde_json::Value> = serde_json::Map::new();
    for r in &records {
        let entry = links.entry(r.link().to_owned()).or_insert_with(
            || serde_json::json!({"kind": null, "frames_sent": 0, "topics": {}, "revoked": false}),
        );
        match r {
            Record::Link { kind, .. } => entry["kind"] = serde_json::json!(kind),
            Record::Revoke { .. } => entry["revoked"] = true.into(),
            Record::Disclosure {
                kind,
                topic,
                keys,
                count,
                ..
            } => {
                entry["kind"] = serde_json::json!(kind);
                let sent = entry["frames_sent"].as_u64().unwrap_or(0) + count;
                entry["frames_sent"] = sent.into();
                let t = &mut entry["topics"][&**topic];
                let prev = t["frames"].as_u64().unwrap_or(0);
                let mut all: Vec<String> = t["keys"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|k| k.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                all.extend(keys.iter().cloned());
                all.sort();
                all.dedup();
                *t = serde_json::json!({"frames": prev + count, "keys": all});
            }
        }
    }
    let mut doc = serde_json::json!({"links": links, "records": records});
    if !unreadable.is_empty() {
        doc["unreadable"] = unreadable.into();
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn key_paths_are_paths_not_values() {
        let v = serde_json::json!({"a": 1, "b": {"c": "secret"}, "l": [{"x": 1}, {"y": 2}]});
        assert_eq!(key_paths(&v), ["a", "b", "b.c", "l", "l[].x", "l[].y"]);
        assert!(key_paths(&serde_json::json!("text")).is_empty());
    }

    #[test]
    fn tally_counts_per_link_topic_keys() {
        let mut t = Tally::default();
        let (l, topic): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("t"));
        let keys: Arc<[String]> = Arc::from(vec!["v".to_owned()]);
        t.add(&l, Kind::Alexa, &topic, &keys, 5);
        t.add(&l, Kind::Alexa, &topic, &keys, 7);
        let recs = t.drain();
        assert_eq!(recs.len(), 1);
        assert!(matches!(
            &recs[0],
            Record::Disclosure {
                count: 2,
                first_ts: 5,
                last_ts: 7,
                ..
            }
        ));
        assert!(t.is_empty());
    }

    #[test]
    fn tally_separates_links_and_key_sets() {
        let mut t = Tally::default();
        let (a, b, topic): (Arc<str>, Arc<str>, Arc<str>) =
            (Arc::from("a"), Arc::from("b"), Arc::from("t"));
        let k1: Arc<[String]> = Arc::from(vec!["v".to_owned()]);
        let k1_again: Arc<[String]> = Arc::from(vec!["v".to_owned()]);
        let k2: Arc<[String]> = Arc::from(vec!["v".to_owned(), "w".to_owned()]);
        let slot = t.slot(&topic, &k1);
        slot.add(0, &a, Kind::Alexa, 3);
        slot.add(1, &b, Kind::Homekit, 4);
        // A wrong position hint still finds the link.
        slot.add(0, &b, Kind::Homekit, 2);
        // Same paths in another allocation: the same record.
        t.add(&a, Kind::Alexa, &topic, &k1_again, 1);
        t.add(&a, Kind::Alexa, &topic, &k2, 9);
        let mut recs: Vec<(String, Vec<String>, u64, i64, i64)> = t
            .drain()
            .into_iter()
            .map(|r| match r {
                Record::Disclosure {
                    link,
                    keys,
                    count,
                    first_ts,
                    last_ts,
                    ..
                } => (link.to_string(), keys.to_vec(), count, first_ts, last_ts),
                other => panic!("not a disclosure: {other:?}"),
            })
            .collect();
        recs.sort();
        let v = |s: &[&str]| s.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!(
            recs,
            [
                ("a".into(), v(&["v"]), 2, 1, 3),
                ("a".into(), v(&["v", "w"]), 1, 9, 9),
                ("b".into(), v(&["v"]), 2, 2, 4),
            ]
        );
    }

    #[test]
    fn write_rotate_and_export() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = Writer::new(
            dir.path().to_path_buf(),
            200,
            10,
            Duration::from_secs(86_400),
        );
        for i in 0..5 {
            w.append(&[Record::Revoke {
                ts: i,
                link: format!("l{i}"),
                kind: None,
                origin: Origin::Local,
            }]);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            !rotated_files(dir.path()).is_empty(),
            "rotated past max_bytes"
        );
        let all = read_all(dir.path(), None).expect("read");
        assert_eq!(all.records.len(), 5, "nothing lost across rotation");
        assert!(all.unreadable.is_empty(), "{:?}", all.unreadable);
        let one = export(dir.path(), Some("l3")).expect("export");
        assert_eq!(one["records"].as_array().map(Vec::len), Some(1));
        assert_eq!(one["links"]["l3"]["revoked"], true);
        assert!(one.get("unreadable").is_none());
    }

    /// A write that fails (a full disk; here the state dir is a file)
    /// keeps its records, within max_bytes, and the next write puts them in
    /// first. Before, they were dropped with an error line.
    #[test]
    fn records_a_failed_write_left_are_written_next_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, b"x").expect("file");
        let mut w = Writer::new(not_a_dir, 400, 1000, Duration::from_secs(86_400));
        let revoke = |i: i64| Record::Revoke {
            ts: i,
            link: format!("l{i}"),
            kind: None,
            origin: Origin::Local,
        };
        for i in 0..20 {
            w.append(&[revoke(i)]);
        }
        assert!(
            !w.unwritten.is_empty() && w.unwritten.len() <= 400,
            "{}",
            w.unwritten.len()
        );
        let kept = w.unwritten.iter().filter(|b| **b == b'\n').count();
        assert!(kept < 20, "the oldest are dropped beyond max_bytes");
        w.dir = dir.path().to_path_buf();
        w.append(&[revoke(20)]);
        assert!(w.unwritten.is_empty());
        let all = read_all(dir.path(), None).expect("read");
        assert_eq!(
            all.records.len(),
            kept + 1,
            "every kept record, then the new one"
        );
        assert!(all.unreadable.is_empty(), "{:?}", all.unreadable);
        let last: Vec<i64> = all
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Revoke { ts, .. } => Some(*ts),
                _ => None,
            })
            .collect();
        assert_eq!(last.last(), Some(&20), "{last:?}");
        assert!(last.windows(2).all(|w| w[0] < w[1]), "in order: {last:?}");
    }

    #[test]
    fn one_large_flush_is_split_into_files_within_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = Writer::new(
            dir.path().to_path_buf(),
            1000,
            1000,
            Duration::from_secs(86_400),
        );
        let revoke = |i: i64, link: String| Record::Revoke {
            ts: i,
            link,
            kind: None,
            origin: Origin::Local,
        };
        let mut records: Vec<Record> = (0..500)
            .map(|i| revoke(i, "l".repeat(1 + (i as usize % 40))))
            .collect();
        records.insert(250, revoke(250, "huge".repeat(800)));
        w.append(&records);
        w.append(&[revoke(501, "after".into())]);
        let mut files: Vec<PathBuf> = rotated_files(dir.path()).into_iter().map(|f| f.1).collect();
        files.push(dir.path().join(AUDIT_FILE));
        assert!(files.len() > 20, "{}", files.len());
        for f in &files {
            let text = std::fs::read_to_string(f).expect("read");
            assert!(
                text.len() <= 1000 || text.lines().count() == 1,
                "{} holds {} bytes in {} lines",
                f.display(),
                text.len(),
                text.lines().count()
            );
        }
        let all = read_all(dir.path(), None).expect("read");
        let ts: Vec<i64> = all
            .records
            .iter()
            .map(|r| match r {
                Record::Revoke { ts, .. } => *ts,
                _ => -1,
            })
            .collect();
        let mut want: Vec<i64> = (0..500).collect();
        want.insert(250, 250);
        want.push(501);
        assert_eq!(ts, want, "every record, in order, across the files");
    }

    #[test]
    fn the_tally_weight_follows_the_bytes_its_records_take() {
        let mut t = Tally::default();
        let keys: Arc<[String]> = vec!["temperature".to_owned(), "humidity".to_owned()].into();
        let links: Vec<Arc<str>> = (0..3).map(|i| Arc::from(format!("link-{i}"))).collect();
        for i in 0..400 {
            let topic: Arc<str> = Arc::from(format!("ampio/from/device-{i}/state"));
            for l in &links[..1 + i % 3] {
                for ts in 0..3 {
                    t.add(l, Kind::Alexa, &topic, &keys, ts);
                }
            }
        }
        let weight = t.weight();
        let bytes: usize = t
            .drain()
            .iter()
            .map(|r| serde_json::to_vec(r).expect("json").len() + 1)
            .sum();
        assert!(
            weight >= bytes && weight < bytes * 3 / 2,
            "{weight} for {bytes}"
        );
        assert_eq!(t.weight(), 0);
    }

    #[test]
    fn a_torn_line_is_reported_and_the_next_records_are_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(AUDIT_FILE);
        let rec = |i: i64| Record::Revoke {
            ts: i,
            link: format!("l{i}"),
            kind: None,
            origin: Origin::Cloud,
        };
        crate::durable::append_jsonl(&path, &[rec(1)], 0o600).expect("first append");
        // A power cut in the middle of the next append.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(br#"{"event":"revoke","ts":2,"li"#)
            .expect("torn write");
        drop(f);
        crate::durable::append_jsonl(&path, &[rec(3), rec(4)], 0o600)
            .expect("append after the cut");
        let trail = read_all(dir.path(), None).expect("read");
        let links: Vec<&str> = trail.records.iter().map(Record::link).collect();
        assert_eq!(links, ["l1", "l3", "l4"]);
        assert_eq!(trail.unreadable.len(), 1, "{:?}", trail.unreadable);
        assert!(
            trail.unreadable[0].contains("line 2"),
            "{:?}",
            trail.unreadable
        );
        let doc = export(dir.path(), None).expect("export");
        assert_eq!(doc["unreadable"].as_array().map(Vec::len), Some(1));
    }
}
