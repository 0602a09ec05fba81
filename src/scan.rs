//! Pure: finds the end of a message head (request or response) as bytes arrive, checking line
//! limits and line endings on the way (RFC 9112 §2.2). Bytes in, decisions out.

use crate::error::Problem;
use crate::limits::{self, Limits};

/// Incremental search for the end of a head, checking line limits and line endings as bytes
/// arrive, so a peer is refused as soon as it breaks a rule and each byte is looked at once.
#[derive(Debug, Clone, Default)]
pub struct HeadScanner {
    /// Bytes already examined.
    pos: usize,
    /// Start of the line being read.
    line_start: usize,
    /// Whether the start line (request or status line) has been seen.
    seen_start_line: bool,
}

/// Limits for [`HeadScanner`]; each breach maps to its own [`Problem`].
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    pub start_line: usize,
    pub field_line: usize,
    pub head: usize,
    pub start_line_problem: Problem,
    pub head_problem: Problem,
    pub syntax_problem: Problem,
}

impl ScanLimits {
    /// The response-side limits: every breach is the upstream's fault (502).
    pub const RESPONSE: ScanLimits = ScanLimits {
        start_line: limits::MAX_RESPONSE_LINE,
        field_line: limits::MAX_RESPONSE_LINE,
        head: limits::MAX_RESPONSE_HEAD,
        start_line_problem: Problem::UpstreamMalformed,
        head_problem: Problem::UpstreamMalformed,
        syntax_problem: Problem::UpstreamMalformed,
    };

    /// The request-side limits.
    pub fn request(l: &Limits) -> ScanLimits {
        ScanLimits {
            start_line: l.max_request_line,
            field_line: l.max_field_line,
            head: l.max_head_bytes,
            start_line_problem: Problem::UriTooLong,
            head_problem: Problem::HeadTooLarge,
            syntax_problem: Problem::MalformedHead,
        }
    }
}

impl HeadScanner {
    pub fn new() -> HeadScanner {
        HeadScanner::default()
    }

    /// Examines `buf` (which only ever grows between calls, until [`HeadScanner::reset`]).
    /// Returns `Ok(Some(len))` once the head is complete (`len` includes the blank line),
    /// `Ok(None)` when more bytes are needed, or the rule it broke.
    ///
    /// RFC 9112 §2.2: a bare CR is invalid and bare LF is only a MAY; we refuse both (R16),
    /// since httparse would accept bare LF and an upstream might not. Empty lines before the
    /// start line are skipped (RFC 9112 §2.2 SHOULD) but count toward the head limit.
    ///
    /// The answer does not depend on how the bytes were split into reads: when several rules
    /// are broken, the one that became certain at the earliest byte is reported.
    pub fn scan(&mut self, buf: &[u8], lim: &ScanLimits) -> Result<Option<usize>, Problem> {
        loop {
            let Some(i) = memchr::memchr2(b'\r', b'\n', &buf[self.pos..]) else {
                // No line ending yet: every byte so far belongs to the current line.
                self.pos = buf.len();
                return self
                    .limit_broken(buf.len(), buf.len(), lim)
                    .map_or(Ok(None), Err);
            };
            let at = self.pos + i;
            if buf[at] == b'\n' {
                // An LF without CR (a CRLF is consumed whole below), certain at `at + 1`.
                return Err(self
                    .limit_broken(at, at + 1, lim)
                    .unwrap_or(lim.syntax_problem));
            }
            let Some(&next) = buf.get(at + 1) else {
                // A CR at the end: look at it again when more bytes arrive.
                self.pos = at;
                return self.limit_broken(at, buf.len(), lim).map_or(Ok(None), Err);
            };
            if let Some(p) = self.limit_broken(at, at + 2, lim) {
                return Err(p);
            }
            if next != b'\n' {
                return Err(lim.syntax_problem);
            }
            let empty = at == self.line_start;
            self.pos = at + 2;
            self.line_start = self.pos;
            if !empty {
                self.seen_start_line = true;
            } else if self.seen_start_line {
                return Ok(Some(self.pos));
            }
            // An empty line before the start line is skipped (still counted).
        }
    }

    /// The size rule broken once the current line is known to run to `line_end` and `seen`
    /// bytes have arrived, if any. When both are broken, the one certain at the earlier byte.
    fn limit_broken(&self, line_end: usize, seen: usize, lim: &ScanLimits) -> Option<Problem> {
        let (line_limit, line_problem) = if self.seen_start_line {
            (lim.field_line, lim.head_problem)
        } else {
            (lim.start_line, lim.start_line_problem)
        };
        let line_certain_at = self.line_start.saturating_add(line_limit).saturating_add(1);
        let head_certain_at = lim.head.saturating_add(1);
        match (line_end - self.line_start > line_limit, seen > lim.head) {
            (true, true) if line_certain_at <= head_certain_at => Some(line_problem),
            (true, false) => Some(line_problem),
            (_, true) => Some(lim.head_problem),
            (false, false) => None,
        }
    }

    /// Forgets the previous head, for the next message on the connection.
    pub fn reset(&mut self) {
        *self = HeadScanner::default();
    }
}
