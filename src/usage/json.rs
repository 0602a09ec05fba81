//! The figures of a usage object and the model name, from the bytes the observer copied
//! (see `scan`): a small tolerant reader over at most [`crate::limits::USAGE_EVENT_MAX`] bytes
//! (RFC 8259's grammar, enough of it to find keys and whole numbers), not a JSON parser.
//!
//! The figures are made comparable across APIs, so that the four kinds add up to what was
//! billed once each:
//!
//! | API | input | output | cache read | cache creation |
//! |---|---|---|---|---|
//! | Anthropic Messages | `input_tokens` | `output_tokens` | `cache_read_input_tokens` | `cache_creation_input_tokens` |
//! | OpenAI Responses | `input_tokens` − cached | `output_tokens` | `input_tokens_details.cached_tokens` | — |
//! | OpenAI Chat Completions | `prompt_tokens` − cached | `completion_tokens` | `prompt_tokens_details.cached_tokens` | — |
//! | Gemini | `promptTokenCount` − cached | `candidatesTokenCount` + `thoughtsTokenCount` | `cachedContentTokenCount` | — |

use super::Model;

/// The figures one usage object gave; `None` where it did not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Figures {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cache_read: Option<u64>,
    pub cache_creation: Option<u64>,
}

/// What the object's keys said, before they are made comparable.
#[derive(Default)]
struct Raw {
    /// Anthropic's input (already without the cache).
    input: Option<u64>,
    /// A prompt count that includes its cached part (OpenAI, Gemini).
    prompt: Option<u64>,
    cached: Option<u64>,
    output: Option<u64>,
    thoughts: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
}

impl Raw {
    fn see(&mut self, depth: usize, parent: &[u8], key: &[u8], n: u64) {
        let slot = match (depth, key) {
            (1, b"input_tokens") => &mut self.input,
            (1, b"prompt_tokens" | b"promptTokenCount") => &mut self.prompt,
            (1, b"output_tokens" | b"completion_tokens" | b"candidatesTokenCount") => {
                &mut self.output
            }
            (1, b"thoughtsTokenCount") => &mut self.thoughts,
            (1, b"cache_read_input_tokens") => &mut self.cache_read,
            (1, b"cache_creation_input_tokens") => &mut self.cache_creation,
            (1, b"cachedContentTokenCount") => &mut self.cached,
            (2, b"cached_tokens")
                if parent == b"input_tokens_details" || parent == b"prompt_tokens_details" =>
            {
                &mut self.cached
            }
            _ => return,
        };
        *slot = Some(n);
    }

    fn figures(self) -> Figures {
        let cached = self.cached;
        // OpenAI's `input_tokens` counts its cached part, as a prompt count does.
        let whole = if cached.is_some() {
            self.prompt.or(self.input)
        } else {
            self.prompt
        };
        let input = match whole {
            Some(w) => Some(w.saturating_sub(cached.unwrap_or(0))),
            None => self.input,
        };
        let output = match (self.output, self.thoughts) {
            (Some(o), Some(t)) => Some(o.saturating_add(t)),
            (o, t) => o.or(t),
        };
        Figures {
            input,
            output,
            cache_read: self.cache_read.or(cached),
            cache_creation: self.cache_creation,
        }
    }
}

/// The opening of a JSON object (RFC 8259 §4), named so the line that strips it keeps its
/// braces balanced for line-based tools.
const OBJECT_OPEN: &[u8] = b"{";

/// The figures of the object after the key at the start of `buf` (`"usage"` or
/// `"usageMetadata"`), if it is an object that closes within `buf` and names any figure.
pub fn usage(buf: &[u8]) -> Option<Figures> {
    let rest = buf.strip_prefix(b"\"usage")?;
    let rest = rest.strip_prefix(b"Metadata").unwrap_or(rest);
    let rest = rest.strip_prefix(b"\"")?;
    let rest = after_colon(rest)?;
    let body = rest.strip_prefix(OBJECT_OPEN)?;
    let mut raw = Raw::default();
    walk(body, |depth, parent, key, n| raw.see(depth, parent, key, n))?;
    let f = raw.figures();
    let any = [f.input, f.output, f.cache_read, f.cache_creation];
    any.iter().any(Option::is_some).then_some(f)
}

/// What the bytes from a `"model` key on say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A `"model"` or `"modelVersion"` member with a string value that passed [`Model::new`].
    Model(Model),
    /// Anything else: another key, a value that is no plain string, a name that is not safe.
    None,
    /// Not enough bytes yet.
    Undecided,
}

/// Reads `snip` (from a `"model` key on); `whole`: no more bytes will come.
pub fn model_value(snip: &[u8], whole: bool) -> Decision {
    let more = if whole {
        Decision::None
    } else {
        Decision::Undecided
    };
    let Some(rest) = snip.strip_prefix(b"\"model") else {
        return Decision::None;
    };
    // `"model"` or `"modelVersion"`, then the colon and the opening quote.
    let rest = match rest.first() {
        None => return more,
        Some(b'"') => &rest[1..],
        Some(b'V') if b"Version\"".starts_with(&rest[..rest.len().min(8)]) => {
            if rest.len() < 8 {
                return more;
            }
            &rest[8..]
        }
        Some(_) => return Decision::None,
    };
    let rest = rest.trim_ascii_start();
    let Some(&first) = rest.first() else {
        return more;
    };
    if first != b':' {
        return Decision::None;
    }
    let rest = rest[1..].trim_ascii_start();
    let Some(&quote) = rest.first() else {
        return more;
    };
    if quote != b'"' {
        return Decision::None;
    }
    let Some(end) = memchr::memchr(b'"', &rest[1..]) else {
        return more;
    };
    let m = Model::new(&rest[1..1 + end]);
    match m.as_str() {
        Some(_) => Decision::Model(m),
        None => Decision::None,
    }
}

/// `rest` after optional whitespace, a colon and optional whitespace.
fn after_colon(rest: &[u8]) -> Option<&[u8]> {
    rest.trim_ascii_start()
        .strip_prefix(b":")
        .map(<[u8]>::trim_ascii_start)
}

/// The deepest object nesting read inside a usage object.
const DEPTH_MAX: usize = 8;

/// Walks the members of the object whose `{` came just before `buf`, calling `found(depth,
/// parent key, key, value)` for each member whose value is a whole number (depth 1 is the
/// object itself). `None` if the object does not close within `buf`.
fn walk(buf: &[u8], mut found: impl FnMut(usize, &[u8], &[u8], u64)) -> Option<()> {
    let mut parents: [&[u8]; DEPTH_MAX + 1] = [b""; DEPTH_MAX + 1];
    let mut depth = 1;
    let mut key: Option<&[u8]> = None;
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'"' => {
                let (s, next) = string(buf, i + 1)?;
                i = next;
                key = match after_colon(&buf[i..]) {
                    Some(rest) => {
                        i = buf.len() - rest.len();
                        Some(s)
                    }
                    None => None,
                };
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > DEPTH_MAX {
                    return None;
                }
                parents[depth] = key.take().unwrap_or(b"");
                i += 1;
            }
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(());
                }
                key = None;
                i += 1;
            }
            b'0'..=b'9' => {
                let end = buf[i..]
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .map_or(buf.len(), |n| i + n);
                let whole = !matches!(buf.get(end), Some(b'.' | b'e' | b'E'));
                let n = std::str::from_utf8(&buf[i..end]).ok()?.parse::<u64>().ok();
                if let (Some(k), Some(n), true) = (key.take(), n, whole) {
                    found(depth, parents[depth], k, n);
                }
                i = end;
            }
            _ => {
                // Commas, whitespace, signs, fractions, `true`, `false`, `null`: a negative
                // figure is none.
                if buf[i] == b',' || buf[i] == b'-' {
                    key = None;
                }
                i += 1;
            }
        }
    }
    None
}

/// The string whose opening quote came before `buf[from]`: its raw bytes (escapes not
/// decoded) and where after its closing quote the walk goes on.
fn string(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let mut i = from;
    loop {
        let n = memchr::memchr2(b'"', b'\\', &buf[i..])?;
        if buf[i + n] == b'"' {
            return Some((&buf[from..i + n], i + n + 1));
        }
        i += n + 2;
        if i > buf.len() {
            return None;
        }
    }
}
