//! Protocol rule 21: a symbolic link planted in `state_dir` (by the
//! daemon's own user, who owns the directory) never makes the command line,
//! run as root, read, write or re-own the file it points to.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::cloud::CloudServer;
use common::daemon::{run_binary, write_files, Opts};
use hearthlink::audit::AUDIT_FILE;
use hearthlink::links::{LINKS_FILE, LOCK_FILE, SLOTS_FILE};

/// The uid the state dir is handed to, as a service user would own it.
const SERVICE_UID: u32 = 65534;

fn cli(args: &[&str], config: &Path) -> (Option<i32>, String, String) {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.push("--config".into());
    all.push(config.display().to_string());
    let a: Vec<&str> = all.iter().map(String::as_str).collect();
    run_binary(&a)
}

/// A victim file outside `state_dir`, its content and owner.
struct Victim {
    path: std::path::PathBuf,
    uid: u32,
}

impl Victim {
    fn plant(dir: &Path) -> Victim {
        let path = dir.join("victim");
        std::fs::write(&path, b"root's precious file\n").expect("victim");
        let uid = std::fs::metadata(&path).expect("meta").uid();
        Victim { path, uid }
    }

    fn assert_untouched(&self, what: &str) {
        assert_eq!(
            std::fs::read(&self.path).expect("victim"),
            b"root's precious file\n",
            "{what}: the file behind the link was written"
        );
        let uid = std::fs::metadata(&self.path).expect("meta").uid();
        assert_eq!(
            uid, self.uid,
            "{what}: the file behind the link was re-owned"
        );
    }
}

/// A state dir owned by the service user (when the test runs as root).
fn service_owned(state: &Path) {
    std::fs::create_dir_all(state).expect("state dir");
    // Not root: the chown attack cannot be shown, the write attack still can.
    let _ = std::os::unix::fs::chown(state, Some(SERVICE_UID), Some(SERVICE_UID));
}

#[tokio::test]
async fn offline_revoke_refuses_every_planted_link_and_names_it() {
    let cloud = CloudServer::start().await;
    for name in [SLOTS_FILE, LINKS_FILE, AUDIT_FILE, LOCK_FILE] {
        let files = write_files(&Opts::default(), 9, &cloud);
        let state = files.state_dir();
        service_owned(&state);
        let victim = Victim::plant(files.dir.path());
        std::os::unix::fs::symlink(&victim.path, state.join(name)).expect("plant");

        let (code, out, err) = cli(&["links", "revoke", "X"], &files.config_path);
        victim.assert_untouched(name);
        assert_ne!(code, Some(0), "{name}: revoke went ahead: {out} {err}");
        assert!(
            err.contains("symbolic link") && err.contains(name),
            "{name}: the error must say a link is there and name the file: {err}"
        );
    }
}

#[tokio::test]
async fn links_planted_over_existing_files_are_refused() {
    let cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), 9, &cloud);
    let state = files.state_dir();
    service_owned(&state);
    let victim = Victim::plant(files.dir.path());
    // Links planted in place of files an earlier revoke made (a link at
    // a temp file's name is src/durable.rs's unit test).
    // "first" was never granted: the revoke exits 2 and records it all the
    // same, which makes the files.
    let (code, out, err) = cli(&["links", "revoke", "first"], &files.config_path);
    assert_eq!(code, Some(2), "first revoke: {out} {err}");
    assert!(err.contains("recorded as revoked"), "first revoke: {err}");
    for name in [SLOTS_FILE, AUDIT_FILE] {
        assert!(
            state.join(name).is_file(),
            "the first revoke made no {name}"
        );
    }
    for name in [SLOTS_FILE, AUDIT_FILE] {
        let _ = std::fs::remove_file(state.join(name));
        std::os::unix::fs::symlink(&victim.path, state.join(name)).expect("plant");
        let (code, out, err) = cli(&["links", "revoke", "second"], &files.config_path);
        victim.assert_untouched(name);
        assert_ne!(code, Some(0), "{name}: {out} {err}");
        assert!(err.contains("symbolic link"), "{name}: {err}");
        std::fs::remove_file(state.join(name)).expect("unplant");
    }
}

#[tokio::test]
async fn readers_refuse_links_too() {
    let cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), 9, &cloud);
    let state = files.state_dir();
    service_owned(&state);
    let victim = Victim::plant(files.dir.path());
    std::os::unix::fs::symlink(&victim.path, state.join(AUDIT_FILE)).expect("plant audit");
    std::os::unix::fs::symlink(&victim.path, state.join(LINKS_FILE)).expect("plant links");

    let (code, out, err) = cli(&["audit", "export"], &files.config_path);
    assert_ne!(code, Some(0), "audit export read through a link: {out}");
    assert!(!out.contains("precious"), "{out}");
    assert!(err.contains("symbolic link"), "{err}");

    let (code, out, err) = cli(&["links", "list"], &files.config_path);
    assert_ne!(code, Some(0), "links list read through a link: {out}");
    assert!(err.contains("symbolic link"), "{err}");
    victim.assert_untouched("readers");
}
