//! Payloads that are not JSON, for a link audience (rules 6.1.4, 6.1.5):
//! what may never reach a link, and how text that may is redacted.

use std::borrow::Cow;

use super::{contains_email, redact_emails, Policy, REDACTED};

/// Rule 6.1.4: a payload the strict parse refused but whose first
/// character other than white space and U+FEFF is `{` or `[`. Such a
/// payload is never sent to a link, not even as text.
pub fn looks_like_json(text: &str) -> bool {
    let rest = text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    rest.starts_with(['{', '['])
}

/// Characters that end a key of a `key=value` pair, looking back from `=`/`:`.
fn ends_key(c: char) -> bool {
    c.is_whitespace() || "=:,;&?/\"'<>()[]{}|".contains(c)
}

/// Characters that end the value of a pair.
fn ends_value(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | ';' | '&')
}

/// End of the value starting at `start`: a quoted value runs to its
/// closing quote, any other to the next white space, `,`, `;` or `&`.
fn value_end(text: &str, start: usize) -> usize {
    let rest = &text[start..];
    let end = match rest.chars().next() {
        Some(q @ ('"' | '\'')) => rest[1..].find(q).map(|i| i + 2),
        _ => rest.find(ends_value),
    };
    start + end.unwrap_or(rest.len())
}

impl Policy {
    /// Rule 6.1.5: text for a link in deny mode. Values of `key=value` and
    /// `key: value` pairs whose key is personal become `[redacted]` (the
    /// key and its separator stay), then every email address does.
    pub fn redact_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.redact_pairs(text) {
            Cow::Borrowed(s) => redact_emails(s),
            Cow::Owned(s) => Cow::Owned(redact_emails(&s).into_owned()),
        }
    }

    fn redact_pairs<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = String::new();
        let mut done = 0;
        let mut search = 0;
        while let Some(offset) = text[search..].find(['=', ':']) {
            let sep = search + offset;
            let key_start = text[done..sep].rfind(ends_key).map_or(done, |i| {
                done + i + text[done + i..].chars().next().map_or(1, char::len_utf8)
            });
            let key = &text[key_start..sep];
            let value_start = sep
                + 1
                + (text[sep + 1..].len() - text[sep + 1..].trim_start_matches([' ', '\t']).len());
            let end = value_end(text, value_start);
            if end > value_start
                && !key.is_empty()
                && (self.is_personal(key) || contains_email(key))
            {
                out.push_str(&text[done..value_start]);
                out.push_str(REDACTED);
                done = end;
                search = end;
            } else {
                search = sep + 1;
            }
        }
        if done == 0 {
            return Cow::Borrowed(text);
        }
        out.push_str(&text[done..]);
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lookalikes_are_recognised() {
        for t in ["{\"t\":NaN}", "  [1,", "\u{feff}{}", "\n\t{'a':1}"] {
            assert!(looks_like_json(t), "{t:?}");
        }
        for t in ["ON", "22.5", "", "a {b}", "\"{\""] {
            assert!(!looks_like_json(t), "{t:?}");
        }
    }

    #[test]
    fn personal_pairs_are_redacted_and_others_kept() {
        let p = Policy::default();
        let cases = [
            ("owner=Johanna", "owner=[redacted]"),
            ("owner: Johanna, on", "owner: [redacted], on"),
            ("ownerName=Jo&t=21", "ownerName=[redacted]&t=21"),
            ("t=21;e-mail:x;v=1", "t=21;e-mail:[redacted];v=1"),
            ("owner=\"Jo Smith\" t=1", "owner=[redacted] t=1"),
            ("temp=21 state: on", "temp=21 state: on"),
            ("https://example.org/a", "https://example.org/a"),
            ("owner=", "owner="),
            ("to jo@x.org, user:admin", "to [redacted], user:[redacted]"),
            ("\u{435}mail=x", "\u{435}mail=[redacted]"),
        ];
        for (input, expected) in cases {
            assert_eq!(p.redact_text(input), expected, "{input:?}");
        }
        assert!(matches!(p.redact_text("temp=21"), Cow::Borrowed(_)));
    }
}
