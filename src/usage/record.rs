//! One record of a body (an event's data, or a whole JSON body) as it passes: the keys are
//! searched with `memmem` (a key may straddle two feeds), and only the text from the last
//! `"usage` key on, and a few bytes after the first and last `"model` key, are copied.

use std::sync::OnceLock;

use memchr::memmem::{Finder, FinderRev};

use super::json::{self, Figures};
use super::Model;
use crate::limits::{USAGE_EVENT_MAX, USAGE_MODEL_MAX};

/// The keys searched for; both are six bytes long, so one carry serves both.
const USAGE_KEY: &[u8; 6] = b"\"usage";
const MODEL_KEY: &[u8; 6] = b"\"model";
const CARRY: usize = 5;

struct Needles {
    usage_last: FinderRev<'static>,
    model_first: Finder<'static>,
    model_last: FinderRev<'static>,
}

fn needles() -> &'static Needles {
    static NEEDLES: OnceLock<Needles> = OnceLock::new();
    NEEDLES.get_or_init(|| Needles {
        usage_last: FinderRev::new(USAGE_KEY),
        model_first: Finder::new(MODEL_KEY),
        model_last: FinderRev::new(MODEL_KEY),
    })
}

/// A few bytes from a key on: where a model name is read from.
#[derive(Clone, Copy)]
struct Snip {
    bytes: [u8; SNIP],
    len: usize,
    started: bool,
}

/// Room for `"modelVersion" : "` and a name of [`USAGE_MODEL_MAX`] bytes with its quote.
const SNIP: usize = USAGE_MODEL_MAX + 32;

impl Default for Snip {
    fn default() -> Snip {
        Snip {
            bytes: [0; SNIP],
            len: 0,
            started: false,
        }
    }
}

impl Snip {
    fn start(&mut self, rest: &[u8]) {
        self.started = true;
        self.len = 0;
        self.push(MODEL_KEY);
        self.push(rest);
    }

    fn get(&self) -> Option<&[u8]> {
        self.started.then_some(&self.bytes[..self.len])
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(SNIP - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }
}

/// One record (an event's data, or a JSON body) as it passes.
#[derive(Default)]
pub(super) struct Record {
    /// Bytes were fed since the last end.
    fed: bool,
    /// The last bytes fed (up to five): a key may straddle two feeds.
    carry: [u8; CARRY],
    carry_len: usize,
    /// From the last `"usage` key on, up to [`USAGE_EVENT_MAX`] bytes.
    pub(super) usage: Vec<u8>,
    usage_on: bool,
    model_first: Snip,
    model_last: Snip,
}

impl Record {
    pub(super) fn feed(&mut self, c: &[u8]) {
        if c.is_empty() {
            return;
        }
        self.fed = true;
        let n = needles();
        // Keys that begin in the carry and end in `c`: where in `c` each ends.
        let mut window = [0u8; 2 * CARRY];
        let k = self.carry_len;
        let t = c.len().min(CARRY);
        window[..k].copy_from_slice(&self.carry[..k]);
        window[k..k + t].copy_from_slice(&c[..t]);
        let w = &window[..k + t];
        let straddles = |key: &'static [u8; 6]| (0..k).filter(move |&s| w[s..].starts_with(key));
        let ends = |s: usize| s + key_len() - k;

        match n.usage_last.rfind(c) {
            Some(s) => self.restart_usage(&c[s + key_len()..]),
            None => match straddles(USAGE_KEY).next_back() {
                Some(s) => self.restart_usage(&c[ends(s)..]),
                None if self.usage_on => self.push_usage(c),
                None => {}
            },
        }
        let first_straddle = straddles(MODEL_KEY).next();
        if !self.model_first.started {
            if let Some(s) = first_straddle {
                self.model_first.start(&c[ends(s)..]);
            } else if let Some(s) = n.model_first.find(c) {
                self.model_first.start(&c[s + key_len()..]);
            }
        } else {
            self.model_first.push(c);
        }
        match n.model_last.rfind(c) {
            Some(s) => self.model_last.start(&c[s + key_len()..]),
            None => match straddles(MODEL_KEY).next_back() {
                Some(s) => self.model_last.start(&c[ends(s)..]),
                None if self.model_last.started => self.model_last.push(c),
                None => {}
            },
        }
        self.keep_carry(c);
    }

    fn restart_usage(&mut self, rest: &[u8]) {
        self.usage.clear();
        self.usage_on = true;
        self.push_usage(USAGE_KEY);
        self.push_usage(rest);
    }

    fn push_usage(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(USAGE_EVENT_MAX - self.usage.len());
        self.usage.extend_from_slice(&bytes[..n]);
    }

    fn keep_carry(&mut self, c: &[u8]) {
        if c.len() >= CARRY {
            self.carry.copy_from_slice(&c[c.len() - CARRY..]);
            self.carry_len = CARRY;
            return;
        }
        let mut all = [0u8; 2 * CARRY];
        let k = self.carry_len;
        all[..k].copy_from_slice(&self.carry[..k]);
        all[k..k + c.len()].copy_from_slice(c);
        let total = k + c.len();
        let keep = total.min(CARRY);
        self.carry[..keep].copy_from_slice(&all[total - keep..total]);
        self.carry_len = keep;
    }

    /// The record ended: its figures and model, if it had usage; then it is reset (its
    /// buffer kept for the next record of the body).
    pub(super) fn end(&mut self) -> Option<(Figures, Model)> {
        if !self.fed {
            return None;
        }
        let figures = self.usage_on.then(|| json::usage(&self.usage)).flatten();
        let model = json::model(self.model_first.get(), self.model_last.get());
        let mut usage = std::mem::take(&mut self.usage);
        usage.clear();
        *self = Record {
            usage,
            ..Record::default()
        };
        figures.map(|f| (f, model))
    }
}

const fn key_len() -> usize {
    USAGE_KEY.len()
}
