//! Config parsing: any TOML text (and one environment override made of
//! its first line) is loaded or refused with an error naming a key;
//! nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = text
        .lines()
        .next()
        .and_then(|l| l.split_once('='))
        .map(|(k, v)| (format!("HEARTHLINK__{k}"), v.to_owned()));
    let _ = hearthlink::config::from_toml_str(text, env);
});
