//! Durable file writes: temp file, fsync, rename, fsync the directory.
//!
//! Gateways lose power without warning and keep their state on flash; a
//! state file is either the old one or the new one, never half of each.
//! The temp file is created new (never opened through a link planted at its
//! name), and the rename replaces whatever is at `path`, a link included,
//! without following it (protocol rule 21).

use crate::statefile;
use std::fs;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically and durably, with the given mode.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_owned());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    // A stale temp file (or a link) of an earlier crash: unlinking acts on
    // the name, never on what a link points to.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = statefile::create_new(&tmp, mode)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        statefile::open_dir(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Appends `records` to the JSON-lines file at `path` (created with `mode`)
/// and flushes it; returns the file's new length.
///
/// Records are serialised through a small buffer, not all at once: a
/// flush of many records stays a few kilobytes of memory. A line torn by a
/// power cut during an earlier append is ended first, so it stays one bad
/// line instead of spoiling the next record.
pub fn append_jsonl<T: serde::Serialize>(
    path: &Path,
    records: &[T],
    mode: u32,
) -> std::io::Result<u64> {
    append_with(path, mode, |w| {
        for r in records {
            serde_json::to_writer(&mut *w, r)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Appends whole lines (`lines` ends with a newline) like
/// [`append_jsonl`]; returns the file's new length.
pub fn append_lines(path: &Path, lines: &[u8], mode: u32) -> std::io::Result<u64> {
    append_with(path, mode, |w| w.write_all(lines))
}

fn append_with(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = statefile::open_append(path, mode)?;
    let torn = f.metadata()?.len() > 0 && {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::End(-1))?;
        f.read_exact(&mut last)?;
        last[0] != b'\n'
    };
    let mut w = std::io::BufWriter::with_capacity(16 * 1024, &mut f);
    if torn {
        w.write_all(b"\n")?;
    }
    write(&mut w)?;
    w.flush()?;
    drop(w);
    f.sync_data()?;
    f.metadata().map(|m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("links.json");
        write_atomic(&p, b"one", 0o600).expect("first write");
        write_atomic(&p, b"two", 0o600).expect("second write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn links_at_the_target_and_the_temp_name_are_replaced_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").expect("victim");
        let p = dir.path().join("links.json");
        let tmp = dir
            .path()
            .join(format!(".links.json.tmp.{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &p).expect("link at target");
        std::os::unix::fs::symlink(&victim, &tmp).expect("link at temp");
        write_atomic(&p, b"new", 0o600).expect("write");
        assert_eq!(fs::read(&victim).expect("victim"), b"precious");
        assert!(!fs::symlink_metadata(&p).expect("meta").is_symlink());
        assert_eq!(fs::read(&p).expect("read"), b"new");
    }

    #[test]
    fn error_names_nothing_left_behind() {
        let p = Path::new("/nonexistent-dir-hearthlink/x.json");
        assert!(write_atomic(p, b"x", 0o600).is_err());
    }
}
