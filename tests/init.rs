//! `hearthlink init` as a library call: the files it writes, their modes,
//! that the config loads, and that nothing is overwritten without `force`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hearthlink::config::{self, Secret};
use hearthlink::init::{init, InitError, InitOptions};

fn options(dir: &Path, token: Option<&str>, force: bool) -> InitOptions {
    InitOptions {
        gateway_id: "attic-gw.01".into(),
        cloud_url: "wss://cloud.example.com/v1/gateway".into(),
        // A directory init has to create, as /etc/hearthlink on a new system.
        token_file: dir.join("etc/token"),
        config: dir.join("etc/hearthlink.toml"),
        token: token.map(Secret::new),
        force,
        subscribe: Vec::new(),
        command_topics: Vec::new(),
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn writes_config_and_token_that_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = options(dir.path(), Some("s3cret-token\n"), false);
    let written = init(&o).expect("init");
    assert_eq!(written, vec![o.token_file.clone(), o.config.clone()]);

    assert_eq!(mode(&o.token_file), 0o600);
    assert_eq!(mode(&o.config), 0o644);
    assert_eq!(
        fs::read_to_string(&o.token_file).expect("token"),
        "s3cret-token\n"
    );
    let text = fs::read_to_string(&o.config).expect("config");
    assert!(
        text.contains("# Every key is listed."),
        "comments kept: {text}"
    );

    let loaded = config::load(&o.config).expect("written config loads");
    let c = loaded.config;
    assert_eq!(c.gateway_id, "attic-gw.01");
    assert_eq!(c.cloud.url.as_str(), "wss://cloud.example.com/v1/gateway");
    assert_eq!(c.cloud.token_file, o.token_file);
    assert_eq!(c.mqtt.client_id, "hearthlink-attic-gw.01");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let names: Vec<_> = fs::read_dir(dir.path().join("etc"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temp files left: {names:?}");
}

#[test]
fn second_run_refuses_without_force_and_leaves_files_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    init(&options(dir.path(), Some("first"), false)).expect("first init");
    let o = options(dir.path(), Some("second"), false);
    let config_before = fs::read(&o.config).expect("config");

    let e = init(&InitOptions {
        gateway_id: "other".into(),
        ..o.clone()
    })
    .expect_err("config exists");
    assert!(matches!(&e, InitError::Exists { path } if *path == o.config));
    assert!(
        e.to_string().contains("hearthlink.toml already exists"),
        "{e}"
    );
    assert!(e.to_string().contains("--force"), "{e}");

    // The token alone is also protected: a config that is gone is no licence.
    fs::remove_file(&o.config).expect("rm config");
    let e = init(&o).expect_err("token exists");
    assert!(matches!(&e, InitError::Exists { path } if *path == o.token_file));
    assert!(!o.config.exists(), "nothing written when a check fails");
    assert_eq!(fs::read_to_string(&o.token_file).expect("token"), "first\n");
    fs::write(&o.config, &config_before).expect("restore");

    // Without a token, the token file is not touched and not a reason to stop,
    // but the config still is.
    let e = init(&options(dir.path(), None, false)).expect_err("config exists");
    assert!(matches!(e, InitError::Exists { .. }));
    assert_eq!(fs::read(&o.config).expect("config"), config_before);
}

#[test]
fn force_overwrites_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    init(&options(dir.path(), Some("first"), false)).expect("first init");
    let o = options(dir.path(), Some("second"), true);
    fs::set_permissions(&o.token_file, fs::Permissions::from_mode(0o644)).expect("chmod");
    let o = InitOptions {
        gateway_id: "gw-new".into(),
        ..o
    };
    assert_eq!(init(&o).expect("forced init").len(), 2);
    assert_eq!(
        fs::read_to_string(&o.token_file).expect("token"),
        "second\n"
    );
    assert_eq!(mode(&o.token_file), 0o600, "a forced write resets the mode");
    let c = config::load(&o.config).expect("loads").config;
    assert_eq!(c.gateway_id, "gw-new");
}

#[test]
fn bad_input_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = options(dir.path(), Some("tok"), false);
    let bad_id = InitOptions {
        gateway_id: "no spaces".into(),
        ..o.clone()
    };
    let e = init(&bad_id).expect_err("bad id");
    assert!(e.to_string().contains("config key `gateway_id`"), "{e}");
    let bad_url = InitOptions {
        cloud_url: "http://cloud.example.com".into(),
        ..o.clone()
    };
    let e = init(&bad_url).expect_err("bad url");
    assert!(e.to_string().contains("config key `cloud.url`"), "{e}");
    let bad_token = InitOptions {
        token: Some(Secret::new("two\nlines")),
        ..o
    };
    assert!(matches!(init(&bad_token), Err(InitError::BadToken { .. })));
    assert!(!dir.path().join("etc").exists());
}

#[test]
fn config_without_token_is_written_and_loads_once_the_token_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = options(dir.path(), None, false);
    assert_eq!(init(&o).expect("init"), vec![o.config.clone()]);
    assert!(!o.token_file.exists());
    let e = config::load(&o.config).expect_err("no token yet");
    assert_eq!(e.key(), Some("cloud.token_file"));
    fs::write(&o.token_file, "later\n").expect("token");
    fs::set_permissions(&o.token_file, fs::Permissions::from_mode(0o600)).expect("chmod");
    config::load(&o.config).expect("loads with the token");
}

/// Issue 16 item 22: a Zigbee2MQTT home relays its topics when init is
/// told them; a bad filter is refused naming the key, and nothing is
/// written. Before, init had no way to set either list.
#[test]
fn subscribe_and_command_topics_are_written_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = InitOptions {
        subscribe: vec!["zigbee2mqtt/#".into(), "tele/+/SENSOR".into()],
        command_topics: vec!["zigbee2mqtt/+/set".into()],
        ..options(dir.path(), Some("tok"), false)
    };
    init(&o).expect("init");
    let text = fs::read_to_string(&o.config).expect("config");
    assert!(
        text.contains("\nsubscribe = [\"zigbee2mqtt/#\", \"tele/+/SENSOR\"]\n"),
        "{text}"
    );
    assert!(
        text.contains("\ncommand_topics = [\"zigbee2mqtt/+/set\"]\n"),
        "{text}"
    );
    let loaded = hearthlink::config::load(&o.config).expect("loads");
    assert_eq!(
        loaded.config.mqtt.subscribe,
        ["zigbee2mqtt/#", "tele/+/SENSOR"]
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = InitOptions {
        subscribe: vec!["zigbee2mqtt/#/x".into()],
        ..options(dir.path(), Some("tok"), false)
    };
    let e = init(&bad).expect_err("bad filter");
    assert!(e.to_string().contains("mqtt.subscribe"), "{e}");
    assert!(!bad.config.exists(), "nothing written");
}
