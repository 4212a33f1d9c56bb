//! The privacy filter for frames sent to a link audience (protocol.md
//! section 6 and its version 1.1 rules 6.1.1 to 6.1.5).
//!
//! Why a module of its own: this is the one place that decides what a
//! third-party assistant may see, so it does no I/O and is tested on its
//! own. The relay owns a [`Policy`] built from the validated config and
//! calls [`Policy::filter`] once per JSON message for all its links, or
//! [`Policy::redact_text`] for a text message; it refuses to send a
//! message to links at all when its topic [`contains_email`], and a
//! payload that [`looks_like_json`] without being strict JSON. Its parts:
//! `keys` (what a key is matched as: words, look-alikes), `email`
//! (addresses in any dress), `text` (payloads that are not JSON).
//!
//! # Decisions where section 6 leaves room
//! - **Allow mode nests.** "Containers are kept when their key is allowed"
//!   and "allowed containers are filtered inside by the same rules": inside
//!   a kept object the *allow* rule applies again, so a nested member
//!   survives only when its own key is allowed too (`{"state":{"value":1}}`
//!   needs both `state` and `value`). An allow-list that let anything
//!   through below an allowed key would not be an allow-list. Arrays have
//!   no keys: their elements are filtered by the same rules. A top-level
//!   array is filtered the same way; the relay sends a top-level scalar to
//!   no link in allow mode (rule 6.1.4).
//! - **Fail closed on depth.** The filter recurses, bounded by
//!   [`MAX_DEPTH`] nested containers; a payload it would have to descend
//!   deeper into is refused whole ([`FilterError::TooDeep`]) rather than
//!   sent partly filtered. serde_json never produces such values (it stops
//!   at 128 levels), but values built in code can.
//! - **An allowed key that is personal** (`ownerName` in `allow_keys`) is
//!   stripped, and check-config names it.
//! - **Keys with no letter or digit** (`"-"`, `"🙂"`, `""`): check-config
//!   refuses them in either list; given to [`Policy::new`] directly, as a
//!   strip key one strips every member whose key has no letter or digit,
//!   as an allow key it is ignored. Both choices fail closed.
//! - **Decisions are remembered** per key (up to 4 096 keys of at most
//!   128 bytes, then forgotten at once): device payloads repeat the same few keys, and
//!   matching a key through the skeleton costs microseconds.
//! - Objects emptied by the filter stay as `{}`.

mod email;
mod keys;
mod text;

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Map, Value};

pub use email::{contains_email, redact_emails, REDACTED};
pub use keys::key_forms;
pub use text::looks_like_json;

/// `privacy.mode`: which members of a payload a link audience may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Remove members whose key is a strip key; keep everything else.
    #[default]
    Deny,
    /// Keep only members whose key is allowed (and not a strip key).
    Allow,
}

/// The default strip list from protocol.md section 6.
pub const DEFAULT_STRIP_KEYS: &[&str] = &[
    "email",
    "mail",
    "name",
    "firstname",
    "lastname",
    "surname",
    "fullname",
    "givenname",
    "familyname",
    "username",
    "user",
    "owner",
    "phone",
    "mobile",
    "address",
];

/// Deepest nesting the filter descends into; deeper payloads are refused (fail closed).
///
/// Counted in containers: `[[1]]` has depth 2, a scalar depth 0. serde_json
/// refuses 128 levels and more at parse time, so parsed payloads always pass.
pub const MAX_DEPTH: usize = 128;

/// Keys whose decision is remembered; the memory is cleared when full.
const KEY_MEMORY: usize = 4096;

/// Longest key remembered (4 096 of them: at most 512 KiB).
const KEY_MEMORY_KEY_BYTES: usize = 128;

/// Why a payload must not be sent to a link audience at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The payload nests deeper than the filter descends.
    #[error("privacy filter: payload nests deeper than {limit} levels, not sent to links")]
    TooDeep {
        /// The limit, [`MAX_DEPTH`].
        limit: usize,
    },
}

/// A ready-to-use filter: the match forms of one config's key lists.
#[derive(Debug)]
pub struct Policy {
    mode: Mode,
    /// Forms of the defaults and the configured strip keys; sorted.
    strip: Vec<String>,
    /// Forms of the allowed keys that are not strip keys; sorted.
    allow: Vec<String>,
    /// Configured allowed keys that are also strip keys (stripped; check-config warns).
    conflicts: Vec<String>,
    /// Decisions already taken, by key: device payloads repeat their keys.
    decided: Mutex<HashMap<Box<str>, bool, foldhash::fast::RandomState>>,
}

impl Clone for Policy {
    fn clone(&self) -> Self {
        Policy {
            mode: self.mode,
            strip: self.strip.clone(),
            allow: self.allow.clone(),
            conflicts: self.conflicts.clone(),
            decided: Mutex::default(),
        }
    }
}

impl Default for Policy {
    /// Deny mode with the default strip list.
    fn default() -> Self {
        Policy::new(Mode::Deny, &[], &[])
    }
}

fn sorted(mut forms: Vec<String>) -> Vec<String> {
    forms.sort_unstable();
    forms.dedup();
    forms
}

impl Policy {
    /// extra_strip_keys EXTENDS the default list; allow_keys only used in Allow mode.
    pub fn new(mode: Mode, extra_strip_keys: &[String], allow_keys: &[String]) -> Policy {
        let strip = sorted(
            DEFAULT_STRIP_KEYS
                .iter()
                .copied()
                .chain(extra_strip_keys.iter().map(String::as_str))
                .flat_map(key_forms)
                .collect(),
        );
        let mut policy = Policy {
            mode,
            strip,
            allow: Vec::new(),
            conflicts: Vec::new(),
            decided: Mutex::default(),
        };
        let (conflicts, allowed): (Vec<&String>, Vec<&String>) =
            allow_keys.iter().partition(|k| policy.is_personal(k));
        policy.conflicts = conflicts.into_iter().cloned().collect();
        policy.allow = sorted(
            allowed
                .into_iter()
                .flat_map(|k| key_forms(k))
                .filter(|f| !f.is_empty())
                .collect(),
        );
        policy
    }

    /// The mode this policy filters in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The forms the allowed keys that are not stripped are matched as, sorted.
    pub fn allow_keys(&self) -> &[String] {
        &self.allow
    }

    /// Configured allowed keys that are also strip keys (check-config warns about them).
    pub fn conflicting_keys(&self) -> Vec<String> {
        self.conflicts.clone()
    }

    /// Filters a payload for a link audience. None = must not be sent at all (too deep, etc.: fail closed).
    pub fn filter(&self, value: &Value) -> Option<Value> {
        self.try_filter(value).ok()
    }

    /// [`Policy::filter`] that says why a payload is refused, for logging.
    pub fn try_filter(&self, value: &Value) -> Result<Value, FilterError> {
        self.filter_at(value, 0)
    }

    /// True when the key or one of its words is a strip key (rules 6.1.1, 6.1.2).
    pub fn is_personal(&self, key: &str) -> bool {
        let prepared = keys::prepare(key);
        self.personal_prepared(&prepared, &keys::forms(&prepared))
    }

    /// [`Policy::is_personal`] of a prepared key whose whole forms are known.
    fn personal_prepared(&self, prepared: &str, whole: &[String; 2]) -> bool {
        any_listed(&self.strip, whole)
            || keys::words(prepared).any(|w| any_listed(&self.strip, &keys::forms(w)))
    }

    /// True when a member with this key survives the filter (its value is
    /// then filtered in turn).
    pub fn keeps_key(&self, key: &str) -> bool {
        let remembered = self.decided.lock().ok().and_then(|d| d.get(key).copied());
        if let Some(kept) = remembered {
            return kept;
        }
        let kept = self.decide(key);
        if key.len() > KEY_MEMORY_KEY_BYTES {
            return kept; // not remembered: the memory stays small
        }
        if let Ok(mut decided) = self.decided.lock() {
            if decided.len() >= KEY_MEMORY {
                decided.clear();
            }
            decided.insert(key.into(), kept);
        }
        kept
    }

    fn decide(&self, key: &str) -> bool {
        if contains_email(key) {
            return false;
        }
        let prepared = keys::prepare(key);
        let whole = keys::forms(&prepared);
        if self.personal_prepared(&prepared, &whole) {
            return false;
        }
        match self.mode {
            Mode::Deny => true,
            Mode::Allow => any_listed(&self.allow, &whole),
        }
    }

    /// `depth` = containers already entered above `value`.
    fn filter_at(&self, value: &Value, depth: usize) -> Result<Value, FilterError> {
        Ok(match value {
            Value::String(s) => Value::String(redact_emails(s).into_owned()),
            Value::Array(items) => {
                let inner = enter(depth)?;
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.push(self.filter_at(item, inner)?);
                }
                Value::Array(out)
            }
            Value::Object(members) => {
                let inner = enter(depth)?;
                let mut out = Map::with_capacity(members.len());
                for (key, member) in members {
                    if self.keeps_key(key) {
                        out.insert(key.clone(), self.filter_at(member, inner)?);
                    }
                }
                Value::Object(out)
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => value.clone(),
        })
    }
}

/// True when one of `forms` is in the sorted `list`.
fn any_listed(list: &[String], forms: &[String; 2]) -> bool {
    forms.iter().any(|f| list.binary_search(f).is_ok())
}

/// Depth inside a container entered at `depth`, or the refusal.
fn enter(depth: usize) -> Result<usize, FilterError> {
    let inner = depth + 1;
    if inner > MAX_DEPTH {
        Err(FilterError::TooDeep { limit: MAX_DEPTH })
    } else {
        Ok(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::borrow::Cow;

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn spellings_of_email_match_email() {
        let policy = Policy::default();
        for key in [
            "E-Mail",
            "e_mail",
            "EMAIL",
            "Émail",
            "ＥＭＡＩＬ",
            "e.mail",
            " e mail ",
            "E\u{301}mail",
            "\u{435}mail",
            "\u{1d07}mail",
            "ema\u{131}l",
            "e\u{200b}mail",
        ] {
            assert!(policy.is_personal(key), "{key:?}");
        }
        let shared = |a: &str, b: &str| key_forms(a).iter().any(|f| key_forms(b).contains(f));
        assert!(shared("ΟΔΟΣ", "οδος") && shared("ΟΔΟΣ", "οδοσ"));
        assert!(shared("İD", "id"));
        let greek = Policy::new(Mode::Deny, &keys(&["οδος"]), &[]);
        assert!(greek.is_personal("ΟΔΟΣ") && greek.is_personal("Οδός"));
    }

    #[test]
    fn compound_keys_are_stripped_by_their_words() {
        let policy = Policy::default();
        for key in [
            "ownerName",
            "display_name",
            "homeAddress",
            "user-email",
            "contactPhone2",
            "username2",
            "user_id",
        ] {
            assert!(policy.is_personal(key), "{key:?}");
        }
        for key in [
            "filename",
            "hostname",
            "rename",
            "emailaddress",
            "nickname",
            "value",
        ] {
            assert!(!policy.is_personal(key), "{key:?}");
        }
        let allow = Policy::new(Mode::Allow, &[], &keys(&["ownerName", "value"]));
        assert_eq!(allow.conflicting_keys(), ["ownerName".to_owned()]);
        let input = json!({"ownerName": "Jo", "value": 1, "valueOwner": 2});
        assert_eq!(allow.filter(&input), Some(json!({"value": 1})));
    }

    #[test]
    fn remembered_decisions_match_fresh_ones() {
        let policy = Policy::default();
        for _ in 0..2 {
            for i in 0..(KEY_MEMORY + 10) {
                let key = if i % 3 == 0 {
                    format!("owner{i}")
                } else {
                    format!("k{i}")
                };
                assert_eq!(policy.keeps_key(&key), policy.decide(&key), "{key}");
            }
        }
        assert!(policy
            .decided
            .lock()
            .map(|d| d.len() <= KEY_MEMORY)
            .unwrap_or(false));
    }

    #[test]
    fn deny_strips_at_any_depth_and_inside_arrays() {
        let policy = Policy::default();
        let input = json!({
            "value": 1,
            "Owner": "x",
            "rooms": [{"name": "kitchen", "temp": 21}, {"E-Mail": "a@b.de", "on": true}],
            "meta": {"deep": {"Phone_Number": 1, "phone": 2, "username2": 3, "telephone": 4}}
        });
        let expected = json!({
            "value": 1,
            "rooms": [{"temp": 21}, {"on": true}],
            "meta": {"deep": {"telephone": 4}}
        });
        assert_eq!(policy.filter(&input), Some(expected));
    }

    #[test]
    fn configured_strip_keys_extend_the_defaults() {
        let policy = Policy::new(Mode::Deny, &keys(&["Geo-Location"]), &[]);
        let input = json!({"geolocation": [1, 2], "name": "x", "v": 1});
        assert_eq!(policy.filter(&input), Some(json!({"v": 1})));
    }

    #[test]
    fn allow_keeps_only_allowed_members_recursively() {
        let allow = keys(&["State", "value", "list", "E-Mail"]);
        let policy = Policy::new(Mode::Allow, &[], &allow);
        assert_eq!(policy.conflicting_keys(), vec!["E-Mail".to_owned()]);
        let input = json!({
            "state": {"value": 1, "secret": 2, "email": "x"},
            "list": [{"value": "a@b.de", "other": 1}, 3, "mail me at x@y.org"],
            "email": "x",
            "other": {"value": 1}
        });
        let expected = json!({
            "state": {"value": 1},
            "list": [{"value": "[redacted]"}, 3, "mail me at [redacted]"]
        });
        assert_eq!(policy.filter(&input), Some(expected));
        assert_eq!(policy.filter(&json!(5)), Some(json!(5)));
    }

    #[test]
    fn keys_without_letters_or_digits() {
        let strict = Policy::new(Mode::Deny, &keys(&["-"]), &[]);
        let input = json!({"": 1, "🙂": 2, "--": 3, "v": 4});
        assert_eq!(strict.filter(&input), Some(json!({"v": 4})));
        let allow = Policy::new(Mode::Allow, &[], &keys(&["🙂", "v"]));
        assert_eq!(allow.allow_keys(), ["v".to_owned()]);
        assert_eq!(allow.filter(&input), Some(json!({"v": 4})));
    }

    #[test]
    fn email_keys_are_removed_and_values_redacted_in_both_modes() {
        for policy in [
            Policy::default(),
            Policy::new(Mode::Allow, &[], &keys(&["v", "jo@x.com"])),
        ] {
            let input = json!({"jo@x.com": 1, "v": "write to jo@x.com or ann@y.org"});
            let expected = json!({"v": "write to [redacted] or [redacted]"});
            assert_eq!(policy.filter(&input), Some(expected));
        }
        let top = json!("ping jo@x.com");
        assert_eq!(
            Policy::default().filter(&top),
            Some(json!("ping [redacted]"))
        );
    }

    #[test]
    fn email_examples() {
        for s in [
            "john.doe+tag@mail.example.co.uk",
            "Jürgen@beispiel.de",
            "J\u{fc}rgen@beispiel.DE",
            "Ju\u{308}rgen@be\u{301}.de",
            "please mail john@example.com today",
            "x@y.cc",
            "a@b.com1",
            "用户@例子.广告",
            "A_B%C-D@sub-1.EXAMPLE.org.",
        ] {
            assert!(contains_email(s), "{s:?}");
        }
        for s in [
            "a@b",
            "x@y.c",
            "@example.com",
            "a@.com",
            "a@b..com",
            "a@b.c0m",
            "a@b.1com",
            "a @b.com",
            "a@ b.com",
            "user@localhost",
            "",
            "@",
            "a@b.c.d",
        ] {
            assert!(!contains_email(s), "{s:?}");
            assert!(matches!(redact_emails(s), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn redaction_replaces_whole_addresses() {
        let cases = [
            ("Jürgen@beispiel.de", "[redacted]"),
            ("Ju\u{308}rgen@beispiel.de!", "[redacted]!"),
            ("to: a@b.com, c.d@e.fr.", "to: [redacted], [redacted]."),
            ("a@b.com@c.de", "[redacted]@c.de"),
            ("a@b.com1x@c.de", "[redacted][redacted]"),
            ("a@b.com.x", "[redacted].x"),
            ("x@y.c and a@b", "x@y.c and a@b"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_emails(input), expected, "{input:?}");
        }
    }

    #[test]
    fn scanner_is_linear_on_adversarial_input() {
        let inputs = [
            "a@".repeat(60_000),
            "a".repeat(120_000),
            format!("{}@", "a.".repeat(60_000)),
            format!("a@{}", "b.".repeat(60_000)),
            "a@b.".repeat(30_000),
            "a@b.cc".repeat(20_000),
        ];
        let started = std::time::Instant::now();
        for input in &inputs {
            let redacted = redact_emails(input);
            assert!(!contains_email(&redacted));
        }
        // Quadratic behaviour would take minutes here; linear takes milliseconds.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    fn nested(depth: usize) -> Value {
        let mut v = json!({"name": "x", "v": 1});
        for i in 1..depth {
            v = if i % 2 == 0 {
                json!([v])
            } else {
                json!({ "n": v })
            };
        }
        v
    }

    #[test]
    fn depth_fails_closed() {
        let policy = Policy::default();
        assert!(policy.filter(&nested(MAX_DEPTH)).is_some());
        assert_eq!(
            policy.try_filter(&nested(MAX_DEPTH + 1)),
            Err(FilterError::TooDeep { limit: MAX_DEPTH })
        );
        assert!(policy.filter(&nested(1_000)).is_none());
        // Depth is only refused where the filter has to descend.
        let dropped = json!({"owner": nested(MAX_DEPTH + 5), "v": 1});
        assert_eq!(policy.filter(&dropped), Some(json!({"v": 1})));
    }

    #[test]
    fn parsed_payloads_are_never_too_deep() {
        let text = format!("{}{}", "[".repeat(127), "]".repeat(127));
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(value.is_array());
        assert!(Policy::default().filter(&value).is_some());
    }

    #[test]
    fn mode_parses_lowercase() {
        let mode: Result<Mode, _> = serde_json::from_str("\"allow\"");
        assert_eq!(mode.ok(), Some(Mode::Allow));
        assert_eq!(Mode::default(), Mode::Deny);
    }
}
