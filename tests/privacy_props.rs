//! Property tests for the privacy filter (protocol.md section 6 and rule 8.13).
//!
//! The oracle here is written independently of `src/privacy.rs`: its own
//! key normalisation (string-level NFKD and `to_lowercase`) and its own
//! email test (a `regex`). Payloads are random nested JSON with personal
//! keys planted in many spellings, near-miss keys that must survive, and
//! email addresses planted in values and keys.

use std::collections::HashSet;
use std::sync::LazyLock;

use hearthlink::privacy::{contains_email, normalize_key, redact_emails, Mode, Policy, MAX_DEPTH};
use proptest::prelude::*;
use proptest::test_runner::RngAlgorithm;
use regex::{NoExpand, Regex};
use serde_json::{Map, Number, Value};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

const CASES: u32 = 5000;

// ---------------------------------------------------------------- oracle

/// Rule 8.13 as a regular expression ("letters" include combining marks).
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"[\p{Alphabetic}\p{N}\p{M}._%+\-]+@(?:[\p{Alphabetic}\p{N}\p{M}\-]+\.)+[\p{Alphabetic}\p{M}]{2,}",
    )
    .expect("email regex compiles")
});

fn oracle_has_email(s: &str) -> bool {
    s.contains('@') && EMAIL.is_match(s)
}

fn oracle_redact(s: &str) -> String {
    EMAIL.replace_all(s, NoExpand("[redacted]")).into_owned()
}

/// Section 6 normalisation, written string-at-a-time.
fn oracle_norm(key: &str) -> String {
    let decomposed: String = key.nfkd().filter(|c| !is_combining_mark(*c)).collect();
    decomposed
        .to_lowercase()
        .replace('ς', "σ")
        .chars()
        .filter(|c| c.is_alphanumeric() && !is_combining_mark(*c))
        .collect()
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
}

impl Oracle {
    fn new(mode: Mode, extra: &[&str], allow: &[&str]) -> (Policy, Oracle) {
        let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let policy = Policy::new(mode, &owned(extra), &owned(allow));
        let strip = SPEC_DEFAULTS
            .split(", ")
            .chain(extra.iter().copied())
            .map(oracle_norm)
            .collect();
        let allow = allow
            .iter()
            .map(|k| oracle_norm(k))
            .filter(|k| !k.is_empty())
            .collect();
        (policy, Oracle { mode, strip, allow })
    }

    fn keeps(&self, key: &str) -> bool {
        let n = oracle_norm(key);
        let allowed = match self.mode {
            Mode::Deny => true,
            Mode::Allow => self.allow.contains(&n),
        };
        allowed && !self.strip.contains(&n) && !oracle_has_email(key)
    }

    /// Reference filter; None when it would descend past MAX_DEPTH.
    fn filter(&self, v: &Value, depth: usize) -> Option<Value> {
        let inner = depth + 1;
        match v {
            Value::String(s) => Some(Value::String(oracle_redact(s))),
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
                let n = oracle_norm(k);
                if self.strip.contains(&n) {
                    return Err(format!("stripped key {k:?} ({n:?}) in output"));
                }
                if oracle_has_email(k) {
                    return Err(format!("email in key {k:?}"));
                }
                if self.mode == Mode::Allow && !self.allow.contains(&n) {
                    return Err(format!("key {k:?} ({n:?}) is not allowed"));
                }
                self.check(x)
            }),
            _ => Ok(()),
        }
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
    "username2",
    "emails",
    "nickname",
    "named",
    "emailaddress",
    "user_id",
    "phone-2",
    "owners",
    "mailbox",
    "addresses",
    "e-mail-address",
    "Usernamé1",
    "ｎａｍｅｓ",
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

/// Letter `c` (lowercase ASCII) in a disguise picked by `pick`; it
/// normalises back to `c`.
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
    match pick % 12 {
        0..=2 => c.to_string(),
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
    (local, proptest::collection::vec(label, 1..3), tld)
        .prop_map(|(l, labels, t)| format!("{l}@{}.{t}", labels.join(".")))
}

/// Text that may contain `@` and dots, from long-established Unicode ranges.
const RANDOM_TEXT: &str =
    "[a-zA-Z0-9àéüÖßçñΣσςΟΔİı가-힣一-龥ａ-ｚＡ-Ｚ０-９\u{300}-\u{36f}@＠._%+ -]{0,14}";
/// Text with no `@`: never an email.
const CLEAN_TEXT: &str = "[a-zA-Z0-9àéüÖßçñΣσςΟΔİı가-힣一-龥ａ-ｚ\u{300}-\u{36f}＠._%+ -]{0,14}";

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        4 => spelled(PERSONAL),
        3 => spelled(&["value", "state", "list", "data", "attributes", "on"]),
        2 => proptest::sample::select(NEAR_MISS).prop_map(String::from),
        3 => proptest::sample::select(NEUTRAL).prop_map(String::from),
        1 => email(),
        1 => (re(RANDOM_TEXT), email()).prop_map(|(a, e)| format!("{a}{e}")),
        2 => re(RANDOM_TEXT),
    ]
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
    prop_assert_eq!(&out, &expected);
    match out {
        Some(out) => {
            if let Err(why) = oracle.check(&out) {
                return Err(TestCaseError::fail(why));
            }
        }
        None => prop_assert!(depth_of(input) > MAX_DEPTH),
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
                re(CLEAN_TEXT).prop_filter("no personal key", |k| !PERSONAL.contains(&oracle_norm(k).as_str())),
            ].boxed(),
            re(CLEAN_TEXT),
        ),
        extra in any::<bool>(),
    ) {
        let (policy, oracle) = &POLICIES[usize::from(extra)];
        prop_assert!(oracle.check(&input).is_ok(), "generator made a personal payload");
        prop_assert_eq!(policy.filter(&input), Some(input));
    }

    #[test]
    fn deep_payloads_fail_closed_only_past_max_depth(input in deep(), which in 0usize..3) {
        let (policy, oracle) = &POLICIES[which];
        check_against_oracle(policy, oracle, &input)?;
    }

    #[test]
    fn redaction_matches_the_oracle(s in prop_oneof![text(), key()]) {
        prop_assert_eq!(contains_email(&s), oracle_has_email(&s));
        let redacted = redact_emails(&s);
        prop_assert!(!oracle_has_email(&redacted));
        let expected = oracle_redact(&s);
        prop_assert_eq!(redacted.as_ref(), expected.as_str());
    }

    #[test]
    fn normalisation_matches_the_oracle(
        s in key(),
        base in proptest::sample::select(PERSONAL),
        picks in any::<[u8; 32]>(),
    ) {
        prop_assert_eq!(normalize_key(&s), oracle_norm(&s));
        let spelled = spell(base, &picks);
        prop_assert_eq!(normalize_key(&spelled), base);
        prop_assert_eq!(oracle_norm(&spelled), base);
    }
}
