//! Topic filter matching against a reference written from the MQTT rules
//! (levels split on `/`, `+` one level, `#` the rest, `$` topics only by
//! filters that name them), for filters and names the validators accept.
#![no_main]

use hearthlink::topic::{matches, validate_filter, validate_name};
use libfuzzer_sys::fuzz_target;

fn reference(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    for (i, level) in f.iter().enumerate() {
        match *level {
            "#" => return true,
            "+" if i < t.len() => {}
            l if t.get(i) == Some(&l) => {}
            _ => return false,
        }
    }
    f.len() == t.len()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (filter, topic) = text.split_once('\n').unwrap_or((text, "a/b"));
    let got = matches(filter, topic);
    if validate_filter(filter).is_ok() && validate_name(topic).is_ok() {
        assert_eq!(got, reference(filter, topic), "{filter:?} vs {topic:?}");
    }
});
