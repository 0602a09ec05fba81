//! The little JSON the proxy reads: `TOKEN_COMMAND`'s argv (an array of strings) and a token
//! command's answer (one flat object of strings and integers), plus the RFC 3339 time an
//! answer's `expires_at` holds.
//!
//! Strict and small on purpose (RFC 8259, the subset): no nesting, no floats, no `true`,
//! `false` or `null`, no duplicate keys, nothing after the value but whitespace. A string's
//! bytes may be a secret, so errors are static text that never quote the input, and the
//! caller wipes what it parsed.

/// A value of a flat object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(Vec<u8>),
    Int(i64),
}

/// One flat object, its members in order.
pub type Object = Vec<(Vec<u8>, Value)>;

/// A parse failure: static text only (the input may be a token).
pub type JsonError = &'static str;

struct Parser<'a> {
    b: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        // RFC 8259 §2: space, horizontal tab, line feed, carriage return.
        while matches!(self.b.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.b.get(self.at) == Some(&c) {
            self.at += 1;
            return true;
        }
        false
    }

    fn expect(&mut self, c: u8, why: JsonError) -> Result<(), JsonError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(why)
        }
    }

    fn end(&mut self) -> Result<(), JsonError> {
        self.ws();
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err("text after the JSON value")
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .b
            .get(self.at..self.at + 4)
            .ok_or("a short \\u escape")?;
        let mut n = 0;
        for &d in digits {
            let v = (d as char).to_digit(16).ok_or("a bad \\u escape")?;
            n = n * 16 + v;
        }
        self.at += 4;
        Ok(n)
    }

    /// A string (RFC 8259 §7), its escapes decoded, as UTF-8 bytes.
    fn string(&mut self) -> Result<Vec<u8>, JsonError> {
        self.expect(b'"', "a string was expected")?;
        let mut out = Vec::new();
        loop {
            let &c = self.b.get(self.at).ok_or("an unterminated string")?;
            self.at += 1;
            match c {
                b'"' => break,
                b'\\' => self.escape(&mut out)?,
                0..=0x1f => return Err("a control character in a string"),
                _ => out.push(c),
            }
        }
        if std::str::from_utf8(&out).is_err() {
            return Err("a string that is not UTF-8");
        }
        Ok(out)
    }

    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), JsonError> {
        let &e = self.b.get(self.at).ok_or("an unterminated string")?;
        self.at += 1;
        let simple = match e {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => return self.unicode(out),
            _ => return Err("a bad escape in a string"),
        };
        out.push(simple);
        Ok(())
    }

    fn unicode(&mut self, out: &mut Vec<u8>) -> Result<(), JsonError> {
        let hi = self.hex4()?;
        let code = if (0xd800..0xdc00).contains(&hi) {
            if self.b.get(self.at..self.at + 2) != Some(b"\\u") {
                return Err("a lone surrogate in a string");
            }
            self.at += 2;
            let lo = self.hex4()?;
            if !(0xdc00..0xe000).contains(&lo) {
                return Err("a lone surrogate in a string");
            }
            0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
        } else {
            hi
        };
        let ch = char::from_u32(code).ok_or("a lone surrogate in a string")?;
        let mut buf = [0; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        Ok(())
    }

    /// An integer (RFC 8259 §6, without fraction or exponent), within `i64`.
    fn integer(&mut self) -> Result<i64, JsonError> {
        let start = self.at;
        if self.b.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        let digits = self.at;
        while self.b.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        let n = self.at - digits;
        if n == 0 || (n > 1 && self.b[digits] == b'0') {
            return Err("a bad number");
        }
        if matches!(self.b.get(self.at), Some(b'.' | b'e' | b'E')) {
            return Err("a number that is not an integer");
        }
        std::str::from_utf8(&self.b[start..self.at])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a number out of range")
    }
}

/// Parses a JSON array of strings (`TOKEN_COMMAND`'s argv).
pub fn string_array(b: &[u8]) -> Result<Vec<String>, JsonError> {
    let mut p = Parser { b, at: 0 };
    p.expect(b'[', "an array was expected")?;
    let mut out = Vec::new();
    if !p.eat(b']') {
        loop {
            p.ws();
            let s = p.string()?;
            out.push(String::from_utf8(s).map_err(|_| "a string that is not UTF-8")?);
            if p.eat(b']') {
                break;
            }
            p.expect(b',', "a comma or ] was expected")?;
        }
    }
    p.end()?;
    Ok(out)
}

/// Parses one flat JSON object whose values are strings or integers.
pub fn flat_object(b: &[u8]) -> Result<Object, JsonError> {
    let mut p = Parser { b, at: 0 };
    p.expect(b'{', "an object was expected")?;
    let mut out: Object = Vec::new();
    if !p.eat(b'}') {
        loop {
            p.ws();
            let key = p.string()?;
            p.expect(b':', "a colon was expected")?;
            p.ws();
            let value = match p.b.get(p.at) {
                Some(b'"') => Value::Str(p.string()?),
                Some(b'-' | b'0'..=b'9') => Value::Int(p.integer()?),
                _ => return Err("a value that is neither a string nor an integer"),
            };
            if out.iter().any(|(k, _)| *k == key) {
                return Err("a key given twice");
            }
            out.push((key, value));
            if p.eat(b'}') {
                break;
            }
            p.expect(b',', "a comma or } was expected")?;
        }
    }
    p.end()?;
    Ok(out)
}

/// Seconds since the Unix epoch of an RFC 3339 `date-time` (§5.6): `2026-01-02T03:04:05Z`,
/// with optional fractional seconds (dropped) and a `Z` or `±hh:mm` offset.
pub fn rfc3339(s: &[u8]) -> Result<i64, JsonError> {
    const BAD: JsonError = "expires_at is not an RFC 3339 time";
    let num = |r: std::ops::Range<usize>| -> Result<i64, JsonError> {
        let d = s.get(r).ok_or(BAD)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return Err(BAD);
        }
        Ok(d.iter().fold(0, |n, &c| n * 10 + i64::from(c - b'0')))
    };
    let sep = |i: usize, c: &[u8]| {
        s.get(i)
            .is_some_and(|b| c.contains(&b.to_ascii_uppercase()))
    };
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"T ") && sep(13, b":") && sep(16, b":")) {
        return Err(BAD);
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut at = 19;
    if s.get(at) == Some(&b'.') {
        at += 1;
        let from = at;
        while s.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == from {
            return Err(BAD);
        }
    }
    let offset = match s.get(at) {
        Some(b'Z' | b'z') if at + 1 == s.len() => 0,
        Some(&sign @ (b'+' | b'-')) if at + 6 == s.len() && s[at + 3] == b':' => {
            let m = num(at + 1..at + 3)? * 60 + num(at + 4..at + 6)?;
            if sign == b'+' {
                m * 60
            } else {
                -m * 60
            }
        }
        _ => return Err(BAD),
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return Err(BAD);
    }
    Ok(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A token command's answer, interpreted: the token's bytes and, when the answer says, when
/// it expires (seconds since the epoch, or seconds from now).
#[derive(Debug, PartialEq, Eq)]
pub struct TokenAnswer {
    pub token: Vec<u8>,
    pub expiry: Option<Expiry>,
}

/// When a token from a command expires, as its answer said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `expires_at`: seconds since the Unix epoch.
    At(i64),
    /// `expires_in`: seconds from when the answer was read.
    In(i64),
}

/// The latest expiry taken as given: an answer further out than this (or past what the
/// clock can hold) is taken to expire then, never to overflow.
pub const EXPIRY_MAX: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);

impl Expiry {
    /// When the token expires, for an answer read at `now`: at most [`EXPIRY_MAX`] after it;
    /// an expiry before the epoch is the epoch (already past).
    pub fn time(self, now: std::time::SystemTime) -> std::time::SystemTime {
        let latest = now + EXPIRY_MAX;
        let at = match self {
            Expiry::In(secs) => {
                now.checked_add(std::time::Duration::from_secs(secs.unsigned_abs()))
            }
            Expiry::At(secs) => std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(
                u64::try_from(secs).unwrap_or(0),
            )),
        };
        at.map_or(latest, |t| t.min(latest))
    }
}

/// Interprets a command's output: one JSON object (`{"token": ..., "expires_at": RFC 3339}`
/// or `{"access_token": ..., "expires_in": seconds}`, other members ignored) when it starts
/// with `{`, else the text itself less one LF or CRLF ending (the token line; its checks
/// are the token's own). The
/// parsed members are wiped before this returns; the caller wipes `out` and the answer.
pub fn token_answer(out: &[u8]) -> Result<TokenAnswer, JsonError> {
    let trimmed = out.trim_ascii_start();
    if !trimmed.starts_with(b"{") {
        // One line: its LF (or CRLF) ending is not part of the token.
        let line = out.strip_suffix(b"\n").unwrap_or(out);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        return Ok(TokenAnswer {
            token: line.to_vec(),
            expiry: None,
        });
    }
    let mut members = flat_object(trimmed)?;
    let answer = pick(&members);
    for (k, v) in &mut members {
        zeroize::Zeroize::zeroize(k);
        if let Value::Str(s) = v {
            zeroize::Zeroize::zeroize(s);
        }
    }
    answer
}

fn pick(members: &Object) -> Result<TokenAnswer, JsonError> {
    let get = |name: &[u8]| members.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let token = match (get(b"token"), get(b"access_token")) {
        (Some(Value::Str(t)), None) | (None, Some(Value::Str(t))) => t.clone(),
        (Some(_), Some(_)) => return Err("both token and access_token"),
        (None, None) => return Err("no token or access_token member"),
        _ => return Err("the token is not a string"),
    };
    let expiry = match (get(b"expires_at"), get(b"expires_in")) {
        (None, None) => None,
        (Some(Value::Str(at)), None) => Some(Expiry::At(rfc3339(at)?)),
        (None, Some(Value::Int(n))) if *n > 0 => Some(Expiry::In(*n)),
        (Some(_), Some(_)) => return Err("both expires_at and expires_in"),
        (Some(_), None) => return Err("expires_at is not a string"),
        (None, Some(_)) => return Err("expires_in is not a positive integer"),
    };
    Ok(TokenAnswer { token, expiry })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_of_strings() {
        assert_eq!(
            string_array(br#" ["op", "read", "op://v/i/f\u00e9\n"] "#).unwrap(),
            ["op", "read", "op://v/i/f\u{e9}\n"]
        );
        assert_eq!(string_array(b"[]").unwrap(), Vec::<String>::new());
        for bad in [
            &b"op read"[..],
            b"[\"a\",]",
            b"[\"a\"",
            b"[1]",
            b"[\"a\"] x",
            b"[\"a\tb\"]",
            b"[\"\\ud800\"]",
            b"[\"\\x\"]",
        ] {
            assert!(string_array(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flat_objects() {
        let o = flat_object(br#"{"access_token":"sk-\"x\"","expires_in":3600,"n":-2}"#).unwrap();
        assert_eq!(
            o,
            [
                (b"access_token".to_vec(), Value::Str(b"sk-\"x\"".to_vec())),
                (b"expires_in".to_vec(), Value::Int(3600)),
                (b"n".to_vec(), Value::Int(-2)),
            ]
        );
        assert_eq!(flat_object(b" { } ").unwrap(), []);
        assert_eq!(
            flat_object(br#"{"a":"\ud83d\ude00"}"#).unwrap()[0].1,
            Value::Str("\u{1f600}".as_bytes().to_vec())
        );
        for bad in [
            &br#"{"a":1.5}"#[..],
            br#"{"a":1e3}"#,
            br#"{"a":01}"#,
            br#"{"a":true}"#,
            br#"{"a":null}"#,
            br#"{"a":{"b":1}}"#,
            br#"{"a":1,"a":2}"#,
            br#"{"a":1,}"#,
            br#"{"a" 1}"#,
            br#"{"a":99999999999999999999}"#,
            br#"{"a":1}{"#,
            br#"{"a":"\u12"}"#,
            b"{\"a\":\"\xff\"}",
            b"",
        ] {
            assert!(flat_object(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339(b"1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(rfc3339(b"2026-12-07T18:10:17Z").unwrap(), 1_796_667_017);
        assert_eq!(
            rfc3339(b"2026-12-07T18:10:17.123456Z").unwrap(),
            1_796_667_017
        );
        assert_eq!(
            rfc3339(b"2026-12-07T20:10:17+02:00").unwrap(),
            1_796_667_017
        );
        assert_eq!(rfc3339(b"2000-02-29t00:00:00-00:30").unwrap(), 951_784_200);
        for bad in [
            &b"2026-12-07"[..],
            b"2026-12-07T18:10:17",
            b"2026-13-07T18:10:17Z",
            b"2026-12-07T18:10:17.Z",
            b"2026-12-07T18:10:17+0200",
            b"2026-12-07T18:10:17Zx",
            b"2026/12/07T18:10:17Z",
        ] {
            assert!(rfc3339(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_answers() {
        let a = token_answer(b"sk-ant-line\r\n").unwrap();
        assert_eq!((a.token.as_slice(), a.expiry), (&b"sk-ant-line"[..], None));
        let a = token_answer(b"sk-ant-line").unwrap();
        assert_eq!(a.token, b"sk-ant-line");
        let a = token_answer(b"two\nlines\n").unwrap();
        assert_eq!(a.token, b"two\nlines", "refused by the token's own checks");
        let a = token_answer(br#"{"token":"t1","expires_at":"1970-01-01T00:01:00Z"}"#).unwrap();
        assert_eq!(
            (a.token.as_slice(), a.expiry),
            (&b"t1"[..], Some(Expiry::At(60)))
        );
        let a = token_answer(br#" {"access_token":"t2","expires_in":3600,"token_type":"bearer"}"#)
            .unwrap();
        assert_eq!(
            (a.token.as_slice(), a.expiry),
            (&b"t2"[..], Some(Expiry::In(3600)))
        );
        let a = token_answer(br#"{"token":"t3"}"#).unwrap();
        assert_eq!(a.expiry, None);
        for bad in [
            &br#"{"token":"a","access_token":"b"}"#[..],
            br#"{"expires_in":5}"#,
            br#"{"token":5}"#,
            br#"{"token":"a","expires_in":0}"#,
            br#"{"token":"a","expires_in":"5"}"#,
            br#"{"token":"a","expires_at":"soon"}"#,
            br#"{"token":"a","expires_at":"1970-01-01T00:01:00Z","expires_in":5}"#,
            br#"{"token":"a""#,
        ] {
            assert!(token_answer(bad).is_err(), "{bad:?}");
        }
    }

    /// An expiry past what the clock can hold is capped, never an overflow (which would
    /// abort the process).
    #[test]
    fn huge_expiries_are_capped() {
        let now = std::time::SystemTime::now();
        for e in [
            Expiry::In(i64::MAX),
            Expiry::At(i64::MAX),
            Expiry::In(i64::MIN),
        ] {
            assert!(e.time(now) <= now + EXPIRY_MAX, "{e:?}");
        }
        assert_eq!(Expiry::At(-5).time(now), std::time::UNIX_EPOCH);
        assert_eq!(
            Expiry::In(60).time(now),
            now + std::time::Duration::from_secs(60)
        );
    }
}
