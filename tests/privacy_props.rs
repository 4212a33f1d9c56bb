//! Property tests for the privacy filter (protocol.md section 6, its
//! version 1.1 rules 6.1.1 to 6.1.5, and rule 8.13).
//!
//! The oracle here is written independently of `src/privacy/`: its own
//! key preparation (string-level NFKD, marks and invisible characters by
//! the regex crate's Unicode properties), its own word split (regular
//! expressions), small capitals read from the characters' Unicode names,
//! and its own email test (a `regex` on a string-level NFKC fold). Only
//! the UTS #39 skeleton comes from the same crate as in the daemon.
//! Payloads are random nested JSON with personal keys planted in many
//! spellings (compounds, look-alikes, invisible characters), near-miss
//! keys that must survive, and email addresses in many dresses planted in
//! values and keys.

use std::collections::HashSet;
use std::sync::LazyLock;

use hearthlink::privacy::{contains_email, key_forms, redact_emails, Mode, Policy, MAX_DEPTH};
use proptest::prelude::*;
use proptest::test_runner::RngAlgorithm;
use regex::Regex;
use serde_json::{Map, Number, Value};
use unicode_normalization::UnicodeNormalization;

const CASES: u32 = 5000;

// ---------------------------------------------------------------- oracle

fn rx(pattern: &str) -> Regex {
    Regex::new(pattern).expect("oracle regex compiles")
}

/// Rule 8.13 widened by rule 6.1.3 (quoted local parts, address literals).
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    rx(concat!(
        r#"(?:[\p{Alphabetic}\p{N}\p{M}._%+\-]+|"[^"\\\n]{1,64}")@"#,
        r"(?:(?:[\p{Alphabetic}\p{N}\p{M}\-]+\.)+[\p{Alphabetic}\p{M}]{2,}",
        r"|\[(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[iI][pP][vV]6:[0-9A-Fa-f:.]+)\])",
    ))
});
static INVISIBLE: LazyLock<Regex> = LazyLock::new(|| rx(r"\p{Default_Ignorable_Code_Point}"));
static ESCAPE: LazyLock<Regex> = LazyLock::new(|| rx(r"%(?:40|2[eE])"));

/// Rule 6.1.3's folded copy, string at a time.
fn oracle_fold(s: &str) -> String {
    let nfkc: String = s.nfkc().collect();
    let stops = nfkc.replace(['\u{3002}', '\u{ff61}'], ".");
    let visible = INVISIBLE.replace_all(&stops, "");
    ESCAPE
        .replace_all(
            &visible,
            |c: &regex::Captures| {
                if &c[0] == "%40" {
                    "@"
                } else {
                    "."
                }
            },
        )
        .into_owned()
}

fn oracle_has_email(s: &str) -> bool {
    thread_local! {
        static SEEN: std::cell::RefCell<std::collections::HashMap<String, bool>> = Default::default();
    }
    if let Some(known) = SEEN.with(|m| m.borrow().get(s).copied()) {
        return known;
    }
    let has = EMAIL.is_match(&oracle_fold(s));
    SEEN.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() > 100_000 {
            m.clear();
        }
        m.insert(s.to_owned(), has);
    });
    has
}

static MARKS: LazyLock<Regex> = LazyLock::new(|| rx(r"[\p{M}\p{Default_Ignorable_Code_Point}]"));
static NOT_LETTER_OR_DIGIT: LazyLock<Regex> = LazyLock::new(|| rx(r"[^\p{Alphabetic}\p{N}]+"));
static BOUNDARIES: LazyLock<[Regex; 3]> = LazyLock::new(|| {
    [
        rx(r"(\p{Lowercase})(\p{Uppercase})"),
        rx(r"(\p{Alphabetic})([\p{N}--\p{Alphabetic}])"),
        rx(r"([\p{N}--\p{Alphabetic}])(\p{Alphabetic})"),
    ]
});

/// Rule 6.1.2's preparation: NFKD, marks and invisible characters gone.
fn oracle_prepare(key: &str) -> String {
    let nfkd: String = key.nfkd().collect();
    MARKS.replace_all(&nfkd, "").replace('ς', "σ")
}

/// Rule 6.1.1's words: split at boundaries, then at what is not a letter or digit.
fn oracle_words(prepared: &str) -> Vec<String> {
    let mut spaced = prepared.to_owned();
    for b in BOUNDARIES.iter() {
        loop {
            let next = b.replace_all(&spaced, "$1 $2").into_owned();
            if next == spaced {
                break;
            }
            spaced = next;
        }
    }
    NOT_LETTER_OR_DIGIT
        .split(&spaced)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Letters and digits of `s`, marks dropped. Letters and digits by the
/// standard library's tables here: the skeleton maps some characters to
/// ones newer than the regex crate's Unicode tables know (`愸` to U+2B73F),
/// and which Unicode version says "letter" is not what this oracle checks.
fn letters_and_digits(s: &str) -> String {
    MARKS
        .replace_all(s, "")
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// Latin small capitals read as their letters, by the character's name.
fn small_capitals(s: &str) -> String {
    s.chars()
        .map(|c| {
            let name = unicode_names2::name(c).map(|n| n.to_string());
            match name
                .as_deref()
                .and_then(|n| n.strip_prefix("LATIN LETTER SMALL CAPITAL "))
            {
                Some(l)
                    if (1..=2).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_uppercase()) =>
                {
                    l.to_lowercase()
                }
                _ => c.to_string(),
            }
        })
        .collect()
}

fn oracle_skeleton(s: &str) -> String {
    let skeleton = |s: String| unicode_security::skeleton(&small_capitals(&s)).collect::<String>();
    skeleton(skeleton(s.to_owned()))
}

fn oracle_lower(s: &str) -> String {
    s.to_lowercase().replace('ς', "σ")
}

/// The two match forms of a piece (see src/privacy/keys.rs's docs for the why).
fn oracle_forms(piece: &str) -> [String; 2] {
    let p = letters_and_digits(piece);
    let first = oracle_lower(&oracle_skeleton(&oracle_lower(&p)));
    let second = oracle_lower(&oracle_skeleton(&oracle_lower(&oracle_skeleton(&p))));
    [letters_and_digits(&first), letters_and_digits(&second)]
}

/// The default list as written in protocol.md section 6.
const SPEC_DEFAULTS: &str = "email, mail, name, firstname, lastname, surname, fullname, \
     givenname, familyname, username, user, owner, phone, mobile, address";

const EXTRA_STRIP: &[&str] = &["IBAN", "Geo-Location", "S.S.N"];
const ALLOW: &[&str] = &[
    "value",
    "State",
    "brightness",
    "temperature",
    "list",
    "data",
    "Attributes",
    "E-Mail",
    "ON",
    "température",
    "温度",
    "🙂",
];

struct Oracle {
    mode: Mode,
    strip: HashSet<String>,
    allow: HashSet<String>,
    /// `personal` by key: the oracle is slow, and deep chains repeat keys.
    memo: std::sync::Mutex<std::collections::HashMap<String, bool>>,
}

impl Oracle {
    fn new(mode: Mode, extra: &[&str], allow: &[&str]) -> (Policy, Oracle) {
        let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let policy = Policy::new(mode, &owned(extra), &owned(allow));
        let strip = SPEC_DEFAULTS
            .split(", ")
            .chain(extra.iter().copied())
            .flat_map(|k| oracle_forms(&oracle_prepare(k)))
            .collect();
        let mut oracle = Oracle {
            mode,
            strip,
            allow: HashSet::new(),
            memo: Default::default(),
        };
        let allowed: Vec<&&str> = allow.iter().filter(|k| !oracle.personal(k)).collect();
        oracle.allow = allowed
            .into_iter()
            .flat_map(|k| oracle_forms(&oracle_prepare(k)))
            .filter(|k| !k.is_empty())
            .collect();
        (policy, oracle)
    }

    /// `f()`, remembered under `key`.
    fn memoized(&self, key: String, f: impl FnOnce() -> bool) -> bool {
        if let Some(known) = self.memo.lock().ok().and_then(|m| m.get(&key).copied()) {
            return known;
        }
        let value = f();
        if let Ok(mut memo) = self.memo.lock() {
            memo.insert(key, value);
        }
        value
    }

    /// Rules 6.1.1 and 6.1.2: the whole key or one of its words is listed.
    fn personal(&self, key: &str) -> bool {
        self.memoized(format!("personal:{key}"), || {
            let prepared = oracle_prepare(key);
            std::iter::once(prepared.clone())
                .chain(oracle_words(&prepared))
                .any(|piece| oracle_forms(&piece).iter().any(|f| self.strip.contains(f)))
        })
    }

    fn allowed(&self, key: &str) -> bool {
        self.memoized(format!("allowed:{key}"), || {
            oracle_forms(&oracle_prepare(key))
                .iter()
                .any(|f| self.allow.contains(f))
        })
    }

    fn keeps(&self, key: &str) -> bool {
        let allowed = match self.mode {
            Mode::Deny => true,
            Mode::Allow => self.allowed(key),
        };
        allowed && !self.personal(key) && !oracle_has_email(key)
    }

    /// Reference filter with string values left as they are (see
    /// [`same_as_oracle`]); None when it would descend past MAX_DEPTH.
    fn filter(&self, v: &Value, depth: usize) -> Option<Value> {
        let inner = depth + 1;
        match v {
            Value::Array(items) if inner <= MAX_DEPTH => items
                .iter()
                .map(|x| self.filter(x, inner))
                .collect::<Option<Vec<_>>>()
                .map(Value::Array),
            Value::Object(members) if inner <= MAX_DEPTH => {
                let mut out = Map::new();
                for (k, x) in members.iter().filter(|(k, _)| self.keeps(k)) {
                    out.insert(k.clone(), self.filter(x, inner)?);
                }
                Some(Value::Object(out))
            }
            Value::Array(_) | Value::Object(_) => None,
            other => Some(other.clone()),
        }
    }

    /// The invariant of section 6, checked on filter output.
    fn check(&self, v: &Value) -> Result<(), String> {
        match v {
            Value::String(s) if oracle_has_email(s) => Err(format!("email in value {s:?}")),
            Value::Array(items) => items.iter().try_for_each(|x| self.check(x)),
            Value::Object(members) => members.iter().try_for_each(|(k, x)| {
                if self.personal(k) {
                    return Err(format!("personal key {k:?} in output"));
                }
                if oracle_has_email(k) {
                    return Err(format!("email in key {k:?}"));
                }
                if self.mode == Mode::Allow && !self.allowed(k) {
                    return Err(format!("key {k:?} is not allowed"));
                }
                self.check(x)
            }),
            _ => Ok(()),
        }
    }
}

/// `out` has the oracle's shape; each string is the input's when that
/// held no address, else one with no address and a `[redacted]` in it.
fn same_as_oracle(out: &Value, expected: &Value) -> Result<(), String> {
    match (out, expected) {
        (Value::String(o), Value::String(e)) if oracle_has_email(e) => {
            if oracle_has_email(o) || !o.contains("[redacted]") {
                return Err(format!("{e:?} became {o:?}"));
            }
            Ok(())
        }
        (Value::Array(o), Value::Array(e)) if o.len() == e.len() => {
            o.iter().zip(e).try_for_each(|(o, e)| same_as_oracle(o, e))
        }
        (Value::Object(o), Value::Object(e)) if o.keys().eq(e.keys()) => o
            .values()
            .zip(e.values())
            .try_for_each(|(o, e)| same_as_oracle(o, e)),
        (o, e) if o == e => Ok(()),
        (o, e) => Err(format!("output {o} where the oracle has {e}")),
    }
}

fn depth_of(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

// ------------------------------------------------------------ generators

const PERSONAL: &[&str] = &[
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
    "iban",
    "geolocation",
    "ssn",
];
const NEAR_MISS: &[&str] = &[
    "emails",
    "nickname",
    "named",
    "emailaddress",
    "owners",
    "mailbox",
    "addresses",
    "ｎａｍｅｓ",
    "filename",
    "hostname",
    "rename",
    "telephone",
    "surnames",
    "Usernames",
];
/// Keys personal by one of their words (rule 6.1.1).
const COMPOUND: &[&str] = &[
    "username2",
    "user_id",
    "phone-2",
    "e-mail-address",
    "Usernamé1",
    "ownerName",
    "displayName",
    "display_name",
    "homeAddress",
    "user-email",
    "contactPhone2",
    "firstName",
    "EMailAddress",
    "device.owner",
];
const NEUTRAL: &[&str] = &[
    "value",
    "state",
    "temperature",
    "brightness",
    "on",
    "ts",
    "unit",
    "température",
    "Zustand",
    "温度",
    "ＶＡＬＵＥ",
    "co2",
    "a.b",
    "",
    "Attributes",
    "data",
    "list",
    "ΟΔΟΣ",
];

/// Invisible characters of rule 6.1.2.
const INVISIBLES: &[&str] = &[
    "\u{200b}", "\u{200c}", "\u{200d}", "\u{ad}", "\u{3164}", "\u{feff}", "\u{202e}", "\u{2060}",
    "\u{115f}", "\u{180e}",
];

/// The Cyrillic letter that looks like `c`, if any.
fn cyrillic(c: char) -> Option<char> {
    let i = "acei\u{6a}opsxy".find(c)?;
    "\u{430}\u{441}\u{435}\u{456}\u{458}\u{43e}\u{440}\u{455}\u{445}\u{443}"
        .chars()
        .nth(i)
}

/// The Latin small capital of `c`, if any.
fn small_capital(c: char) -> Option<char> {
    let i = "abcdefghijklmnopqrstuvwyz".find(c)?;
    "\u{1d00}\u{299}\u{1d04}\u{1d05}\u{1d07}\u{a730}\u{262}\u{29c}\u{26a}\u{1d0a}\u{1d0b}\u{29f}\u{1d0d}\u{274}\u{1d0f}\u{1d18}\u{a7af}\u{280}\u{a731}\u{1d1b}\u{1d1c}\u{1d20}\u{1d21}\u{28f}\u{1d22}"
        .chars()
        .nth(i)
}

/// Letter `c` (lowercase ASCII) in a disguise picked by `pick`: case,
/// compatibility forms, accents, a look-alike from another script or a
/// small capital, an invisible character after it. It matches `c`.
fn disguise(c: char, pick: u8) -> String {
    let upper = c.to_ascii_uppercase();
    let offset = u32::from(c) - u32::from('a');
    let shifted = |first: u32| char::from_u32(first + offset).map_or(c.to_string(), String::from);
    let accented: &[&str] = match c {
        'a' => &["á", "À", "ä", "Å", "â"],
        'e' => &["é", "È", "ê", "Ë"],
        'i' => &["í", "Ï", "İ"],
        'o' => &["ó", "Ö", "ô"],
        'u' => &["ú", "Ü", "û"],
        'n' => &["ñ", "Ñ"],
        'c' => &["ç"],
        _ => &[],
    };
    match pick % 16 {
        0..=2 => c.to_string(),
        12 => cyrillic(c).unwrap_or(c).to_string(),
        13 => small_capital(c).unwrap_or(c).to_string(),
        14 => format!(
            "{c}{}",
            INVISIBLES[usize::from(pick / 16) % INVISIBLES.len()]
        ),
        15 if c == 'i' => "\u{131}".to_owned(),
        3 => upper.to_string(),
        4 => shifted(0xFF41),  // fullwidth small
        5 => shifted(0xFF21),  // fullwidth capital
        6 => shifted(0x1D41A), // mathematical bold small
        7 => shifted(0x24D0),  // circled small
        8 => format!("{c}\u{301}"),
        9 => format!("{upper}\u{308}\u{327}"),
        _ => accented
            .get(usize::from(pick / 12) % accented.len().max(1))
            .map_or(c.to_string(), |s| s.to_string()),
    }
}

const SEPARATORS: &[&str] = &["-", "_", ".", " ", "·", "\u{200b}", "--", "＿"];
const AFFIXES: &[&str] = &["_", "-", "  ", "$", "__", ".", "@", "#"];

fn pick_from(list: &[&'static str], pick: u8, empty_weight: u8) -> &'static str {
    let i = usize::from(pick % (empty_weight + list.len() as u8));
    list.get(i.wrapping_sub(usize::from(empty_weight)))
        .copied()
        .unwrap_or("")
}

/// `base` spelled with random case, separators, accents, compatibility
/// forms and punctuation around it (all of which normalisation removes).
fn spell(base: &str, picks: &[u8; 32]) -> String {
    let mut key = pick_from(AFFIXES, picks[0], 8).to_string();
    for (i, c) in base.chars().enumerate() {
        let (letter, sep) = (picks[(2 * i + 2) % 32], picks[(2 * i + 3) % 32]);
        key.push_str(&disguise(c, letter));
        key.push_str(pick_from(SEPARATORS, sep, 40));
    }
    key + pick_from(AFFIXES, picks[1], 8)
}

fn spelled(bases: &'static [&'static str]) -> BoxedStrategy<String> {
    (proptest::sample::select(bases), any::<[u8; 32]>())
        .prop_map(|(base, picks)| spell(base, &picks))
        .boxed()
}

/// `base` in disguised letters with no separators or affixes (a key of a
/// text pair).
fn spelled_plain(bases: &'static [&'static str]) -> BoxedStrategy<String> {
    (proptest::sample::select(bases), any::<[u8; 32]>())
        .prop_map(|(base, picks)| {
            base.chars()
                .enumerate()
                .map(|(i, c)| disguise(c, picks[i % 32]))
                .collect()
        })
        .boxed()
}

fn re(pattern: &str) -> BoxedStrategy<String> {
    proptest::string::string_regex(pattern)
        .expect("generator regex compiles")
        .boxed()
}

fn email() -> impl Strategy<Value = String> {
    let local = prop_oneof![
        re("[a-zA-Z0-9._%+-]{1,8}"),
        proptest::sample::select(vec![
            "Jürgen",
            "josé",
            "Ju\u{308}rgen",
            "用户",
            "Ōsaka",
            "ИВАН"
        ])
        .prop_map(String::from),
    ];
    let label = re("[a-z0-9-]{1,6}|[äöü]{1,3}|例子");
    let tld = re("[a-zA-Z]{2,4}|广告|рф");
    let plain = (local, proptest::collection::vec(label, 1..3), tld)
        .prop_map(|(l, labels, t)| format!("{l}@{}.{t}", labels.join(".")));
    let literal = (
        re("[a-z0-9.]{1,6}|\"[a-z ]{1,8}\""),
        proptest::sample::select(vec![
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "[ipv6:::1]",
            "[10.0.0.255]",
        ]),
    )
        .prop_map(|(l, d)| format!("{l}@{d}"));
    (prop_oneof![4 => plain, 1 => literal], any::<[u8; 4]>())
        .prop_map(|(e, picks)| dress(&e, picks))
}

/// An address in one of rule 6.1.3's dresses (or none), picked by `picks`.
fn dress(address: &str, picks: [u8; 4]) -> String {
    let at = ["@", "＠", "﹫", "%40"][usize::from(picks[0] % 4)];
    let dot = [".", "．", "。", "｡", "%2E", "%2e"][usize::from(picks[1] % 6)];
    let (local, domain) = address.split_once('@').unwrap_or((address, ""));
    let domain = if domain.starts_with('[') {
        domain.to_owned()
    } else {
        domain.replacen('.', dot, 1)
    };
    let mut out = match picks[2] % 4 {
        0 => format!("{local}{at}{domain}"),
        1 => format!("\"{local} x\"{at}{domain}"),
        2 => format!("mailto:{local}{at}{domain}"),
        _ => address.to_owned(),
    };
    if picks[3].is_multiple_of(3) {
        let chars: Vec<char> = out.chars().collect();
        let cut = usize::from(picks[3]) % chars.len().max(1);
        let invisible = INVISIBLES[usize::from(picks[3] / 3) % INVISIBLES.len()];
        out = chars[..cut].iter().collect::<String>()
            + invisible
            + &chars[cut..].iter().collect::<String>();
    }
    out
}

/// Text that may contain `@` and dots, from long-established Unicode ranges.
const RANDOM_TEXT: &str =
    "[a-zA-Z0-9àéüÖßçñΣσςΟΔİı가-힣一-龥ａ-ｚＡ-Ｚ０-９\u{300}-\u{36f}@＠﹫._%+\"\\[\\]:。．\u{200b}\u{ad} -]{0,14}";
/// Text with nothing that folds to `@`: never an email.
const CLEAN_TEXT: &str = "[a-zA-Z0-9àéüÖßçñΣσςΟΔİı가-힣一-龥ａ-ｚ\u{300}-\u{36f}._+ -]{0,14}";

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        4 => spelled(PERSONAL),
        2 => compound(),
        3 => spelled(&["value", "state", "list", "data", "attributes", "on"]),
        2 => proptest::sample::select(NEAR_MISS).prop_map(String::from),
        3 => proptest::sample::select(NEUTRAL).prop_map(String::from),
        1 => email(),
        1 => (re(RANDOM_TEXT), email()).prop_map(|(a, e)| format!("{a}{e}")),
        2 => re(RANDOM_TEXT),
    ]
    .boxed()
}

/// A neutral word and a personal one joined as keys are written, the
/// personal one sometimes in a look-alike spelling (rule 6.1.1, 6.1.2).
fn compound() -> BoxedStrategy<String> {
    (
        proptest::sample::select(&["home", "device", "contact", "display", "x", "main"][..]),
        proptest::sample::select(PERSONAL),
        any::<[u8; 3]>(),
    )
        .prop_map(|(neutral, personal, picks)| {
            let disguised: String = personal
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    let pick = picks[2].wrapping_add((i as u8).wrapping_mul(37));
                    // No case change here: the case boundary is the join.
                    match pick % 6 {
                        0 => cyrillic(c).unwrap_or(c).to_string(),
                        1 => small_capital(c).unwrap_or(c).to_string(),
                        2 => format!("{c}\u{200b}"),
                        _ => c.to_string(),
                    }
                })
                .collect();
            let mut capital = disguised.chars();
            let upper: String = capital
                .next()
                .map(|c| c.to_uppercase().chain(capital).collect())
                .unwrap_or_default();
            match picks[0] % 5 {
                0 => format!("{neutral}{upper}"),
                1 => format!("{disguised}_{neutral}"),
                2 => format!("{neutral}-{disguised}"),
                3 => format!("{disguised}{}", picks[1] % 10),
                _ => COMPOUND[usize::from(picks[1]) % COMPOUND.len()].to_owned(),
            }
        })
        .boxed()
}

fn text() -> BoxedStrategy<String> {
    let near_miss = vec![
        "a@b",
        "x@y.c",
        "@home",
        "user@localhost",
        "50%@x",
        "a@b.c0m",
        "a@@b.cc",
        "user@[300.1.1]",
        "\"\"@x.org",
        "%40home",
        "50%4",
        "a\u{200b}@b",
    ];
    prop_oneof![
        3 => proptest::sample::select(NEUTRAL).prop_map(String::from),
        2 => email(),
        2 => (re(RANDOM_TEXT), email(), re(RANDOM_TEXT), email(), re(RANDOM_TEXT))
            .prop_map(|(a, e1, b, e2, c)| format!("{a} {e1}{b}{e2}{c}")),
        1 => proptest::sample::select(near_miss).prop_map(String::from),
        3 => re(RANDOM_TEXT),
    ]
    .boxed()
}

fn scalar(text: BoxedStrategy<String>) -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        3 => text.prop_map(Value::String),
    ]
    .boxed()
}

fn tree(keys: BoxedStrategy<String>, text: BoxedStrategy<String>) -> BoxedStrategy<Value> {
    scalar(text)
        .prop_recursive(20, 48, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((keys.clone(), inner), 0..5)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
        .boxed()
}

/// Small deterministic generator for the long chains below, where a
/// proptest strategy per level would cost too much time in debug builds.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const EMAILS: &[&str] = &[
    "jo@x.com",
    "jo＠x．com",
    "jo%40x.com",
    "\"jo smith\"@x.com",
    "jo@[192.0.2.1]",
    "j\u{200b}o@x.com",
    "Jürgen@beispiel.de",
    "a.b+c@mail.example.co.uk",
    "用户@例子.广告",
];

fn chain_key(state: &mut u64) -> String {
    let r = splitmix(state);
    let mut picks = [0u8; 32];
    for chunk in picks.chunks_mut(8) {
        chunk.copy_from_slice(&splitmix(state).to_le_bytes());
    }
    let from = |list: &[&str]| list[(r >> 8) as usize % list.len()].to_string();
    match r % 8 {
        0..=2 => spell(PERSONAL[(r >> 8) as usize % PERSONAL.len()], &picks),
        3 => spell(
            ["value", "state", "list", "data"][(r >> 8) as usize % 4],
            &picks,
        ),
        4 => from(NEAR_MISS),
        5 => from(EMAILS),
        _ => from(NEUTRAL),
    }
}

fn chain_scalar(state: &mut u64) -> Value {
    let r = splitmix(state);
    match r % 6 {
        0 => Value::Null,
        1 => Value::from(r >> 3),
        2 => Value::String(format!(
            "mail {} now",
            EMAILS[(r >> 8) as usize % EMAILS.len()]
        )),
        _ => Value::String(chain_key(state)),
    }
}

/// Key on the path of a chain: mostly one that deny and allow mode keep,
/// so that chains really go deep, sometimes a personal one.
fn path_key(state: &mut u64) -> String {
    let r = splitmix(state);
    if r.is_multiple_of(64) {
        chain_key(state)
    } else {
        let mut picks = [0u8; 32];
        picks[..8].copy_from_slice(&splitmix(state).to_le_bytes());
        spell(
            ["value", "state", "list", "data"][(r >> 8) as usize % 4],
            &picks,
        )
    }
}

/// `inner` wrapped in a chain of `levels` containers, arrays and objects
/// at random, half of them with a sibling member or element.
fn chain(levels: std::ops::Range<usize>, inner: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    (inner, levels, any::<u64>())
        .prop_map(|(leaf, levels, seed)| {
            let mut state = seed;
            (0..levels).fold(leaf, |v, _| match splitmix(&mut state) % 4 {
                0 => Value::Array(vec![v]),
                1 => Value::Array(vec![chain_scalar(&mut state), v]),
                2 => Value::Object(Map::from_iter([(path_key(&mut state), v)])),
                _ => {
                    let sibling = (chain_key(&mut state), chain_scalar(&mut state));
                    Value::Object(Map::from_iter([sibling, (path_key(&mut state), v)]))
                }
            })
        })
        .boxed()
}

/// Chains 90 to 140 containers deep: parsed payloads stop at 127, values
/// built in code may go past MAX_DEPTH.
fn deep() -> BoxedStrategy<Value> {
    chain(
        90..141,
        any::<u64>()
            .prop_map(|seed| chain_scalar(&mut { seed }))
            .boxed(),
    )
}

fn payload() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => tree(key(), text()),
        3 => chain(4..18, tree(key(), text())),
        1 => deep(),
    ]
    .boxed()
}

/// Deny (allow list ignored), deny with extra strip keys, allow.
static POLICIES: LazyLock<[(Policy, Oracle); 3]> = LazyLock::new(|| {
    [
        Oracle::new(Mode::Deny, &[], ALLOW),
        Oracle::new(Mode::Deny, EXTRA_STRIP, &[]),
        Oracle::new(Mode::Allow, EXTRA_STRIP, ALLOW),
    ]
});

fn check_against_oracle(
    policy: &Policy,
    oracle: &Oracle,
    input: &Value,
) -> Result<(), TestCaseError> {
    let out = policy.filter(input);
    let expected = oracle.filter(input, 0);
    match (out, expected) {
        (Some(out), Some(expected)) => {
            if let Err(why) = same_as_oracle(&out, &expected).and_then(|()| oracle.check(&out)) {
                return Err(TestCaseError::fail(why));
            }
        }
        (None, None) => prop_assert!(depth_of(input) > MAX_DEPTH),
        (out, expected) => {
            return Err(TestCaseError::fail(format!(
                "filter gave {out:?}, oracle {expected:?}"
            )))
        }
    }
    Ok(())
}

// ------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig {
        // XorShift: ChaCha makes generation several times slower in debug builds.
        rng_algorithm: RngAlgorithm::XorShift,
        ..ProptestConfig::with_cases(CASES)
    })]

    #[test]
    fn deny_output_holds_the_invariant(input in payload(), extra in any::<bool>()) {
        let (policy, oracle) = &POLICIES[usize::from(extra)];
        check_against_oracle(policy, oracle, &input)?;
    }

    #[test]
    fn allow_output_holds_the_invariant(input in payload()) {
        let (policy, oracle) = &POLICIES[2];
        check_against_oracle(policy, oracle, &input)?;
    }

    #[test]
    fn filter_is_idempotent(input in payload(), which in 0usize..3) {
        let (policy, _) = &POLICIES[which];
        if let Some(once) = policy.filter(&input) {
            prop_assert_eq!(policy.filter(&once), Some(once));
        }
    }

    #[test]
    fn clean_payload_passes_unchanged_in_deny_mode(
        input in tree(
            prop_oneof![
                proptest::sample::select(NEAR_MISS).prop_map(String::from),
                proptest::sample::select(NEUTRAL).prop_map(String::from),
                re(CLEAN_TEXT),
            ]
            .prop_filter("no personal key", |k| !POLICIES[1].1.personal(k))
            .boxed(),
            re(CLEAN_TEXT),
        ),
        extra in any::<bool>(),
    ) {
        let (policy, oracle) = &POLICIES[usize::from(extra)];
        prop_assert!(oracle.check(&input).is_ok(), "generator made a personal payload");
        prop_assert_eq!(policy.filter(&input), Some(input));
    }

    #[test]
    fn redaction_matches_the_oracle(s in prop_oneof![text(), key()]) {
        let has = oracle_has_email(&s);
        prop_assert_eq!(contains_email(&s), has);
        let redacted = redact_emails(&s);
        prop_assert!(!oracle_has_email(&redacted), "{:?} left {:?}", s, redacted);
        if has {
            prop_assert!(redacted.contains("[redacted]"));
        } else {
            prop_assert_eq!(redacted.as_ref(), s.as_str());
        }
    }

    #[test]
    fn key_forms_match_the_oracle(
        s in key(),
        base in proptest::sample::select(PERSONAL),
        picks in any::<[u8; 32]>(),
    ) {
        prop_assert_eq!(key_forms(&s), oracle_forms(&oracle_prepare(&s)));
        let spelled = spell(base, &picks);
        let [plain, _] = oracle_forms(base);
        prop_assert!(key_forms(&spelled).contains(&plain), "{:?}", spelled);
        prop_assert!(POLICIES[1].0.is_personal(&spelled), "{:?}", spelled);
    }

    /// Rule 6.1.5: in text, the value of a pair with a personal key never
    /// reaches a link, a neutral pair's value does, and no address does.
    #[test]
    fn text_pairs_with_personal_keys_are_redacted(
        personal in prop_oneof![compound(), spelled_plain(PERSONAL)],
        neutral in proptest::sample::select(&["temp", "state", "value", "on", "mode"][..]),
        sep in proptest::sample::select(&["=", ": ", ":"][..]),
        join in proptest::sample::select(&[" ", ", ", "&", "; "][..]),
        address in email(),
        first in any::<bool>(),
    ) {
        let (policy, oracle) = &POLICIES[1];
        prop_assume!(oracle.personal(&personal));
        let secret = format!("{personal}{sep}Qzx7secret");
        let public = format!("{neutral}{sep}Qzx7public");
        let text = if first {
            format!("{secret}{join}{public}{join}mail {address}")
        } else {
            format!("{public}{join}{address}{join}{secret}")
        };
        let out = policy.redact_text(&text);
        prop_assert!(!out.contains("Qzx7secret"), "{:?} -> {:?}", text, out);
        prop_assert!(out.contains("Qzx7public"), "{:?} -> {:?}", text, out);
        prop_assert!(!oracle_has_email(&out), "{:?} -> {:?}", text, out);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        rng_algorithm: RngAlgorithm::XorShift,
        // Each case is a chain of 90 to 140 containers, each key fresh.
        ..ProptestConfig::with_cases(CASES / 8)
    })]

    #[test]
    fn deep_payloads_fail_closed_only_past_max_depth(input in deep(), which in 0usize..3) {
        let (policy, oracle) = &POLICIES[which];
        check_against_oracle(policy, oracle, &input)?;
    }
}
