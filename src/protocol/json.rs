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
//! It replaced a serde `IgnoredAny` pass, which is faster (160 ns against
//! about 255 ns for the 200-byte sensor payload of `benches/micro.rs`) but
//! accepted what the cloud refuses: lone surrogate escapes, numbers that
//! are not finite, duplicate member names. Such a payload was embedded raw
//! and made the whole frame invalid; now it travels as a string.
//!
//! Three rare cases are handed to the parser instead of being decided here:
//! a number with an exponent or over 300 characters (is it finite?); more
//! than [`KEYS_MAX`] member names in the open objects together (duplicates
//! are found by comparing each name with the earlier ones of its object,
//! quadratic past that); and a member name written with an escape next to
//! others (`"a"` and `"\u0061"` are one name).

/// Deepest nesting of arrays and objects that is accepted (serde_json's
/// recursion limit, which [`super::parse_strict`] applies).
const MAX_DEPTH: usize = 127;
/// Most member names held for all open objects together (each is compared
/// with the earlier names of its object).
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
    match Scan::new(text.as_bytes()).document() {
        Verdict::Valid => true,
        Verdict::Invalid => false,
        Verdict::Ask => super::parse_strict(text).is_ok(),
    }
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    /// Member names of the open objects, innermost last: `keys[..nkeys]`.
    /// Fixed size, so the scan never allocates.
    keys: [Name<'a>; KEYS_MAX],
    nkeys: usize,
    /// Open containers: how many, and bit `d` set when level `d` is an
    /// object, whose names start at `starts[d]` in `keys`.
    depth: usize,
    objects: u128,
    starts: [u8; MAX_DEPTH],
    /// A member name written with an escape was seen: `"a"` and `"\u0061"`
    /// name one member, so raw comparison is no longer enough.
    escaped_name: bool,
}

/// `Err` ends the scan with that verdict.
type Step<T> = Result<T, Verdict>;

/// A member name as written, with what makes comparing names cheap: most
/// pairs differ in length or in their first eight bytes.
#[derive(Clone, Copy)]
struct Name<'a> {
    raw: &'a [u8],
    head: u64,
}

impl<'a> Name<'a> {
    const fn empty() -> Self {
        Name { raw: &[], head: 0 }
    }

    fn new(raw: &'a [u8]) -> Self {
        let mut head = 0u64;
        for (k, &c) in raw.iter().take(8).enumerate() {
            head |= u64::from(c) << (8 * k);
        }
        Name { raw, head }
    }

    fn same(&self, other: &Name<'_>) -> bool {
        self.raw.len() == other.raw.len() && self.head == other.head && self.raw == other.raw
    }
}

/// Where in this little-endian word of eight string bytes is the first
/// `"`, `\` or control character? A mask whose lowest set bit is the high
/// bit of that byte; zero when there is none. (The usual SWAR tests for a
/// zero byte and for a byte below 0x20: their lowest set bit is exact.)
fn special_mask(x: u64) -> u64 {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero_in = |v: u64| v.wrapping_sub(LO) & !v & HI;
    let quote = zero_in(x ^ (LO * u64::from(b'"')));
    let backslash = zero_in(x ^ (LO * u64::from(b'\\')));
    let control = x.wrapping_sub(LO * 0x20) & !x & HI;
    quote | backslash | control
}

impl<'a> Scan<'a> {
    fn new(b: &'a [u8]) -> Self {
        Scan {
            b,
            i: 0,
            keys: [Name::empty(); KEYS_MAX],
            nkeys: 0,
            depth: 0,
            objects: 0,
            starts: [0; MAX_DEPTH],
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

    fn expect(&mut self, c: u8) -> Step<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Verdict::Invalid)
        }
    }

    /// One value and, for containers, everything up to the matching close:
    /// iterative, so nesting costs no native stack.
    fn value(&mut self) -> Step<()> {
        loop {
            self.ws();
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
                _ => return Err(Verdict::Invalid),
            }
            // A value is complete: go on in the enclosing containers.
            loop {
                let Some(in_object) = self.innermost() else {
                    return Ok(());
                };
                self.ws();
                match (self.peek(), in_object) {
                    (Some(b','), true) => {
                        self.i += 1;
                        self.ws();
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

    /// Is the innermost open container an object? `None` at top level.
    fn innermost(&self) -> Option<bool> {
        let d = self.depth.checked_sub(1)?;
        Some(self.objects >> d & 1 == 1)
    }

    fn open(&mut self, object: bool) -> Step<()> {
        if self.depth >= MAX_DEPTH {
            return Err(Verdict::Invalid);
        }
        if object {
            self.objects |= 1 << self.depth;
            // nkeys <= KEYS_MAX = 32 fits.
            self.starts[self.depth] = self.nkeys as u8;
        } else {
            self.objects &= !(1 << self.depth);
        }
        self.depth += 1;
        Ok(())
    }

    fn close(&mut self) {
        if let Some(true) = self.innermost() {
            self.nkeys = usize::from(self.starts[self.depth - 1]);
        }
        self.depth = self.depth.saturating_sub(1);
    }

    /// `"name"` and the `:` after it; the name must differ from the earlier
    /// members of the same object.
    fn member_name(&mut self) -> Step<()> {
        if self.peek() != Some(b'"') {
            return Err(Verdict::Invalid);
        }
        let (raw, escaped) = self.string()?;
        let name = Name::new(raw);
        self.escaped_name |= escaped;
        if self.innermost() != Some(true) {
            return Err(Verdict::Invalid);
        }
        let start = usize::from(self.starts[self.depth - 1]);
        let earlier = &self.keys[start..self.nkeys];
        if self.nkeys == KEYS_MAX || (self.escaped_name && !earlier.is_empty()) {
            // Rare: many members, or names that may be spelt two ways.
            return Err(Verdict::Ask);
        }
        if earlier.iter().any(|k| k.same(&name)) {
            return Err(Verdict::Invalid);
        }
        self.keys[self.nkeys] = name;
        self.nkeys += 1;
        self.ws();
        self.expect(b':')
    }

    fn literal(&mut self, word: &[u8]) -> Step<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Verdict::Invalid)
        }
    }

    /// A string starting at the `"`; returns its raw content and whether
    /// it holds an escape.
    fn string(&mut self) -> Step<(&'a [u8], bool)> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            // Plain bytes eight at a time, then straight to the first
            // special one; the last few bytes one by one.
            if let Some(word) = self.b.get(self.i..self.i + 8) {
                let mut w = [0u8; 8];
                w.copy_from_slice(word);
                let m = special_mask(u64::from_le_bytes(w));
                if m == 0 {
                    self.i += 8;
                    continue;
                }
                self.i += (m.trailing_zeros() / 8) as usize;
            }
            let c = *self.b.get(self.i).ok_or(Verdict::Invalid)?;
            self.i += 1;
            match c {
                b'"' => return Ok((&self.b[start..self.i - 1], escaped)),
                b'\\' => {
                    escaped = true;
                    self.escape()?;
                }
                0x00..=0x1f => return Err(Verdict::Invalid),
                _ => {}
            }
        }
    }

    /// The escape after a `\`.
    fn escape(&mut self) -> Step<()> {
        let c = *self.b.get(self.i).ok_or(Verdict::Invalid)?;
        self.i += 1;
        match c {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(()),
            b'u' => {
                let unit = self.hex4()?;
                match unit {
                    0xD800..=0xDBFF => {
                        // A high surrogate must be followed by a low one.
                        if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                            return Err(Verdict::Invalid);
                        }
                        self.i += 2;
                        match self.hex4()? {
                            0xDC00..=0xDFFF => Ok(()),
                            _ => Err(Verdict::Invalid),
                        }
                    }
                    0xDC00..=0xDFFF => Err(Verdict::Invalid),
                    _ => Ok(()),
                }
            }
            _ => Err(Verdict::Invalid),
        }
    }

    fn hex4(&mut self) -> Step<u16> {
        let digits = self.b.get(self.i..self.i + 4).ok_or(Verdict::Invalid)?;
        let mut v: u16 = 0;
        for &d in digits {
            let n = (d as char).to_digit(16).ok_or(Verdict::Invalid)?;
            v = v << 4 | n as u16;
        }
        self.i += 4;
        Ok(v)
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
    fn many_members_are_checked_by_the_parser() {
        let unique: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        assert!(ok(&format!("{{{}}}", unique.join(","))));
        let mut dup = unique.clone();
        dup.push("\"k3\":0".into());
        assert!(!ok(&format!("{{{}}}", dup.join(","))));
    }
}
