//! The parts of a request's line that are there only when known: the token usage and model
//! the response reported, and the attribution fields the request carried.

use std::fmt::Write as _;

use super::{RequestLine, Value};

/// The log fields of the token usage, in the order of [`crate::usage::Usage::kinds`].
const USAGE_FIELDS: [&str; 4] = [
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
];

/// Its JSON fields (the attribution fields as one object), into `out`; returns how many.
pub(super) fn fields<'s>(r: &'s RequestLine<'s>, out: &mut [(&'static str, Value<'s>)]) -> usize {
    let mut n = 0;
    for (name, figure) in USAGE_FIELDS.iter().zip(r.usage.kinds()) {
        if let Some(v) = figure {
            out[n] = (name, Value::Num(v));
            n += 1;
        }
    }
    if let Some(model) = r.usage.model() {
        out[n] = ("model", Value::Str(model));
        n += 1;
    }
    if !r.headers.is_empty() {
        out[n] = ("headers", Value::Fields(r.headers));
        n += 1;
    }
    n
}

/// Its text, after the rest of the line: ` name=value` each.
pub(super) fn text(r: &RequestLine<'_>, out: &mut String) {
    for (name, n) in USAGE_FIELDS.iter().zip(r.usage.kinds()) {
        if let Some(n) = n {
            let _ = write!(out, " {name}={n}");
        }
    }
    if let Some(model) = r.usage.model() {
        let _ = write!(out, " model={model}");
    }
    for (name, value) in r.headers {
        let _ = write!(out, " {name}={value}");
    }
}
