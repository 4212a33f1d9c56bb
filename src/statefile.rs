//! Opening files in `state_dir` without following links (protocol rule 21).
//!
//! The daemon's user owns `state_dir`, and root runs the command line on it
//! (`links revoke`, `audit export`). A symbolic link that user planted there
//! must not make root read, write, re-own or re-mode the file it points to.
//! So every file in `state_dir` is opened here, with `O_NOFOLLOW` (a link as
//! the last path component fails instead of being followed), and ownership
//! and mode are changed through a descriptor, never by path. Renames and
//! unlinks act on a link itself, not on its target, and need nothing more.
//!
//! A refused link comes back as an [`io::Error`] whose message says so, so
//! the caller's error (which names the file) reads "…: a symbolic link is
//! there; files in state_dir are never followed through links".

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    o
}

/// ELOOP from `O_NOFOLLOW` turned into words.
fn explain(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        io::Error::other(
            "a symbolic link is there; files in state_dir are never followed through links",
        )
    } else {
        e
    }
}

fn open(o: &OpenOptions, path: &Path) -> io::Result<File> {
    o.open(path).map_err(explain)
}

/// Opens an existing file for reading.
pub fn open_read(path: &Path) -> io::Result<File> {
    open(options().read(true), path)
}

/// Opens an existing file for writing in place (never creates it).
pub fn open_write(path: &Path) -> io::Result<File> {
    open(options().write(true), path)
}

/// Opens a file for appending (and reading), creating it with `mode`.
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    open(
        options().read(true).append(true).create(true).mode(mode),
        path,
    )
}

/// Opens a file for writing without truncating it, creating it with
/// `mode` (a lock file).
pub fn open_or_create(path: &Path, mode: u32) -> io::Result<File> {
    open(
        options()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode),
        path,
    )
}

/// Creates a new file with `mode`; fails if anything (a link included) is
/// at `path`.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    open(options().write(true).create_new(true).mode(mode), path)
}

/// The whole content of a file.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_read(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The whole content of a UTF-8 file.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    open_read(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// Opens a directory (to fsync it after a rename).
pub fn open_dir(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC);
    o.open(path)
}

/// Hands the file at `path` to `uid`:`gid`, through its descriptor.
pub fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::fchown(open_read(path)?, Some(uid), Some(gid))
}

/// Sets the mode of a file that cannot be opened for reading (a Unix
/// socket): through an `O_PATH` descriptor, refusing a link.
pub fn chmod_unopenable(path: &Path, mode: u32) -> io::Result<()> {
    let mut o = options();
    o.read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC);
    let f = open(&o, path)?;
    if f.metadata()?.file_type().is_symlink() {
        return Err(explain(io::Error::from_raw_os_error(libc::ELOOP)));
    }
    // `chmod` on the descriptor's /proc entry changes the file the
    // descriptor holds, not whatever is at `path` now.
    let by_fd = format!("/proc/self/fd/{}", f.as_raw_fd());
    std::fs::set_permissions(by_fd, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn planted() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        let link = dir.path().join("links.slots");
        symlink(&victim, &link).expect("symlink");
        (dir, victim, link)
    }

    fn assert_refused(r: io::Result<impl std::fmt::Debug>) {
        let e = r.expect_err("a link must be refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    #[test]
    fn every_open_refuses_a_link_and_leaves_the_target_alone() {
        let (_dir, victim, link) = planted();
        assert_refused(open_read(&link));
        assert_refused(open_write(&link));
        assert_refused(open_append(&link, 0o600));
        assert_refused(open_or_create(&link, 0o600));
        assert_refused(read(&link));
        assert_refused(read_to_string(&link));
        assert_refused(chown(&link, 0, 0));
        assert_refused(chmod_unopenable(&link, 0o600));
        assert!(create_new(&link, 0o600).is_err());
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        let mode = std::fs::metadata(&victim)
            .expect("meta")
            .permissions()
            .mode();
        assert_ne!(mode & 0o777, 0o600, "the victim's mode changed");
    }

    #[test]
    fn plain_files_open_as_usual() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("audit.jsonl");
        use std::io::Write;
        open_append(&p, 0o600)
            .expect("create")
            .write_all(b"x")
            .expect("w");
        assert_eq!(read(&p).expect("read"), b"x");
        open_or_create(&p, 0o600).expect("reopen");
        chmod_unopenable(&p, 0o640).expect("chmod");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }
}
