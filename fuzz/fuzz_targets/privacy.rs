//! The privacy filter with its invariant checked inside the target
//! (protocol section 6 and rules 6.1.1 to 6.1.5): no member whose key or
//! one of its words is a strip key, no address in any key or string, in
//! deny and allow mode, for JSON and for text; the filter is idempotent.
#![no_main]

use hearthlink::privacy::{contains_email, looks_like_json, Mode, Policy};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::LazyLock;

static POLICIES: LazyLock<[Policy; 2]> = LazyLock::new(|| {
    let allow: Vec<String> = ["value", "state", "t", "list"].map(String::from).to_vec();
    [
        Policy::new(Mode::Deny, &["iban".to_owned()], &[]),
        Policy::new(Mode::Allow, &[], &allow),
    ]
});

fn check(policy: &Policy, v: &Value) {
    match v {
        Value::String(s) => assert!(!contains_email(s), "address in {s:?}"),
        Value::Array(items) => items.iter().for_each(|x| check(policy, x)),
        Value::Object(members) => {
            for (k, x) in members {
                assert!(!policy.is_personal(k), "personal key {k:?}");
                assert!(!contains_email(k), "address in key {k:?}");
                check(policy, x);
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for policy in POLICIES.iter() {
        if let Ok(value) = serde_json::from_str::<Value>(text) {
            if let Some(out) = policy.filter(&value) {
                check(policy, &out);
                assert_eq!(policy.filter(&out).as_ref(), Some(&out), "not idempotent");
            }
        } else if !looks_like_json(text) && policy.mode() == Mode::Deny {
            let out = policy.redact_text(text);
            assert!(!contains_email(&out), "address in text {out:?}");
        }
    }
});
