//! Durable records written in place: two slots in one preallocated file,
//! written in turn, each with a sequence number and a checksum.
//!
//! Why: [`crate::durable::write_atomic`] (temp file, fsync, rename, fsync
//! the directory) costs two journal commits on ext4: 0.6 ms idle on the
//! bench VM and 1.5 to 2 ms each under load, which is most of the time a
//! revocation waits for its ack. Overwriting blocks that already exist in a
//! file of unchanged size needs no metadata, so `fdatasync` flushes the
//! data and commits no journal (0.12 ms idle on the same VM). On flash it
//! is also one block write in place of several.
//!
//! Layout: the file is two slots of equal size, all of it written once
//! when created (zeros, so no block is allocated or converted by a later
//! write). A slot holds `MAGIC`, the record's sequence number (u64 LE), its
//! length (u32 LE), a CRC-32 of those twelve bytes and the body, then the
//! body. A write goes to the slot that does not hold the newest valid
//! record, so the newest record that was made durable is never the one
//! being overwritten: a write cut short by a power loss leaves a slot
//! whose checksum fails, and the reader takes the other one.
//!
//! The file is opened for each write, never kept open: a file replaced or
//! removed behind the daemon's back is seen at the next write, not
//! written through a stale descriptor.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: [u8; 8] = *b"HLSLOT1\n";
/// Magic, sequence number, length, checksum.
const HEADER: usize = 8 + 8 + 4 + 4;
/// Smallest slot made: room for a few hundred links.
pub const MIN_SLOT: usize = 64 * 1024;
/// Largest file read back (two slots): a corrupt size is refused, not
/// allocated.
const MAX_FILE: u64 = 1 << 30;

/// Errors of a slot write.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("record of {len} bytes does not fit a slot of {slot} bytes")]
    TooLarge { len: usize, slot: usize },
    #[error("{path}: size {size} is not two slots")]
    Size { path: PathBuf, size: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub body: Vec<u8>,
}

/// A slot file ready for writing: its size and which slot is next.
#[derive(Debug, Clone)]
pub struct Slots {
    path: PathBuf,
    slot: usize,
    /// The slot the next write goes to (0 or 1).
    next: usize,
    /// Sequence number of the newest record in the file (0: none).
    newest: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SlotError + '_ {
    move |source| SlotError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Slots {
    /// Reads the file: the slots set up for the next write, and the newest
    /// valid record. `Ok(None)` when the file does not exist.
    pub fn open(path: &Path) -> Result<Option<(Slots, Option<Record>)>, SlotError> {
        let mut f = match crate::statefile::open_read(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        };
        let size = f.metadata().map_err(io_err(path))?.len();
        if size == 0 || size % 2 != 0 || size > MAX_FILE || size / 2 <= HEADER as u64 {
            return Err(SlotError::Size {
                path: path.to_owned(),
                size,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        f.read_to_end(&mut bytes).map_err(io_err(path))?;
        if bytes.len() as u64 != size {
            return Err(SlotError::Size {
                path: path.to_owned(),
                size: bytes.len() as u64,
            });
        }
        let slot = bytes.len() / 2;
        let records = [decode(&bytes[..slot]), decode(&bytes[slot..])];
        // The newest valid record; the next write goes to the other slot.
        let newest = match (&records[0], &records[1]) {
            (Some(a), Some(b)) => usize::from(b.seq > a.seq),
            (None, Some(_)) => 1,
            _ => 0,
        };
        let record = records.into_iter().nth(newest).flatten();
        let slots = Slots {
            path: path.to_owned(),
            slot,
            next: if record.is_some() { 1 - newest } else { 0 },
            newest: record.as_ref().map_or(0, |r| r.seq),
        };
        Ok(Some((slots, record)))
    }

    /// Creates (or replaces) the file with two empty slots with room for a
    /// record of `room` bytes each, durably (temp file, fsync, rename,
    /// fsync the directory).
    pub fn create(path: &Path, room: usize, mode: u32) -> Result<Slots, SlotError> {
        let slot = (room + HEADER).max(MIN_SLOT).next_power_of_two();
        crate::durable::write_atomic(path, &vec![0u8; 2 * slot], mode).map_err(io_err(path))?;
        Ok(Slots {
            path: path.to_owned(),
            slot,
            next: 0,
            newest: 0,
        })
    }

    /// The largest body a slot holds.
    pub fn room(&self) -> usize {
        self.slot - HEADER
    }

    /// Writes record `seq` (greater than any in the file) into the slot
    /// that does not hold the newest record, and flushes it. Once this
    /// returns `Ok` the record survives a power loss.
    pub fn write(&mut self, seq: u64, body: &[u8]) -> Result<(), SlotError> {
        if body.len() > self.room() {
            return Err(SlotError::TooLarge {
                len: body.len(),
                slot: self.slot,
            });
        }
        let path = &self.path;
        // No `create`: a missing file is an error (the caller makes a new
        // one), never a short file that would need new blocks.
        let f = crate::statefile::open_write(path).map_err(io_err(path))?;
        let size = f.metadata().map_err(io_err(path))?.len();
        if size != 2 * self.slot as u64 {
            return Err(SlotError::Size {
                path: path.to_owned(),
                size,
            });
        }
        let mut buf = Vec::with_capacity(HEADER + body.len());
        buf.extend_from_slice(&encode_header(seq, body));
        buf.extend_from_slice(body);
        let offset = (self.next * self.slot) as u64;
        f.write_all_at(&buf, offset).map_err(io_err(path))?;
        f.sync_data().map_err(io_err(path))?;
        self.newest = seq;
        self.next = 1 - self.next;
        Ok(())
    }

    /// Sequence number of the newest record written or read (0: none).
    pub fn newest(&self) -> u64 {
        self.newest
    }
}

fn checksum(seq: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&(body.len() as u32).to_le_bytes());
    h.update(body);
    h.finalize()
}

fn encode_header(seq: u64, body: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..20].copy_from_slice(&(body.len() as u32).to_le_bytes());
    h[20..24].copy_from_slice(&checksum(seq, body).to_le_bytes());
    h
}

/// The record a slot holds, if it is whole.
fn decode(slot: &[u8]) -> Option<Record> {
    let header = slot.get(..HEADER)?;
    if header[..8] != MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let len = u32::from_le_bytes(header[16..20].try_into().ok()?) as usize;
    let sum = u32::from_le_bytes(header[20..24].try_into().ok()?);
    let body = slot.get(HEADER..HEADER.checked_add(len)?)?;
    (seq > 0 && checksum(seq, body) == sum).then(|| Record {
        seq,
        body: body.to_vec(),
    })
}

/// Overwrites `bytes` at `offset` of `path` (test helper: crash images).
#[cfg(test)]
fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    f.write_all_at(bytes, offset).expect("write");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> (tempfile::TempDir, PathBuf, Slots) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.slots");
        let slots = Slots::create(&path, 100, 0o600).expect("create");
        (dir, path, slots)
    }

    fn newest(path: &Path) -> Option<Record> {
        Slots::open(path).expect("open").expect("file").1
    }

    #[test]
    fn a_missing_file_is_none_and_a_new_one_holds_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(Slots::open(&dir.path().join("x")).expect("open").is_none());
        let (_d, path, slots) = fresh();
        assert_eq!(slots.room(), MIN_SLOT - HEADER);
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            2 * MIN_SLOT as u64
        );
        assert_eq!(newest(&path), None);
    }

    #[test]
    fn writes_alternate_and_the_newest_is_read_back() {
        let (_d, path, mut slots) = fresh();
        for seq in 1..=5u64 {
            let body = format!("record {seq}").into_bytes();
            slots.write(seq, &body).expect("write");
            assert_eq!(newest(&path), Some(Record { seq, body }));
        }
        // Reopened, the next write goes to the slot of the older record.
        let (mut again, rec) = Slots::open(&path).expect("open").expect("file");
        assert_eq!(rec.map(|r| r.seq), Some(5));
        assert_eq!(again.newest(), 5);
        again.write(6, b"six").expect("write");
        assert_eq!(newest(&path).map(|r| r.seq), Some(6));
        let bytes = std::fs::read(&path).expect("read");
        let slot = bytes.len() / 2;
        let seqs: Vec<_> = [decode(&bytes[..slot]), decode(&bytes[slot..])]
            .into_iter()
            .map(|r| r.map(|r| r.seq))
            .collect();
        assert!(
            seqs.contains(&Some(5)) && seqs.contains(&Some(6)),
            "{seqs:?}"
        );
    }

    #[test]
    fn a_torn_write_leaves_the_previous_record() {
        let (_d, path, mut slots) = fresh();
        slots.write(1, b"first, durable").expect("write 1");
        slots.write(2, b"second, durable").expect("write 2");
        // A power loss while record 3 goes into slot 0 (record 1's): every
        // prefix of the write, from nothing to all but the last byte.
        let body = b"third, cut short by a power loss".to_vec();
        let mut full = encode_header(3, &body).to_vec();
        full.extend_from_slice(&body);
        for cut in 0..full.len() {
            let image = path.with_extension(format!("cut{cut}"));
            std::fs::copy(&path, &image).expect("copy");
            overwrite(&image, 0, &full[..cut]);
            let rec = newest(&image).expect("a record survives");
            assert_eq!(rec.seq, 2, "cut at {cut}");
            assert_eq!(rec.body, b"second, durable");
        }
        // And the whole write is record 3.
        overwrite(&path, 0, &full);
        assert_eq!(newest(&path).map(|r| r.seq), Some(3));
    }

    #[test]
    fn flipped_bits_are_refused() {
        let (_d, path, mut slots) = fresh();
        slots.write(1, b"older").expect("write 1");
        slots.write(2, b"newer").expect("write 2");
        let bytes = std::fs::read(&path).expect("read");
        let slot = bytes.len() / 2;
        // Record 2 is in slot 1: damage each byte of it in turn.
        for i in 0..HEADER + 5 {
            let image = path.with_extension(format!("bit{i}"));
            std::fs::write(&image, &bytes).expect("copy");
            overwrite(&image, (slot + i) as u64, &[bytes[slot + i] ^ 0x10]);
            assert_eq!(newest(&image).map(|r| r.seq), Some(1), "byte {i}");
        }
    }

    #[test]
    fn too_large_and_wrong_size_are_errors_that_name_the_problem() {
        let (_d, path, mut slots) = fresh();
        let big = vec![b'x'; slots.room() + 1];
        let e = slots.write(1, &big).expect_err("too large");
        assert!(matches!(e, SlotError::TooLarge { .. }), "{e}");
        std::fs::write(&path, b"short").expect("truncate");
        let e = slots.write(1, b"x").expect_err("size changed");
        assert!(e.to_string().contains("is not two slots"), "{e}");
        let e = Slots::open(&path).expect_err("odd size");
        assert!(e.to_string().contains("state.slots"), "{e}");
        std::fs::remove_file(&path).expect("rm");
        let e = slots.write(1, b"x").expect_err("missing");
        assert!(matches!(e, SlotError::Io { .. }), "{e}");
    }

    #[test]
    fn create_makes_room_for_a_large_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.slots");
        let mut slots = Slots::create(&path, 200_000, 0o600).expect("create");
        assert!(slots.room() >= 200_000);
        slots.write(7, &vec![b'y'; 200_000]).expect("write");
        assert_eq!(newest(&path).map(|r| r.body.len()), Some(200_000));
    }
}
