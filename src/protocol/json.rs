//! Is this text JSON by the protocol's definition (edge rule 8.4), checked
//! without building a value.
//!
//! Every MQTT message is classified (`PayloadRepr::classify`): valid JSON
//! is embedded in the `state` frame as it is, anything else is sent as a
//! string. A frame must therefore never embed text the cloud would refuse,
//! so "valid" here is exactly what [`super::parse_strict`] accepts:
//! RFC 8259 JSON with at most 127 nested containers, no lone surrogate
//! escapes, numbers that are finite as f64, and no duplicate member names.
//! That parser builds a `Value` (an allocation per member); this scan
//! never allocates (fixed arrays for nesting and member names) and skips
//! string content eight bytes at a time. The two are checked against each
//! other over generated inputs (`tests/json_scan_props.rs`).
//!
//! Duplicate member names are found with a 64-bit mask per open object.
//! Each name stands for two bits of it (`name_bits`: a hash of its first
//! eight bytes and, for longer names, of its length and last byte), and a
//! name is compared with the earlier names of its object only when both of
//! its bits are already set. Different names seldom take the same two bits
//! (about 0.4 false alarms in all for an object of 12 names), so a name
//! costs a hash and a test rather than a comparison with each earlier one.
//! The names are held too (position, length and the object's mask up to
//! them): for those comparisons, and to give an object its mask back when
//! an object that is the value of one of its members closes.
//!
//! It replaced a serde `IgnoredAny` pass, which accepted what the cloud
//! refuses: lone surrogate escapes, numbers that are not finite, duplicate
//! member names. Such a payload was embedded raw and made the whole frame
//! invalid; now it travels as a string. (That pass was the faster at
//! first; for the 200-byte sensor payload of `benches/micro.rs` the scan
//! now takes about 100 ns against its 130 ns.)
//!
//! Rare cases are handed to the parser instead of being decided here: a
//! number with an exponent or over 300 characters (is it finite?); more
//! than `KEYS_MAX` (32) member names in the open objects together; a member
//! name written with an escape in an object with other names (`"a"` and
//! `"\u0061"` are one name); and a text of 4 GiB or more. Two of these
//! changed with the mask, to keep tests off the path of every name:
//! - An escaped name is asked about at once if its object has earlier
//!   names; if not, it sets every bit of the object's mask, so that each
//!   later name of the object reaches the comparison, which asks instead.
//!   (Before, each name was tested for an escaped name anywhere before it
//!   in the text, and asked about then.)
//! - The 4 GiB case is new: names are held by position, as `u32`, so that
//!   a held name (with its object's mask) takes 16 bytes. MQTT payloads
//!   are at most 256 MiB, so it never happens to a relayed message.

/// Deepest nesting of arrays and objects that is accepted (serde_json's
/// recursion limit, which [`super::parse_strict`] applies).
const MAX_DEPTH: usize = 127;
/// Most member names held for all open objects together.
const KEYS_MAX: usize = 32;

/// What the scan could not settle by itself.
enum Verdict {
    Valid,
    Invalid,
    /// Let the full parser decide.
    Ask,
}

/// True when `text` is one JSON value (with optional surrounding white
/// space) that [`super::parse_strict`] accepts.
pub fn is_strict_json(text: &str) -> bool {
    if u32::try_from(text.len()).is_err() {
        return super::parse_strict(text).is_ok(); // see `Key`
    }
    let mut held = Held {
        keys: [Key {
            start: 0,
            len: 0,
            mask: 0,
        }; KEYS_MAX],
        outer: [Outer {
            in_object: false,
            first: 0,
        }; MAX_DEPTH],
    };
    match Scan::new(text.as_bytes(), &mut held).document() {
        Verdict::Valid => true,
        Verdict::Invalid => false,
        Verdict::Ask => super::parse_strict(text).is_ok(),
    }
}

/// The scan's fixed arrays. Apart from [`Scan`], so that the compiler can
/// keep the fields of that in registers.
struct Held {
    /// Member names of the open objects, innermost last: `keys[..nkeys]`.
    keys: [Key; KEYS_MAX],
    /// For the container open at level `d`: what opening it hid.
    outer: [Outer; MAX_DEPTH],
}

/// A member name as written, `b[start..start + len]`, with the mask of its
/// object up to and including it. Positions fit in `u32`: longer texts are
/// left to the parser (`is_strict_json`).
#[derive(Clone, Copy)]
struct Key {
    start: u32,
    len: u32,
    mask: u64,
}

/// What opening a container hides, given back when it closes.
#[derive(Clone, Copy)]
struct Outer {
    in_object: bool,
    /// `Scan::first`, at most `KEYS_MAX`.
    first: u8,
}

struct Scan<'a, 'h> {
    b: &'a [u8],
    i: usize,
    held: &'h mut Held,
    /// Names held, and where those of the innermost open object start:
    /// `held.keys[first..nkeys]`.
    nkeys: usize,
    first: usize,
    /// The name bits of the innermost open object (see [`name_bits`]).
    mask: u64,
    /// How many containers are open, and whether the innermost is an
    /// object.
    depth: usize,
    in_object: bool,
    /// A member name written with an escape was seen: `"a"` and `"\u0061"`
    /// name one member, so raw comparison is no longer enough.
    escaped_name: bool,
}

/// `Err` ends the scan with that verdict.
type Step<T> = Result<T, Verdict>;

/// The two bits of 64 (one if they coincide) that stand for a member name:
/// two six-bit fields of a multiplicative hash of `head`, its first eight
/// bytes (little-endian, zero past its end), and for a name of eight bytes
/// or more, of its length and last byte too. A name whose bits are not all
/// in its object's mask differs from the earlier names of the object; one
/// whose bits are may not. (With two bits a name, an object of 12 names
/// gives about 0.4 such false alarms in all, against 1.0 with one bit.)
fn name_bits(raw: &[u8], head: u64) -> u64 {
    const MIX: u64 = 0x9E37_79B9_7F4A_7C15; // 2^64 / golden ratio, odd
    let key = match raw.last() {
        Some(&last) if raw.len() >= 8 => {
            head ^ (u64::from(last) << 8 | raw.len() as u64).rotate_right(16)
        }
        // A shorter name is all in `head` (and holds no zero byte).
        _ => head,
    };
    let h = key.wrapping_mul(MIX);
    1 << (h >> 58) | 1 << (h >> 52 & 63)
}

/// The first eight bytes of `b[start..start + len]` as a little-endian
/// word, zero past its end: one load unless the text ends within eight
/// bytes.
fn head(b: &[u8], start: usize, len: usize) -> u64 {
    match b.get(start..).and_then(<[u8]>::first_chunk::<8>) {
        Some(w) if len >= 8 => u64::from_le_bytes(*w),
        Some(w) => u64::from_le_bytes(*w) & ((1 << (8 * len)) - 1),
        None => b[start..start + len]
            .iter()
            .take(8)
            .rev()
            .fold(0, |head, &c| head << 8 | u64::from(c)),
    }
}

/// Is `raw` one of these names of `b`? Asked only when the bits of `raw`
/// are all in its object's mask.
#[cold]
#[inline(never)]
fn seen(b: &[u8], keys: &[Key], raw: &[u8]) -> bool {
    keys.iter()
        .any(|k| k.len as usize == raw.len() && b[k.start as usize..].starts_with(raw))
}

/// Where in this little-endian word of eight string bytes is the first
/// `"`, `\` or control character? A mask whose lowest set bit is the high
/// bit of that byte; zero when there is none. (The usual SWAR test for a
/// byte below `n`, `(v - n) & !v & 0x80` in each byte: its lowest set bit
/// is exact. Flipping bit 1 maps `"` to 0x20 and the control characters
/// onto themselves, so that one test below 0x21 finds both; a test below 1
/// finds `\` flipped to 0. Neither flip changes the high bit.)
fn special_mask(x: u64) -> u64 {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let quote_or_control = (x ^ (LO * 0x02)).wrapping_sub(LO * 0x21);
    let backslash = (x ^ (LO * u64::from(b'\\'))).wrapping_sub(LO);
    (quote_or_control | backslash) & !x & HI
}

/// How many bytes `b` starts with that a JSON string holds as they are:
/// up to the first `"`, `\` or control character, or all of `b`. Eight
/// bytes at a time, as the scan's strings.
pub(super) fn plain_prefix(b: &[u8]) -> usize {
    let mut rest = b;
    while let Some(w) = rest.first_chunk::<8>() {
        let m = special_mask(u64::from_le_bytes(*w));
        if m != 0 {
            return b.len() - rest.len() + (m.trailing_zeros() / 8) as usize;
        }
        rest = &rest[8..];
    }
    // The last few bytes, padded with spaces (never special) to a word.
    let mut w = [b' '; 8];
    w[..rest.len()].copy_from_slice(rest);
    let m = special_mask(u64::from_le_bytes(w));
    b.len() - rest.len() + rest.len().min((m.trailing_zeros() / 8) as usize)
}

impl<'a, 'h> Scan<'a, 'h> {
    fn new(b: &'a [u8], held: &'h mut Held) -> Self {
        Scan {
            b,
            i: 0,
            held,
            nkeys: 0,
            first: 0,
            mask: 0,
            depth: 0,
            in_object: false,
            escaped_name: false,
        }
    }

    fn document(mut self) -> Verdict {
        match self.run() {
            Ok(()) => Verdict::Valid,
            Err(v) => v,
        }
    }

    fn run(&mut self) -> Step<()> {
        self.value()?;
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            Err(Verdict::Invalid)
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// White space, then `c`.
    fn expect(&mut self, c: u8) -> Step<()> {
        if self.peek() != Some(c) {
            self.ws(); // seldom: most texts are compact
            if self.peek() != Some(c) {
                return Err(Verdict::Invalid);
            }
        }
        self.i += 1;
        Ok(())
    }

    /// One value and, for containers, everything up to the matching close:
    /// iterative, so nesting costs no native stack.
    fn value(&mut self) -> Step<()> {
        loop {
            match self.peek().ok_or(Verdict::Invalid)? {
                c @ (b'{' | b'[') => {
                    let object = c == b'{';
                    self.i += 1;
                    self.open(object)?;
                    self.ws();
                    if self.peek() == Some(if object { b'}' } else { b']' }) {
                        self.i += 1;
                        self.close();
                    } else {
                        if object {
                            self.member_name()?;
                        }
                        continue; // the first member's value or element
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                b' ' | b'\t' | b'\n' | b'\r' => {
                    self.ws();
                    continue;
                }
                _ => return Err(Verdict::Invalid),
            }
            // A value is complete: go on in the enclosing containers.
            loop {
                if self.depth == 0 {
                    return Ok(());
                }
                match (self.peek(), self.in_object) {
                    (Some(b' ' | b'\t' | b'\n' | b'\r'), _) => self.ws(),
                    (Some(b','), true) => {
                        self.i += 1;
                        self.member_name()?;
                        break;
                    }
                    (Some(b','), false) => {
                        self.i += 1;
                        break;
                    }
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        self.i += 1;
                        self.close();
                    }
                    _ => return Err(Verdict::Invalid),
                }
            }
        }
    }

    fn open(&mut self, object: bool) -> Step<()> {
        if self.depth >= MAX_DEPTH {
            return Err(Verdict::Invalid);
        }
        self.held.outer[self.depth] = Outer {
            in_object: self.in_object,
            first: self.first as u8,
        };
        if object {
            self.first = self.nkeys;
            self.mask = 0;
        }
        self.in_object = object;
        self.depth += 1;
        Ok(())
    }

    /// Closes the innermost container (there is one).
    fn close(&mut self) {
        self.depth -= 1;
        if self.in_object {
            self.nkeys = self.first;
            // The object around this one, if any, holds the member whose
            // value this was, so its last name is `keys[nkeys - 1]`.
            if let Some(k) = self.nkeys.checked_sub(1) {
                self.mask = self.held.keys[k].mask;
            }
        }
        let outer = self.held.outer[self.depth];
        self.in_object = outer.in_object;
        self.first = usize::from(outer.first);
    }

    /// `"name"` and the `:` after it; the name must differ from the earlier
    /// members of the same object, which are compared with it only when
    /// its name bits are already in the object's mask. (Inlined, as are
    /// `name` and `string`, so that the fields of `Scan` stay in registers:
    /// a call would take its address.)
    #[inline(always)]
    fn member_name(&mut self) -> Step<()> {
        let (start, raw, bits) = self.name()?;
        if self.mask & bits == bits {
            if self.escaped_name && self.nkeys > self.first {
                // Rare: names that may be spelt two ways.
                return Err(Verdict::Ask);
            }
            if seen(self.b, &self.held.keys[self.first..self.nkeys], raw) {
                return Err(Verdict::Invalid);
            }
        }
        self.mask |= bits;
        let Some(key) = self.held.keys.get_mut(self.nkeys) else {
            // Rare: many members.
            return Err(Verdict::Ask);
        };
        *key = Key {
            // The text is shorter than 4 GiB (`is_strict_json`).
            start: start as u32,
            len: raw.len() as u32,
            mask: self.mask,
        };
        self.nkeys += 1;
        self.expect(b':')
    }

    /// The member name whose `"` is at `i` (after white space): where its
    /// content starts, that content, and its name bits.
    #[inline(always)]
    fn name(&mut self) -> Step<(usize, &'a [u8], u64)> {
        if self.peek() != Some(b'"') {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(Verdict::Invalid);
            }
        }
        let start = self.i + 1;
        // Most names are short: the name and its closing quote in one
        // word, which is also its `head`.
        if let Some(bytes) = self.b.get(start..).and_then(<[u8]>::first_chunk::<8>) {
            let w = u64::from_le_bytes(*bytes);
            let n = (special_mask(w).trailing_zeros() / 8) as usize;
            if bytes.get(n) == Some(&b'"') {
                self.i = start + n + 1;
                let raw = &bytes[..n];
                return Ok((start, raw, name_bits(raw, w & ((1 << (8 * n)) - 1))));
            }
        }
        let escaped = self.string()?;
        let raw = &self.b[start..self.i - 1];
        if escaped {
            self.escaped_name = true;
            if self.nkeys > self.first {
                return Err(Verdict::Ask); // may be an earlier name
            }
            // All bits: each later name of this object is asked about.
            return Ok((start, raw, u64::MAX));
        }
        Ok((start, raw, name_bits(raw, head(self.b, start, raw.len()))))
    }

    fn literal(&mut self, word: &[u8]) -> Step<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Verdict::Invalid)
        }
    }

    /// A string starting at the `"`; returns whether it holds an escape.
    #[inline(always)]
    fn string(&mut self) -> Step<bool> {
        // What is left of the text after the opening quote.
        let mut rest = &self.b[self.i + 1..];
        let mut escaped = false;
        loop {
            // Plain bytes eight at a time, then straight to the first
            // special one; the last few bytes one by one.
            if let Some(w) = rest.first_chunk::<8>() {
                let m = special_mask(u64::from_le_bytes(*w));
                if m == 0 {
                    rest = &rest[8..];
                    continue;
                }
                rest = &rest[(m.trailing_zeros() / 8) as usize..];
            }
            match rest {
                [b'"', after @ ..] => {
                    self.i = self.b.len() - after.len();
                    return Ok(escaped);
                }
                [b'\\', after @ ..] => {
                    escaped = true;
                    rest = escape(after)?;
                }
                [] | [0x00..=0x1f, ..] => return Err(Verdict::Invalid),
                [_, after @ ..] => rest = after,
            }
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Step<()> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Verdict::Invalid),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        let mut exponent = false;
        if let Some(b'e' | b'E') = self.peek() {
            exponent = true;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.some_digits()?;
        }
        // Without an exponent, up to 300 characters are below f64::MAX.
        if exponent || self.i - start > 300 {
            return Err(Verdict::Ask);
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Step<()> {
        let from = self.i;
        self.digits();
        if self.i == from {
            Err(Verdict::Invalid)
        } else {
            Ok(())
        }
    }
}

/// The escape that `rest` starts with (after a `\`); returns what follows
/// it. Out of line, so that the common path of [`Scan::string`] stays
/// small.
#[inline(never)]
fn escape(rest: &[u8]) -> Step<&[u8]> {
    match rest {
        [b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't', after @ ..] => Ok(after),
        [b'u', after @ ..] => {
            let (unit, after) = hex4(after)?;
            match unit {
                0xD800..=0xDBFF => {
                    // A high surrogate must be followed by a low one.
                    let Some(after) = after.strip_prefix(b"\\u") else {
                        return Err(Verdict::Invalid);
                    };
                    match hex4(after)? {
                        (0xDC00..=0xDFFF, after) => Ok(after),
                        _ => Err(Verdict::Invalid),
                    }
                }
                0xDC00..=0xDFFF => Err(Verdict::Invalid),
                _ => Ok(after),
            }
        }
        _ => Err(Verdict::Invalid),
    }
}

/// The four hex digits `rest` starts with, and what follows them.
fn hex4(rest: &[u8]) -> Step<(u16, &[u8])> {
    let (digits, after) = rest.split_first_chunk::<4>().ok_or(Verdict::Invalid)?;
    let mut v: u16 = 0;
    for &d in digits {
        let n = (d as char).to_digit(16).ok_or(Verdict::Invalid)?;
        v = v << 4 | n as u16;
    }
    Ok((v, after))
}

#[cfg(test)]
mod tests {
    use super::is_strict_json as ok;

    #[test]
    fn accepts_json_texts() {
        for t in [
            "0",
            "-0",
            " 1.5 ",
            "\"\"",
            "\"\\ud83d\\ude00 \\n\\\"\"",
            "true",
            "null",
            "[]",
            "{}",
            "[1,[2,{\"a\":[]}],\"x\"]",
            "{\"a\":1,\"b\":{\"a\":2},\"c\":[{\"a\":3},{\"a\":4}]}",
            "\t{\r\n\"k\" : \"v\" }\n",
            "1e400", // asked: not finite, but the parser says so
        ] {
            assert_eq!(ok(t), super::super::parse_strict(t).is_ok(), "{t:?}");
        }
        assert!(ok("{\"a\":1,\"b\":[true,false,null]}"));
    }

    #[test]
    fn refuses_what_the_strict_parser_refuses() {
        for t in [
            "",
            " ",
            "01",
            "1.",
            ".5",
            "+1",
            "1e",
            "-",
            "[1,]",
            "[,1]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":1}x",
            "[1] [2]",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "\"tab\there\"",
            "{\"a\":1,\"a\":2}",
            "{\"a\":1,\"\\u0061\":2}",
            "tru",
            "nul",
            "[",
            "{\"a\":{\"b\":1}",
            "1e400",
            "-1e309",
        ] {
            assert!(!ok(t), "{t:?} accepted");
        }
    }

    #[test]
    fn nesting_limit_is_the_parsers() {
        for depth in [126, 127, 128, 129, 5000] {
            let t = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            assert_eq!(
                ok(&t),
                super::super::parse_strict(&t).is_ok(),
                "depth {depth}"
            );
        }
    }

    #[test]
    fn names_whose_bits_collide_are_compared() {
        use super::{head, name_bits};
        let bits = |n: &str| name_bits(n.as_bytes(), head(n.as_bytes(), 0, n.len()));
        // Short names: two different ones with the same bits.
        let names: Vec<String> = (0..5000).map(|i| format!("k{i}")).collect();
        let (a, b) = names
            .iter()
            .enumerate()
            .find_map(|(i, a)| {
                let b = names[..i].iter().find(|b| bits(b) == bits(a))?;
                Some((a.as_str(), b.as_str()))
            })
            .expect("a pair of names with the same bits");
        assert_ne!(a, b);
        // Long names with the same first eight bytes, length and last byte.
        let (c, d) = ("abcdefgh_1_z", "abcdefgh_2_z");
        assert_eq!(bits(c), bits(d));
        for (x, y) in [(a, b), (c, d)] {
            assert!(ok(&format!("{{\"{x}\":1,\"{y}\":2}}")), "{x} {y}");
            assert!(ok(&format!("{{\"{x}\":1,\"q\":[],\"{y}\":2}}")), "{x} {y}");
            assert!(
                !ok(&format!("{{\"{x}\":1,\"{y}\":2,\"{x}\":3}}")),
                "{x} {y}"
            );
            assert!(
                !ok(&format!("{{\"{y}\":1,\"{x}\":2,\"{y}\":3}}")),
                "{x} {y}"
            );
        }
        // A name near the end of the text (fewer than eight bytes left)
        // gets the same bits as elsewhere.
        assert!(!ok("{\"abc\":1,\"abc\":2}"));
        assert!(!ok("{\"abcdefghij\":1,\"abcdefghij\":2}"));
        assert!(ok("{\"abc\":1,\"abd\":2}"));
    }

    #[test]
    fn a_closed_object_gives_its_object_the_mask_back() {
        for (t, valid) in [
            ("{\"a\":{\"b\":1},\"b\":2}", true),
            ("{\"a\":{\"b\":1},\"a\":2}", false),
            ("{\"a\":[{\"a\":1},{\"b\":2}],\"b\":2}", true),
            ("{\"a\":[{\"b\":1}],\"a\":2}", false),
            ("{\"a\":{\"b\":{\"c\":1},\"c\":2},\"c\":3,\"b\":4}", true),
            ("{\"a\":{\"b\":{\"c\":1},\"c\":2,\"b\":3},\"c\":4}", false),
            ("[{\"a\":1},{\"a\":2}]", true),
            ("{\"x\":{},\"y\":{},\"x\":{}}", false),
        ] {
            assert_eq!(ok(t), valid, "{t}");
            assert_eq!(super::super::parse_strict(t).is_ok(), valid, "{t}");
        }
    }

    #[test]
    fn escaped_names_are_left_to_the_parser() {
        for t in [
            "{\"\\u0061\":1,\"a\":2}",
            "{\"a\":1,\"\\u0061\":2}",
            "{\"\\u0061\":{\"b\":1},\"a\":2}",
            "{\"\\u0061\":1,\"b\":2}",
            "{\"a\\n\":1,\"b\":2,\"a\\n\":3}",
            "[{\"\\u0061\":1},{\"a\":1,\"a\":2}]",
        ] {
            assert_eq!(ok(t), super::super::parse_strict(t).is_ok(), "{t}");
        }
    }

    #[test]
    fn many_members_are_checked_by_the_parser() {
        let unique: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        assert!(ok(&format!("{{{}}}", unique.join(","))));
        let mut dup = unique.clone();
        dup.push("\"k3\":0".into());
        assert!(!ok(&format!("{{{}}}", dup.join(","))));
    }
}
