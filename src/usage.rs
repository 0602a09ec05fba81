//! Pure: the token usage of one response, read from its body bytes as they are relayed.
//!
//! Agents run unattended in loops; what a loop spends is written in the answers the proxy
//! already relays. The observer is fed the body's payload (de-chunked, a view of the relay's
//! bytes: it never changes, holds or delays them) and keeps only what it needs:
//!
//! - a server-sent event stream (`text/event-stream`, the SSE format of the WHATWG HTML
//!   standard §9.2) is cut into lines with `memchr`; an event named by an `event:` line is
//!   looked into only when its name is one that carries usage (Anthropic `message_start` and
//!   `message_delta`, OpenAI Responses `response.completed` and its kin), every other named
//!   event is skipped line by line without a copy; events without a name (Chat Completions
//!   chunks, Gemini) are searched with `memmem` for the `"usage` and `"model` keys;
//! - a JSON body (`application/json`) is one record, searched the same way.
//!
//! Of a record, only the text from its last `"usage` key on is copied, up to
//! [`USAGE_EVENT_MAX`](crate::limits::USAGE_EVENT_MAX) bytes, and a few bytes after its first
//! and last `"model` key (see `record`). A record
//! whose usage object does not close within that, or is not JSON, yields nothing: it is
//! skipped, never an error. See `json` for how the figures of each API are read.

use crate::limits::USAGE_MODEL_MAX;

mod attribution;
mod json;
mod record;

use record::Record;

pub use attribution::{attribution, WITHHELD};
pub use json::Figures;

/// The usage of one response, as far as it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Input tokens not read from a cache (Anthropic's `input_tokens`; OpenAI's and Gemini's
    /// prompt count minus its cached part).
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cache_read: Option<u64>,
    pub cache_creation: Option<u64>,
    model: Model,
}

impl Usage {
    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.kinds().iter().all(Option::is_none) && self.model.len == 0
    }

    /// The four kinds, in the order of [`KINDS`].
    pub fn kinds(&self) -> [Option<u64>; 4] {
        [
            self.input,
            self.output,
            self.cache_read,
            self.cache_creation,
        ]
    }

    /// All four kinds together: what a token budget counts.
    pub fn total(&self) -> u64 {
        let all = self.kinds().into_iter().flatten();
        all.fold(0u64, u64::saturating_add)
    }

    /// The model, when the response named one that passed [`Model::new`].
    pub fn model(&self) -> Option<&str> {
        self.model.as_str()
    }

    /// Forgets the model (its name held a token).
    pub fn forget_model(&mut self) {
        self.model = Model::NONE;
    }

    fn merge(&mut self, f: Figures) {
        let pairs = [
            (&mut self.input, f.input),
            (&mut self.output, f.output),
            (&mut self.cache_read, f.cache_read),
            (&mut self.cache_creation, f.cache_creation),
        ];
        // Cumulative figures (a later `message_delta`, Gemini's every chunk): the last wins.
        for (mine, theirs) in pairs {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
    }
}

/// The names of the four kinds, as log fields and as the metric's `kind` label.
pub const KINDS: [&str; 4] = ["input", "output", "cache_read", "cache_creation"];

/// A model name that is safe to log and to use as a label value: 1 to [`USAGE_MODEL_MAX`]
/// bytes of ASCII letters, digits and `-._:/@+`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Model {
    bytes: [u8; USAGE_MODEL_MAX],
    len: u8,
}

impl Default for Model {
    fn default() -> Model {
        Model::NONE
    }
}

impl Model {
    pub const NONE: Model = Model {
        bytes: [0; USAGE_MODEL_MAX],
        len: 0,
    };

    /// Keeps `v` if every byte is in the safe set, else none.
    pub fn new(v: &[u8]) -> Model {
        let safe = |b: &u8| b.is_ascii_alphanumeric() || b"-._:/@+".contains(b);
        if v.is_empty() || v.len() > USAGE_MODEL_MAX || !v.iter().all(safe) {
            return Model::NONE;
        }
        let mut m = Model::NONE;
        m.bytes[..v.len()].copy_from_slice(v);
        m.len = v.len() as u8;
        m
    }

    pub fn as_str(&self) -> Option<&str> {
        let s = std::str::from_utf8(&self.bytes[..usize::from(self.len)]).ok()?;
        (!s.is_empty()).then_some(s)
    }
}

/// What kind of body a response has, from its `Content-Type` (RFC 9110 §8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `text/event-stream`.
    Sse,
    /// `application/json` or any `+json` type.
    Json,
    /// Anything else: not observed.
    Other,
}

impl BodyKind {
    /// The kind of a `Content-Type` value: its media type, before any parameter.
    pub fn of(content_type: &[u8]) -> BodyKind {
        let media = content_type.split(|&b| b == b';').next().unwrap_or(b"");
        let media = media.trim_ascii();
        if media.eq_ignore_ascii_case(b"text/event-stream") {
            BodyKind::Sse
        } else if media.eq_ignore_ascii_case(b"application/json")
            || (media.len() > 5 && media[media.len() - 5..].eq_ignore_ascii_case(b"+json"))
        {
            BodyKind::Json
        } else {
            BodyKind::Other
        }
    }
}

/// Whether a request's path (without query) ends in a `count_tokens` segment: Anthropic's
/// token counting, which costs nothing and is never counted.
pub fn is_count_tokens(path: &[u8]) -> bool {
    let last = path.rsplit(|&b| b == b'/').next().unwrap_or(b"");
    last == b"count_tokens"
}

/// The event names whose data carry usage; every other named event is skipped unread.
const USAGE_EVENTS: [&[u8]; 6] = [
    b"message_start",
    b"message_delta",
    b"response.completed",
    b"response.incomplete",
    b"response.failed",
    b"response.done",
];

/// The longest name in [`USAGE_EVENTS`].
const USAGE_NAME_MAX: usize = 19;

/// The longest field name or event name read at the start of a line; longer ones are skipped.
const NAME_MAX: usize = 48;

/// Where the observer is in an event stream's current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Gathering the field name, up to its colon.
    Field,
    /// After `event:`, gathering the name.
    Name,
    /// After `data:`, before its optional space.
    DataStart,
    /// In a data line that is looked into.
    Data,
    /// In a line that is not looked into, up to its end.
    Skip,
}

/// Whether the current event is looked into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    /// No `event:` line yet: its data lines are searched.
    Unnamed,
    Usage,
    Other,
}

/// Reads the usage of one response body; see the module documentation.
pub struct Observer {
    sse: bool,
    line: Line,
    named: Named,
    /// The field name, or the event name, of the current line so far.
    name: [u8; NAME_MAX],
    name_len: usize,
    record: Record,
    usage: Usage,
}

impl Observer {
    /// An observer for a body of `kind`; `None` for a kind that carries no usage.
    pub fn new(kind: BodyKind) -> Option<Observer> {
        let sse = match kind {
            BodyKind::Sse => true,
            BodyKind::Json => false,
            BodyKind::Other => return None,
        };
        Some(Observer {
            sse,
            line: Line::Field,
            named: Named::Unnamed,
            name: [0; NAME_MAX],
            name_len: 0,
            record: Record::default(),
            usage: Usage::default(),
        })
    }

    /// The next payload bytes of the body.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.sse {
            return self.record.feed(bytes);
        }
        let mut at = 0;
        while at < bytes.len() {
            at += self.step(&bytes[at..]);
        }
    }

    /// The body ended whole: a JSON body is read now. An event stream's unfinished event is
    /// dropped, as an event stream's reader drops it.
    pub fn finish(&mut self) {
        if !self.sse {
            self.end_record();
        }
    }

    /// What was found so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Bytes of the body the observer holds in its one growable buffer (at most
    /// [`USAGE_EVENT_MAX`](crate::limits::USAGE_EVENT_MAX); the rest is a few small arrays).
    pub fn held(&self) -> usize {
        self.record.usage.len()
    }

    /// One step over `bytes` (not empty) in the current line state; returns bytes used.
    fn step(&mut self, bytes: &[u8]) -> usize {
        match self.line {
            Line::Skip => match memchr::memchr(b'\n', bytes) {
                Some(n) => {
                    self.new_line();
                    n + 1
                }
                None => bytes.len(),
            },
            Line::Data => {
                let end = memchr::memchr(b'\n', bytes);
                self.record.feed(&bytes[..end.unwrap_or(bytes.len())]);
                match end {
                    Some(n) => {
                        // Data lines of one event are joined by a line feed.
                        self.record.feed(b"\n");
                        self.new_line();
                        n + 1
                    }
                    None => bytes.len(),
                }
            }
            Line::DataStart => {
                self.line = Line::Data;
                usize::from(bytes[0] == b' ')
            }
            Line::Name => self.gather_name(bytes),
            Line::Field if self.name_len == 0 => self.line_start(bytes),
            Line::Field => {
                self.gather(bytes[0]);
                1
            }
        }
    }

    /// The start of a line: the usual fields (`event:`, `data:`) and the blank line that ends
    /// an event are taken in one step; anything else (or a field name split between feeds)
    /// a byte at a time.
    fn line_start(&mut self, bytes: &[u8]) -> usize {
        if bytes.starts_with(b"data:") {
            self.line = match self.named {
                Named::Other => Line::Skip,
                Named::Unnamed | Named::Usage => Line::DataStart,
            };
            5
        } else if let Some(rest) = bytes.strip_prefix(b"event:") {
            self.line = Line::Name;
            6 + self.name_at_once(rest)
        } else {
            self.gather(bytes[0]);
            1
        }
    }

    /// Classifies the event name at the start of `rest` without copying it, when this feed
    /// holds enough of it to decide; returns the bytes used (0: gather it instead). The rest of
    /// its line is then skipped.
    fn name_at_once(&mut self, rest: &[u8]) -> usize {
        let name = rest.strip_prefix(b" ").unwrap_or(rest);
        let ends = |n: &[u8]| matches!(name.get(n.len()), Some(b'\n' | b'\r'));
        let usage = USAGE_EVENTS.iter().any(|n| name.starts_with(n) && ends(n));
        if !usage && name.len() <= USAGE_NAME_MAX {
            // Possibly a usage event's name cut by the feed's end: gather it.
            return 0;
        }
        self.named = if usage { Named::Usage } else { Named::Other };
        self.line = Line::Skip;
        rest.len() - name.len()
    }

    /// An event name, up to its line's end (one `memchr`, not a byte at a time).
    fn gather_name(&mut self, bytes: &[u8]) -> usize {
        let end = memchr::memchr(b'\n', bytes);
        let piece = &bytes[..end.unwrap_or(bytes.len())];
        if piece.len() > NAME_MAX - self.name_len {
            // A name this long is none of ours: skip its event.
            self.named = Named::Other;
            self.line = Line::Skip;
            return piece.len();
        }
        self.name[self.name_len..self.name_len + piece.len()].copy_from_slice(piece);
        self.name_len += piece.len();
        match end {
            Some(n) => {
                self.name_event();
                self.new_line();
                n + 1
            }
            None => bytes.len(),
        }
    }

    /// One byte of a field name.
    fn gather(&mut self, b: u8) {
        if b == b'\n' {
            // A blank line dispatches the event; a name without a colon is a field without a
            // value, none of ours.
            if trim(&self.name[..self.name_len]).is_empty() {
                self.end_event();
            }
            return self.new_line();
        }
        if b == b':' {
            self.line = match &self.name[..self.name_len] {
                b"event" => Line::Name,
                b"data" if self.named != Named::Other => Line::DataStart,
                _ => Line::Skip,
            };
            self.name_len = 0;
            return;
        }
        if self.name_len == NAME_MAX {
            // A field name this long is none of ours.
            self.line = Line::Skip;
            return;
        }
        self.name[self.name_len] = b;
        self.name_len += 1;
    }

    fn name_event(&mut self) {
        let name = trim(&self.name[..self.name_len]);
        self.named = if USAGE_EVENTS.contains(&name) {
            Named::Usage
        } else {
            Named::Other
        };
    }

    fn new_line(&mut self) {
        self.line = Line::Field;
        self.name_len = 0;
    }

    fn end_event(&mut self) {
        self.end_record();
        self.named = Named::Unnamed;
    }

    fn end_record(&mut self) {
        if let Some((figures, model)) = self.record.end() {
            self.usage.merge(figures);
            if self.usage.model.len == 0 {
                self.usage.model = model;
            }
        }
    }
}

/// A name without the one space a value may start with, nor a carriage return at its end.
fn trim(name: &[u8]) -> &[u8] {
    let name = name.strip_prefix(b" ").unwrap_or(name);
    name.strip_suffix(b"\r").unwrap_or(name)
}

#[cfg(test)]
mod tests;
