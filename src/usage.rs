//! Pure: the token usage of one response, read from its body bytes as they are relayed.
//!
//! Agents run unattended in loops; what a loop spends is written in the answers the proxy
//! already relays. The observer is fed the body's payload (de-chunked, a view of the relay's
//! bytes: it never changes, holds or delays them) and keeps only what it needs. The relay
//! must stay as fast with it as without, so the bytes are not parsed: one `memmem` search
//! for the `"usage` key runs over them (as the token masking does), and nothing else is
//! done for the bulk of a stream (text deltas and the like, which never hold that key: the
//! text and tool input in them are JSON strings, where a quote is escaped).
//!
//! Where the key appears (Anthropic's `message_start` and `message_delta`, OpenAI
//! Responses' `response.completed`, the last Chat Completions chunk, every Gemini chunk, a
//! JSON body's end), the text from the key on is copied, up to
//! [`USAGE_EVENT_MAX`](crate::limits::USAGE_EVENT_MAX) bytes, to the end of its line in an
//! event stream (an event's data line, the SSE format of the WHATWG HTML standard §9.2) or
//! to the end of a JSON body, and read then: the figures of a usage object (`"usage"` or
//! `"usageMetadata"`) that closes within it are taken, the last figure of each kind winning
//! (they are cumulative); anything else (`"usage":null`, a malformed or oversized object) is
//! skipped, never an error. In a JSON body only the last such object counts (a tool's input
//! before it may hold one). The model is the first `"model"` or `"modelVersion"` key with a
//! plain string value, searched for only until one is found (it comes first, in the first
//! event). See `json` for how the figures of each API are read.

use crate::limits::USAGE_MODEL_MAX;

mod attribution;
mod json;
mod scan;

use scan::Scan;

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

/// Reads the usage of one response body; see the module documentation.
pub struct Observer {
    scan: Scan,
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
            scan: Scan::new(sse),
            usage: Usage::default(),
        })
    }

    /// The next payload bytes of the body (inlined: most feeds take the short way).
    #[inline]
    pub fn feed(&mut self, bytes: &[u8]) {
        self.scan.feed(bytes, &mut self.usage);
    }

    /// The body ended whole: a JSON body's usage is read now.
    pub fn finish(&mut self) {
        self.scan.finish(&mut self.usage);
    }

    /// What was found so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Bytes of the body the observer holds in its one growable buffer (at most
    /// [`USAGE_EVENT_MAX`](crate::limits::USAGE_EVENT_MAX); the rest is a few small arrays).
    pub fn held(&self) -> usize {
        self.scan.held()
    }
}

#[cfg(test)]
mod tests;
