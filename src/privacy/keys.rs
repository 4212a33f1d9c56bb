//! What a member's key is matched as (protocol.md section 6 and rules
//! 6.1.1, 6.1.2): its whole normalised form and the forms of its words,
//! each read through the Unicode confusable skeleton (UTS #39).
//!
//! # How a key becomes match forms
//! 1. **Prepared**: NFKD, combining marks and invisible characters
//!    ([`is_invisible`]) dropped, case kept.
//! 2. **Pieces**: the whole key (its letters and digits) and each word:
//!    the prepared key split at every character that is not a letter or
//!    digit, at lower-to-upper case boundaries and between letters and
//!    digits (`contactPhone2` is `contact`, `Phone`, `2`).
//! 3. **Forms** of a piece: the skeleton `S` (UTS #39, with Latin small
//!    capitals read as their letters before and after it) and
//!    lower-casing `L` in two orders,
//!    `L(S(L(x)))` and `L(S(L(S(x))))`, letters and digits kept. One order
//!    is not enough: the confusables table maps `I` to `l` but `i` to `i`
//!    (so `EMAIL` needs lower-casing first), and Greek `Ν` to `N` but `ν`
//!    to `v` (so `ΝAME` needs the skeleton first). A key matches a list
//!    when any of its forms is one of the list's forms; both sides are
//!    read the same way, so the skeleton's own spellings (`m` is `rn`)
//!    cancel out.

use unicode_normalization::char::{decompose_compatible, is_combining_mark};

/// Default_Ignorable_Code_Point of Unicode's DerivedCoreProperties.txt
/// (zero-width characters, soft hyphen, Hangul fillers, bidirectional
/// controls, variation selectors, U+FEFF, tags), sorted ranges.
const INVISIBLE: &[(char, char)] = &[
    ('\u{ad}', '\u{ad}'),
    ('\u{34f}', '\u{34f}'),
    ('\u{61c}', '\u{61c}'),
    ('\u{115f}', '\u{1160}'),
    ('\u{17b4}', '\u{17b5}'),
    ('\u{180b}', '\u{180f}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{202a}', '\u{202e}'),
    ('\u{2060}', '\u{206f}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{fe00}', '\u{fe0f}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{ffa0}', '\u{ffa0}'),
    ('\u{fff0}', '\u{fff8}'),
    ('\u{1bca0}', '\u{1bca3}'),
    ('\u{1d173}', '\u{1d17a}'),
    ('\u{e0000}', '\u{e0fff}'),
];

/// True for a character rule 6.1.2 drops before matching.
pub(crate) fn is_invisible(c: char) -> bool {
    !c.is_ascii()
        && INVISIBLE
            .binary_search_by(|&(lo, hi)| {
                if hi < c {
                    std::cmp::Ordering::Less
                } else if lo > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
}

/// The letters a Latin small capital reads as: every character named
/// `LATIN LETTER SMALL CAPITAL` and one or two letters (U+1D00 block and
/// the small capitals elsewhere), which the confusables table keeps apart.
fn small_capital(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{1d00}' => "a",
        '\u{1d01}' => "ae",
        '\u{0299}' => "b",
        '\u{1d04}' => "c",
        '\u{1d05}' => "d",
        '\u{1d07}' => "e",
        '\u{a730}' => "f",
        '\u{0262}' => "g",
        '\u{029c}' => "h",
        '\u{026a}' => "i",
        '\u{1d0a}' => "j",
        '\u{1d0b}' => "k",
        '\u{029f}' => "l",
        '\u{1d0d}' => "m",
        '\u{0274}' => "n",
        '\u{1d0f}' => "o",
        '\u{0276}' => "oe",
        '\u{1d15}' => "ou",
        '\u{1d18}' => "p",
        '\u{a7af}' => "q",
        '\u{0280}' => "r",
        '\u{a731}' => "s",
        '\u{1d1b}' => "t",
        '\u{1d1c}' => "u",
        '\u{1d20}' => "v",
        '\u{1d21}' => "w",
        '\u{028f}' => "y",
        '\u{1d22}' => "z",
        _ => return None,
    })
}

fn is_kept(c: char) -> bool {
    c.is_alphanumeric() && !is_combining_mark(c)
}

/// Step 1: NFKD, combining marks and invisible characters dropped, `ς` read as `σ`.
pub(crate) fn prepare(key: &str) -> std::borrow::Cow<'_, str> {
    if key.is_ascii() {
        return std::borrow::Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        decompose_compatible(c, |d| {
            if !is_combining_mark(d) && !is_invisible(d) {
                // The final sigma is a spelling of sigma (the skeleton keeps them apart).
                out.push(if d == 'ς' { 'σ' } else { d });
            }
        });
    }
    std::borrow::Cow::Owned(out)
}

/// Step 2: the words of a prepared key.
pub(crate) fn words(prepared: &str) -> impl Iterator<Item = &str> {
    let mut rest = prepared;
    std::iter::from_fn(move || {
        let start = rest.find(is_kept)?;
        rest = &rest[start..];
        let mut prev: Option<char> = None;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            let split = !is_kept(c)
                || prev.is_some_and(|p| {
                    (p.is_lowercase() && c.is_uppercase()) || p.is_alphabetic() != c.is_alphabetic()
                });
            if split {
                end = i;
                break;
            }
            prev = Some(c);
        }
        let (word, tail) = rest.split_at(end);
        rest = tail;
        Some(word)
    })
}

fn lower(s: &str) -> String {
    s.chars()
        .flat_map(char::to_lowercase)
        .map(|c| if c == 'ς' { 'σ' } else { c })
        .collect()
}

/// Small capitals read as their letters, in `s` (`Cow::Borrowed` when none).
fn read_small_capitals(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| small_capital(c).is_some()) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match small_capital(c) {
            Some(letters) => out.push_str(letters),
            None => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `S`: small capitals read as letters, the skeleton, and again, so that a
/// small capital spells its letter (`ᴍ` is `m`, whose skeleton is `rn`)
/// and so does a letter whose prototype is a small capital (Cyrillic `м`).
fn skeleton(s: &str) -> String {
    let once: String = unicode_security::skeleton(&read_small_capitals(s)).collect();
    unicode_security::skeleton(&read_small_capitals(&once)).collect()
}

fn kept(s: &str) -> String {
    s.chars().filter(|c| is_kept(*c)).collect()
}

/// Step 3: the two match forms of a piece.
pub(crate) fn forms(piece: &str) -> [String; 2] {
    let letters = kept(piece);
    let first = lower(&skeleton(&lower(&letters)));
    let second = lower(&skeleton(&lower(&skeleton(&letters))));
    [kept(&first), kept(&second)]
}

/// The forms of the whole key (steps 1 to 3), what a configured key is read as.
pub fn key_forms(key: &str) -> [String; 2] {
    forms(&prepare(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words_of(key: &str) -> Vec<String> {
        words(&prepare(key)).map(str::to_owned).collect()
    }

    #[test]
    fn words_split_at_case_digits_and_separators() {
        assert_eq!(words_of("ownerName"), ["owner", "Name"]);
        assert_eq!(words_of("contactPhone2"), ["contact", "Phone", "2"]);
        assert_eq!(words_of("user-email"), ["user", "email"]);
        assert_eq!(words_of("display_name"), ["display", "name"]);
        assert_eq!(words_of("HTTPServer"), ["HTTPServer"]);
        assert_eq!(words_of("filename"), ["filename"]);
        assert_eq!(words_of("--"), Vec::<String>::new());
        assert_eq!(words_of("e\u{200b}mail"), ["email"]);
    }

    #[test]
    fn look_alikes_share_a_form_with_the_plain_key() {
        let [plain, _] = key_forms("email");
        for key in [
            "EMAIL",
            "\u{435}mail",
            "\u{1d07}mail",
            "ema\u{131}l",
            "e\u{200b}mail",
            "E-Mail",
            "ＥＭＡＩＬ",
            "e\u{ad}mail",
            "\u{3164}email",
        ] {
            let f = key_forms(key);
            assert!(f.contains(&plain), "{key:?}: {f:?} vs {plain:?}");
        }
        let [name, _] = key_forms("name");
        assert!(key_forms("\u{39d}AME").contains(&name));
        assert!(!key_forms("filename").contains(&name));
    }

    #[test]
    fn invisible_table_is_sorted_and_disjoint() {
        assert!(INVISIBLE.windows(2).all(|w| w[0].1 < w[1].0));
        assert!(INVISIBLE.iter().all(|(lo, hi)| lo <= hi));
        assert!(is_invisible('\u{feff}') && is_invisible('\u{e0041}'));
        assert!(!is_invisible('a') && !is_invisible('é'));
    }
}
