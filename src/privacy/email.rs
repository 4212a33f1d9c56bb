//! Email addresses in any dress: rule 8.13's address test, run on a folded
//! copy of a string (rule 6.1.3), and their redaction in the original.
//!
//! # Folding
//! The original is read in pieces, a character and the combining
//! characters after it, each put in NFKC (`＠` and `．` become `@` and `.`;
//! a piece is what NFKC composes, so this is NFKC of the whole string);
//! the full stops U+3002 `。` and U+FF61 `｡` read as `.`,
//! invisible characters ([`super::keys::is_invisible`]) are dropped, and
//! then `%40`, `%2E` and `%2e` are read as `@` and `.`. Every folded piece
//! remembers the span of the original it came from, so a match is
//! redacted in the original over exactly the characters that fold to it.
//!
//! # What counts as an address
//! A local part (letters of any script, digits, `._%+-`) or a quoted one
//! (`"john smith"`, 1 to 64 characters, no `"`, `\` or line feed), `@`,
//! and a domain (two or more labels of letters, digits or `-` joined by
//! dots, the last at least two letters) or an address literal
//! (`[192.0.2.1]`, `[IPv6:2001:db8::1]`). Matches are found as substrings,
//! the way a regular expression would: `x a@b.com1` contains `a@b.com`.
//! Each `@` takes the longest local part before it and the longest valid
//! domain after it. The scan is linear on any input.
//!
//! # Redaction
//! Every match becomes [`REDACTED`]. Replacing can leave a new address
//! behind (`"a@b.com"@c.org` leaves `"[redacted]"@c.org`), so redaction
//! runs again on its own output until nothing is found; past
//! [`MAX_PASSES`] the whole string becomes [`REDACTED`] (fail closed).

use std::borrow::Cow;

use unicode_normalization::char::{canonical_combining_class, is_combining_mark};
use unicode_normalization::UnicodeNormalization;

use super::keys::is_invisible;

/// What an email address is replaced with in string values.
pub const REDACTED: &str = "[redacted]";

/// Redaction passes before a string is replaced whole.
const MAX_PASSES: usize = 8;

/// Longest quoted local part, in characters (RFC 5321's 64 octets).
const MAX_QUOTED: usize = 64;

/// A string as the address test reads it.
struct Folded<'a> {
    text: Cow<'a, str>,
    /// Where folding changed the text, `(folded offset, original offset,
    /// changed)`: at the start of each changed piece (`true`) and of each
    /// unchanged run after one (`false`). Before the first mark, and in
    /// an unchanged run, offsets are the original's shifted by the mark's
    /// difference. Marks are few: most text folds to itself.
    marks: Vec<(usize, usize, bool)>,
    original_len: usize,
}

impl Folded<'_> {
    /// The mark `at` (a folded offset) falls under, if any.
    fn mark(&self, at: usize) -> Option<(usize, (usize, usize, bool))> {
        let i = self.marks.partition_point(|m| m.0 <= at).checked_sub(1)?;
        Some((i, self.marks[i]))
    }

    /// The original offset where the folded byte `at` comes from.
    fn start_of(&self, at: usize) -> usize {
        match self.mark(at) {
            None => at,
            Some((_, (f, o, false))) => o + (at - f),
            Some((_, (_, o, true))) => o,
        }
    }

    /// The original offset just past where the folded byte `at` comes from.
    fn end_of(&self, at: usize) -> usize {
        match self.mark(at) {
            None => at + 1,
            Some((_, (f, o, false))) => o + (at - f) + 1,
            Some((i, (_, _, true))) => self.marks.get(i + 1).map_or(self.original_len, |m| m.1),
        }
    }

    /// The span of the original that folds to `start..end` of `text`.
    fn original(&self, start: usize, end: usize) -> (usize, usize) {
        (self.start_of(start), self.end_of(end.saturating_sub(1)))
    }
}

fn fold(s: &str) -> Folded<'_> {
    let mut folded = Folded {
        text: Cow::Borrowed(s),
        marks: Vec::new(),
        original_len: s.len(),
    };
    if s.is_ascii() && !s.contains('%') {
        return folded;
    }
    let mut text = String::with_capacity(s.len());
    let mut piece = String::new();
    let mut start = 0;
    let mut resume = false;
    while start < s.len() {
        let end = segment_end(s, start);
        let original = &s[start..end];
        piece.clear();
        for c in original.nfkc() {
            match c {
                '\u{3002}' => piece.push('.'),
                c if is_invisible(c) => {}
                c => piece.push(c),
            }
        }
        if piece != original {
            folded.marks.push((text.len(), start, true));
            resume = true;
        } else if resume {
            folded.marks.push((text.len(), start, false));
            resume = false;
        }
        text.push_str(&piece);
        if decode_escape(&mut text, &mut folded) {
            resume = true;
        }
        start = end;
    }
    folded.text = Cow::Owned(text);
    folded
}

/// End of the piece starting at `start` that NFKC folds on its own: a
/// character and the combining characters after it (Hangul vowel and
/// final jamo compose with what is before them too).
fn segment_end(s: &str, start: usize) -> usize {
    let mut chars = s[start..].char_indices();
    chars.next();
    for (i, c) in chars {
        let joins = is_combining_mark(c)
            || canonical_combining_class(c) != 0
            || ('\u{1160}'..='\u{11ff}').contains(&c);
        if !joins {
            return start + i;
        }
    }
    s.len()
}

/// Reads a `%40` or `%2E` that `text` now ends with as the character it
/// stands for: one changed piece from where the `%` came from. True when
/// it did.
fn decode_escape(text: &mut String, folded: &mut Folded<'_>) -> bool {
    let Some(at) = text.len().checked_sub(3) else {
        return false;
    };
    let decoded = match text.get(at..) {
        Some("%40") => '@',
        Some("%2E" | "%2e") => '.',
        _ => return false,
    };
    let origin = folded.start_of(at);
    while folded.marks.last().is_some_and(|m| m.0 >= at) {
        folded.marks.pop();
    }
    folded.marks.push((at, origin, true));
    text.truncate(at);
    text.push(decoded);
    true
}

/// True for ASCII with no `@` and no `%`: nothing in it folds to an address.
fn plain(s: &str) -> bool {
    memchr::memchr2(b'@', b'%', s.as_bytes()).is_none() && s.is_ascii()
}

/// True when `s` contains an email address in any dress.
pub fn contains_email(s: &str) -> bool {
    if plain(s) {
        return false;
    }
    find(&fold(s).text, 0).is_some()
}

/// Replaces every email address in `s` with `[redacted]`; `Cow::Borrowed` when none.
pub fn redact_emails(s: &str) -> Cow<'_, str> {
    if plain(s) {
        return Cow::Borrowed(s);
    }
    let Some(mut out) = redact_once(s) else {
        return Cow::Borrowed(s);
    };
    for _ in 1..MAX_PASSES {
        match redact_once(&out) {
            Some(next) => out = next,
            None => return Cow::Owned(out),
        }
    }
    Cow::Owned(REDACTED.to_owned())
}

/// One pass: `None` when `s` holds no address.
fn redact_once(s: &str) -> Option<String> {
    let folded = fold(s);
    let mut found = find(&folded.text, 0)?;
    let mut out = String::with_capacity(s.len());
    let mut done = 0;
    loop {
        let (start, end) = folded.original(found.0, found.1);
        out.push_str(s.get(done..start.max(done)).unwrap_or_default());
        out.push_str(REDACTED);
        done = end.max(done);
        match find(&folded.text, found.1) {
            Some(next) => found = next,
            None => break,
        }
    }
    out.push_str(s.get(done..).unwrap_or_default());
    Some(out)
}

/// Byte range of the first address whose local part starts at or after
/// `from` (a char boundary). Linear: the text between two `@` is scanned
/// at most twice (as one's domain, as the next one's local part), a
/// quoted local part at most [`MAX_QUOTED`] characters back.
fn find(s: &str, from: usize) -> Option<(usize, usize)> {
    let mut search = from;
    while let Some(offset) = s.get(search..)?.find('@') {
        let at = search + offset;
        let before = s.get(from..at)?;
        let start = quoted_start(before, from).unwrap_or_else(|| local_start(before, from));
        if start < at {
            let after = s.get(at + 1..)?;
            if let Some(end) = domain_end(after, at + 1).or_else(|| literal_end(after, at + 1)) {
                return Some((start, end));
            }
        }
        search = at + 1;
    }
    None
}

/// Start of a quoted local part that `before` ends with.
fn quoted_start(before: &str, base: usize) -> Option<usize> {
    let inner = before.strip_suffix('"')?;
    for (n, (i, c)) in inner.char_indices().rev().enumerate() {
        match c {
            '"' if n > 0 => return Some(base + i),
            '"' | '\\' | '\n' => return None,
            _ if n >= MAX_QUOTED => return None,
            _ => {}
        }
    }
    None
}

/// Start (absolute byte offset) of the longest run of local-part
/// characters at the end of `before`, which begins at offset `base`.
fn local_start(before: &str, base: usize) -> usize {
    let mut start = base + before.len();
    for (i, c) in before.char_indices().rev() {
        if !is_local_char(c) {
            break;
        }
        start = base + i;
    }
    start
}

/// End (absolute byte offset) of the longest valid domain at the start of
/// `after`, which begins at offset `base`: labels of letters, digits or
/// `-` joined by dots, at least two, the last made of two or more letters.
/// The last label may be a prefix of a longer one (`b.com1` gives `b.com`).
fn domain_end(after: &str, base: usize) -> Option<usize> {
    let mut best = None;
    let mut dots = 0usize;
    let mut label_len = 0usize;
    let mut leading_letters = 0usize;
    let mut in_leading = true;
    for (i, c) in after.char_indices() {
        if c == '.' {
            if label_len == 0 {
                break;
            }
            dots += 1;
            label_len = 0;
            leading_letters = 0;
            in_leading = true;
        } else if is_label_char(c) {
            label_len += 1;
            if in_leading && is_letter(c) {
                leading_letters += 1;
                if dots > 0 && leading_letters >= 2 {
                    best = Some(base + i + c.len_utf8());
                }
            } else {
                in_leading = false;
            }
        } else {
            break;
        }
    }
    best
}

/// End of an address literal at the start of `after`: `[` four dotted
/// groups of one to three digits `]`, or `[IPv6:` hex digits, `:` and `.` `]`.
fn literal_end(after: &str, base: usize) -> Option<usize> {
    let inner = after.strip_prefix('[')?;
    let close = inner.find(']')?;
    let body = &inner[..close];
    let valid = match body.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => {
            let hex = &body[5..];
            !hex.is_empty()
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        _ => {
            let groups: Vec<&str> = body.split('.').collect();
            groups.len() == 4
                && groups
                    .iter()
                    .all(|g| (1..=3).contains(&g.len()) && g.bytes().all(|b| b.is_ascii_digit()))
        }
    };
    valid.then_some(base + 1 + close + 1)
}

/// Letter for rule 8.13: any script, combining marks included.
fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphabetic()
    } else {
        c.is_alphabetic() || is_combining_mark(c)
    }
}

fn is_letter_or_digit(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric()
    } else {
        c.is_alphanumeric() || is_combining_mark(c)
    }
}

fn is_label_char(c: char) -> bool {
    c == '-' || is_letter_or_digit(c)
}

fn is_local_char(c: char) -> bool {
    matches!(c, '.' | '_' | '%' | '+' | '-') || is_letter_or_digit(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_disguise_are_found_and_redacted_in_place() {
        let cases = [
            ("jo＠x．org", "[redacted]"),
            ("mail jo\u{200b}@x.org now", "mail [redacted] now"),
            ("jo@x\u{ad}y.org", "[redacted]"),
            ("jo%40x.org", "[redacted]"),
            ("jo%40x%2Eorg!", "[redacted]!"),
            ("jo%40x%2eorg", "[redacted]"),
            ("jo@例子。广告", "[redacted]"),
            ("jo@x\u{ff61}org", "[redacted]"),
            ("\"john smith\"@x.org", "[redacted]"),
            ("to: user@[192.0.2.1].", "to: [redacted]."),
            ("user@[IPv6:2001:db8::1]", "[redacted]"),
            ("mailto:jo@x.org", "mailto:[redacted]"),
            ("\"a@b.com\"@c.org", "[redacted]"),
            ("ｊｏ＠ｘ．ｏｒｇ x", "[redacted] x"),
        ];
        for (input, expected) in cases {
            assert!(contains_email(input), "{input:?}");
            let out = redact_emails(input);
            assert_eq!(out, expected, "{input:?}");
            assert!(!contains_email(&out), "{input:?} -> {out:?}");
        }
    }

    #[test]
    fn folding_keeps_few_marks_on_long_text() {
        let long = format!(
            "{}jo%40x.org{}",
            "température ".repeat(50_000),
            "a".repeat(100_000)
        );
        let folded = fold(&long);
        assert!(folded.marks.len() <= 2, "{} marks", folded.marks.len());
        assert_eq!(redact_emails(&long).matches(REDACTED).count(), 1);
        let widths = "ｊｏ＠ｘ．ｏｒｇ ".repeat(1000);
        assert_eq!(redact_emails(&widths), format!("{REDACTED} ").repeat(1000));
    }

    #[test]
    fn near_misses_stay() {
        for s in [
            "user@[300.1.1]",
            "user@[1.2.3.4.5]",
            "user@[IPv6:]",
            "\"\"@x.org",
            "50%4",
            "100%",
            "%40home",
            "a@b",
            "\"a\\b\"@c.org",
        ] {
            assert!(!contains_email(s), "{s:?}");
            assert!(matches!(redact_emails(s), Cow::Borrowed(_)), "{s:?}");
        }
    }
}
