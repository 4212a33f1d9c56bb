//! Revoked-id tombstones on disk: `state_dir/revoked.log`.
//!
//! Tombstones are kept forever and only grow, so they are not rewritten
//! with the links on every change (that made the 50 000th revoke cost a
//! 7 MB rewrite, protocol rule 20). Each revocation, and each "the cloud
//! has been told", is one JSON line appended and flushed: a revoke costs
//! the same at the 50 000th as at the first. [`crate::links::Store`]
//! makes a tombstone durable before it answers: appended here, or, when
//! the revoked link was active, carried in the one slot write that
//! removes the link and appended here once no write waits. It replays
//! the file at start (with tombstones a slot record carried), and rewrites it
//! whole (temp file, fsync, rename) only when it opens one that is mostly
//! superseded lines, or to take in the tombstones of an older `links.json`.
//!
//! A line that cannot be read (torn by a power cut, which only the last
//! can be, and which was never acknowledged) is skipped with a warning.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::links::Revoked;

/// File name of the tombstone log inside `state_dir`.
pub const TOMBSTONES_FILE: &str = "revoked.log";

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Event {
    /// The cloud has been sent the `revoked` frame of this id.
    Told {
        told: String,
    },
    Revoked(Revoked),
}

/// What the log holds: every tombstone, and how many lines it took.
#[derive(Debug, Default)]
pub struct Replayed {
    pub revoked: HashMap<String, Revoked>,
    pub lines: usize,
}

/// Replays the log; a missing file is an empty one.
pub fn load(state_dir: &Path) -> io::Result<Replayed> {
    let path = state_dir.join(TOMBSTONES_FILE);
    let text = match crate::statefile::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Replayed::default()),
        Err(e) => return Err(e),
    };
    let mut out = Replayed::default();
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.lines += 1;
        match serde_json::from_slice::<Event>(line) {
            Ok(ev) => apply(&mut out.revoked, ev),
            Err(e) => tracing::warn!(
                path = %path.display(),
                line = i + 1,
                error = %e,
                "skipping an unreadable line of the tombstone log"
            ),
        }
    }
    Ok(out)
}

/// Folds one event into `revoked`: the first tombstone of an id stays,
/// and "told" is never undone.
pub fn apply(revoked: &mut HashMap<String, Revoked>, ev: Event) {
    match ev {
        Event::Told { told } => {
            if let Some(r) = revoked.get_mut(&told) {
                r.cloud_told = true;
            }
        }
        Event::Revoked(r) => match revoked.get_mut(&r.id) {
            Some(had) => had.cloud_told |= r.cloud_told,
            None => {
                revoked.insert(r.id.clone(), r);
            }
        },
    }
}

/// Appends events and flushes them.
pub fn append(state_dir: &Path, events: &[Event]) -> io::Result<()> {
    crate::durable::append_jsonl(&state_dir.join(TOMBSTONES_FILE), events, 0o600).map(drop)
}

/// Replaces the log with one line per tombstone.
pub fn rewrite<'a>(state_dir: &Path, all: impl Iterator<Item = &'a Revoked>) -> io::Result<()> {
    let mut bytes = Vec::new();
    for r in all {
        serde_json::to_writer(&mut bytes, r).map_err(io::Error::other)?;
        bytes.push(b'\n');
    }
    crate::durable::write_atomic(&state_dir.join(TOMBSTONES_FILE), &bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::Origin;

    fn tomb(id: &str, told: bool) -> Revoked {
        Revoked {
            id: id.into(),
            kind: None,
            at_ms: 1,
            origin: Origin::Local,
            cloud_told: told,
        }
    }

    #[test]
    fn replay_folds_told_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        append(
            dir.path(),
            &[
                Event::Revoked(tomb("a", false)),
                Event::Revoked(tomb("b", false)),
            ],
        )
        .expect("append");
        append(dir.path(), &[Event::Told { told: "a".into() }]).expect("append");
        let path = dir.path().join(TOMBSTONES_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.extend_from_slice(br#"{"id":"c","at_"#);
        std::fs::write(&path, &bytes).expect("torn");
        append(dir.path(), &[Event::Revoked(tomb("d", true))]).expect("after the tear");
        let r = load(dir.path()).expect("load");
        let mut ids: Vec<&str> = r.revoked.keys().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["a", "b", "d"]);
        assert!(r.revoked["a"].cloud_told && !r.revoked["b"].cloud_told);
        assert_eq!(r.lines, 5);
        rewrite(dir.path(), r.revoked.values()).expect("rewrite");
        let again = load(dir.path()).expect("load again");
        assert_eq!(again.lines, 3);
        assert_eq!(again.revoked, r.revoked);
    }
}
