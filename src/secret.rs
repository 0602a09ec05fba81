//! The real token: one type, in memory only.
//!
//! [`Token`] has no `Display`; its `Debug` prints nothing of it; its bytes are locked in RAM
//! (best effort) and wiped on drop. It is validated as visible ASCII (0x21..=0x7E), so it can
//! never smuggle CR/LF into a header. The upstream header line is rendered once at startup into
//! the same protected allocation, so the hot path copies it without formatting.

use std::fmt;
use std::io::Read;

use zeroize::Zeroizing;

use crate::limits::{MAX_CHUNK_SIZE_DIGITS, MAX_TOKEN_LEN};
use crate::scrub::TokenFinder;
use crate::sys;

/// Which header carries the real token upstream (`TOKEN_HEADER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenHeader {
    /// `Authorization: Bearer <token>` (OAuth tokens, most APIs).
    Authorization,
    /// `x-api-key: <token>` (Anthropic API keys).
    XApiKey,
    /// Another field, the raw token as its value (`x-goog-api-key` for Gemini, ...). The
    /// name is a token (RFC 9110 §5.1), lower-case.
    Custom(String),
}

impl TokenHeader {
    /// The field name as sent upstream.
    pub fn name(&self) -> &str {
        match self {
            TokenHeader::Authorization => "Authorization",
            TokenHeader::XApiKey => "x-api-key",
            TokenHeader::Custom(name) => name,
        }
    }

    /// What precedes the token in the field value.
    fn value_prefix(&self) -> &'static str {
        match self {
            TokenHeader::Authorization => "Bearer ",
            TokenHeader::XApiKey | TokenHeader::Custom(_) => "",
        }
    }
}

/// Why the token on stdin was refused. Never carries any of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// stdin was closed without a line, or the line was empty.
    Missing,
    /// Longer than [`MAX_TOKEN_LEN`].
    TooLong,
    /// A byte outside visible ASCII (space, control, non-ASCII).
    InvalidByte,
    /// stdin could not be read.
    Unreadable,
    /// Could be read as a chunk-size line (see `could_be_chunk_size`).
    ChunkSizeLike,
}

impl TokenError {
    /// Why, in static words that show nothing of the token.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Missing => "expected one line on stdin, got none or an empty one",
            TokenError::TooLong => "longer than MAX_TOKEN_LEN bytes",
            TokenError::InvalidByte => {
                "contains a byte that is not visible ASCII (space, control or non-ASCII)"
            }
            TokenError::Unreadable => "could not read stdin",
            TokenError::ChunkSizeLike => {
                "could pass as a chunk size (at most 16 hex digits, or hex digits and `;`), \
                 which response masking never sees; not a real credential"
            }
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::TooLong => write!(f, "proxy: token: longer than {MAX_TOKEN_LEN} bytes"),
            e => write!(f, "proxy: token: {}", e.reason()),
        }
    }
}

impl std::error::Error for TokenError {}

/// The real credential and its rendered upstream header line.
pub struct Token {
    /// `<Name>: <prefix><token>\r\n`, in pages of its own: locked while the token lives,
    /// then wiped, unlocked and freed ([`sys::SecretPages`]); with the response scrubber's
    /// searcher for the raw token, built once.
    line: sys::SearchableSecret,
    /// Where the raw token sits inside `line`.
    start: usize,
}

impl Token {
    /// Validates a token (already stripped of its line ending) and renders its header line.
    pub fn new(raw: &[u8], header: &TokenHeader) -> Result<Token, TokenError> {
        if raw.is_empty() {
            return Err(TokenError::Missing);
        }
        if raw.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        if !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(TokenError::InvalidByte);
        }
        if could_be_chunk_size(raw) {
            return Err(TokenError::ChunkSizeLike);
        }
        let (name, value_prefix) = (header.name().as_bytes(), header.value_prefix().as_bytes());
        let prefix_len = name.len() + 2 + value_prefix.len();
        // Written once into its final place: nothing is copied or reallocated on the way.
        let mut line = sys::SecretPages::new(prefix_len + raw.len() + 2);
        let mut at = 0;
        for part in [name, b": ", value_prefix, raw, b"\r\n"] {
            line.as_mut_slice()[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        let token = prefix_len..prefix_len + raw.len();
        Ok(Token {
            start: prefix_len,
            line: sys::SearchableSecret::new(line, token),
        })
    }

    /// Reads exactly one line from `input`, strips one trailing LF and CR, and validates it.
    ///
    /// Reads into a fixed, zeroized buffer straight from the reader (no `BufRead`, whose buffer
    /// would keep a copy); anything after the first LF is read into the same buffer and wiped.
    pub fn read_line(input: &mut impl Read, header: &TokenHeader) -> Result<Token, TokenError> {
        TokenLines::new(input, header.clone())
            .next_line()
            .unwrap_or(Err(TokenError::Missing))
    }

    /// The raw token, for the response scrubber.
    pub fn as_bytes(&self) -> &[u8] {
        let line = self.line.as_slice();
        &line[self.start..line.len() - 2]
    }

    /// The complete upstream header line, CRLF included.
    pub fn header_line(&self) -> &[u8] {
        self.line.as_slice()
    }

    /// The searcher for the raw token (its needle is [`Token::as_bytes`]).
    pub fn finder(&self) -> &TokenFinder<'_> {
        self.line.finder()
    }

    /// Whether the OS agreed to keep the token out of swap.
    pub fn is_locked(&self) -> bool {
        self.line.is_locked()
    }
}

/// Tokens read line by line from a reader (`TOKEN_UPDATES=stdin`), through one fixed, zeroized
/// buffer that keeps the bytes of the next line between calls and is wiped when dropped.
pub struct TokenLines<R> {
    input: R,
    header: TokenHeader,
    buf: Zeroizing<Vec<u8>>,
    filled: usize,
}

impl<R: Read> TokenLines<R> {
    pub fn new(input: R, header: TokenHeader) -> TokenLines<R> {
        TokenLines {
            input,
            header,
            buf: Zeroizing::new(vec![0u8; MAX_TOKEN_LEN + 2]),
            filled: 0,
        }
    }

    /// The next line as a token, or why it was refused (the line is consumed either way);
    /// `None` at the end of the input. A last line without LF counts.
    pub fn next_line(&mut self) -> Option<Result<Token, TokenError>> {
        let mut too_long = false;
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[..self.filled]) {
                let result = if too_long {
                    Err(TokenError::TooLong)
                } else {
                    self.token(i)
                };
                self.consume(i + 1);
                return Some(result);
            }
            if self.filled == self.buf.len() {
                // Longer than any token: drop what we have, refuse the line at its end.
                too_long = true;
                self.consume(self.filled);
            }
            match self.input.read(&mut self.buf[self.filled..]) {
                Ok(0) if self.filled == 0 && !too_long => return None,
                Ok(0) => {
                    let end = self.filled;
                    let result = if too_long {
                        Err(TokenError::TooLong)
                    } else {
                        self.token(end)
                    };
                    self.consume(end);
                    return Some(result);
                }
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Some(Err(TokenError::Unreadable)),
            }
        }
    }

    /// The token in `buf[..end]`, one trailing CR stripped.
    fn token(&self, end: usize) -> Result<Token, TokenError> {
        let line = &self.buf[..end];
        Token::new(line.strip_suffix(b"\r").unwrap_or(line), &self.header)
    }

    /// Drops the first `n` bytes, wiping what they leave behind.
    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
        zeroize::Zeroize::zeroize(&mut self.buf[self.filled..]);
    }
}

/// Whether the token could appear in a chunk-size line, the one part of a relayed response
/// that masking never scans (it is framing): a size is 1 to 16 hex digits
/// ([`MAX_CHUNK_SIZE_DIGITS`]; more are refused by the decoder), then optional whitespace (not
/// in a token), `;` and an extension, whose text is masked on its own. So a token of at most
/// 16 hex digits, or of at most 16 hex digits and then `;`, could be written there in clear
/// by an upstream that reflects it.
pub fn could_be_chunk_size(raw: &[u8]) -> bool {
    let digits = raw.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    digits <= MAX_CHUNK_SIZE_DIGITS && (digits == raw.len() || raw[digits] == b';')
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_line_and_strips_crlf() {
        for input in [
            &b"sk-ant-abc\n"[..],
            b"sk-ant-abc\r\n",
            b"sk-ant-abc",
            b"sk-ant-abc\nrest\n",
        ] {
            let t = Token::read_line(&mut &input[..], &TokenHeader::Authorization).unwrap();
            assert_eq!(t.as_bytes(), b"sk-ant-abc");
            assert_eq!(t.header_line(), b"Authorization: Bearer sk-ant-abc\r\n");
        }
        let t = Token::read_line(&mut &b"k\n"[..], &TokenHeader::XApiKey).unwrap();
        assert_eq!(t.header_line(), b"x-api-key: k\r\n");
    }

    #[test]
    fn refuses_bad_tokens_without_echo() {
        let cases: [(&[u8], TokenError); 7] = [
            (b"", TokenError::Missing),
            (b"\n", TokenError::Missing),
            (b"\r\n", TokenError::Missing),
            (b"sk ant\n", TokenError::InvalidByte),
            (b"sk\x01ant\n", TokenError::InvalidByte),
            (b"sk\rant\n", TokenError::InvalidByte),
            (b"sk\xc3\xa9\n", TokenError::InvalidByte),
        ];
        for (input, want) in cases {
            let got = Token::read_line(&mut &input[..], &TokenHeader::Authorization).unwrap_err();
            assert_eq!(got, want);
            assert!(got.to_string().starts_with("proxy: "));
        }
        let long = vec![b'a'; MAX_TOKEN_LEN + 1];
        assert_eq!(
            Token::new(&long, &TokenHeader::Authorization).unwrap_err(),
            TokenError::TooLong
        );
        let mut long_line = vec![b'a'; MAX_TOKEN_LEN * 2];
        long_line.push(b'\n');
        assert_eq!(
            Token::read_line(&mut &long_line[..], &TokenHeader::Authorization).unwrap_err(),
            TokenError::TooLong
        );
    }

    #[test]
    fn tokens_that_could_be_chunk_sizes_are_refused() {
        for t in [&b"a"[..], b"0123456789abcdef", b"DEAD;x", b";", b"0;"] {
            assert!(could_be_chunk_size(t), "{t:?}");
            let e = Token::new(t, &TokenHeader::Authorization).unwrap_err();
            assert_eq!(e, TokenError::ChunkSizeLike);
        }
        for t in [
            &b"0123456789abcdef0"[..],
            b"sk-ant-api03-x",
            b"0123456789abcdef0;",
            b"x;",
        ] {
            assert!(!could_be_chunk_size(t), "{t:?}");
        }
    }

    #[test]
    fn lines_are_read_one_by_one_and_bad_ones_refused() {
        let mut long = vec![b'a'; MAX_TOKEN_LEN * 3];
        long.push(b'\n');
        let input = [&b"sk-one\n\nsk two\r\n"[..], &long, b"sk-three\r\nsk-last"].concat();
        let mut lines = TokenLines::new(&input[..], TokenHeader::Custom("x-goog-api-key".into()));
        let t = lines.next_line().unwrap().unwrap();
        assert_eq!(t.header_line(), b"x-goog-api-key: sk-one\r\n");
        assert_eq!(lines.next_line().unwrap().unwrap_err(), TokenError::Missing);
        assert_eq!(
            lines.next_line().unwrap().unwrap_err(),
            TokenError::InvalidByte
        );
        assert_eq!(lines.next_line().unwrap().unwrap_err(), TokenError::TooLong);
        assert_eq!(lines.next_line().unwrap().unwrap().as_bytes(), b"sk-three");
        assert_eq!(lines.next_line().unwrap().unwrap().as_bytes(), b"sk-last");
        assert!(lines.next_line().is_none());
    }

    /// Each token has pages of its own (so unlocking it cannot unlock another's), holding
    /// the line from their start.
    #[test]
    fn each_token_has_pages_of_its_own() {
        let page = sys::page_size();
        let tokens: Vec<Token> = (0..8)
            .map(|i| Token::new(format!("sk-ant-{i}-x").as_bytes(), &TokenHeader::XApiKey))
            .collect::<Result<_, _>>()
            .unwrap();
        let mut pages: Vec<usize> = tokens.iter().map(|t| t.line.addr()).collect();
        assert!(pages.iter().all(|a| a % page == 0));
        pages.sort_unstable();
        pages.dedup();
        assert_eq!(pages.len(), tokens.len(), "two tokens share a page");
        assert_eq!(tokens[3].header_line(), b"x-api-key: sk-ant-3-x\r\n");
        let long = vec![b'k'; MAX_TOKEN_LEN];
        let t = Token::new(&long, &TokenHeader::Authorization).unwrap();
        assert_eq!(t.as_bytes(), &long[..]);
        assert_eq!(t.finder().needle(), &long[..]);
    }

    #[test]
    fn debug_shows_nothing_of_the_token() {
        let t = Token::new(b"sk-ant-secret", &TokenHeader::Authorization).unwrap();
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }
}
