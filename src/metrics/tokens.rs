//! The token counters: what the upstream reported using, by kind, and by model for the first
//! [`USAGE_MODELS_MAX`] models seen (any later one counts as `other`), so the label set stays
//! bounded however many model names an upstream invents.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use super::PREFIX;
use crate::limits::USAGE_MODELS_MAX;
use crate::usage::{Usage, KINDS};

/// The model label of the usage of models past the first [`USAGE_MODELS_MAX`], and of usage
/// that named none.
const OTHER: &str = "other";

/// Token counts, by kind and by model.
pub struct TokenCounts {
    by_kind: [AtomicU64; KINDS.len()],
    /// The models in the order first seen, each with its counts by kind; `other` last once
    /// used. Locked once per response that reported usage.
    by_model: Mutex<Vec<(String, [u64; KINDS.len()])>>,
}

impl TokenCounts {
    pub const fn new() -> TokenCounts {
        TokenCounts {
            by_kind: [const { AtomicU64::new(0) }; KINDS.len()],
            by_model: Mutex::new(Vec::new()),
        }
    }

    /// Counts the usage of one response.
    pub fn add(&self, u: &Usage) {
        if u.kinds().iter().all(Option::is_none) {
            return;
        }
        let figures = u.kinds().map(|k| k.unwrap_or(0));
        for (c, n) in self.by_kind.iter().zip(figures) {
            c.fetch_add(n, Relaxed);
        }
        let mut models = self.by_model.lock().unwrap_or_else(|e| e.into_inner());
        let named = u.model().unwrap_or(OTHER);
        let known = models.iter().position(|(m, _)| m == named);
        let i = match known {
            Some(i) => i,
            None if models.len() < USAGE_MODELS_MAX => {
                models.push((named.to_string(), [0; KINDS.len()]));
                models.len() - 1
            }
            None => match models.iter().position(|(m, _)| m == OTHER) {
                Some(i) => i,
                None => {
                    models.push((OTHER.to_string(), [0; KINDS.len()]));
                    models.len() - 1
                }
            },
        };
        for (c, n) in models[i].1.iter_mut().zip(figures) {
            *c = c.saturating_add(n);
        }
    }

    pub fn render(&self, out: &mut String) {
        let name = format!("{PREFIX}_tokens_total");
        let help = "Tokens the upstream reported using, by kind (input without cache reads, output, cache_read, cache_creation).";
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (kind, c) in KINDS.iter().zip(&self.by_kind) {
            let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {}", c.load(Relaxed));
        }
        let name = format!("{PREFIX}_model_tokens_total");
        let help = format!("Tokens the upstream reported using, by model (the first {USAGE_MODELS_MAX} named, then other) and kind.");
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let models = self.by_model.lock().unwrap_or_else(|e| e.into_inner());
        for (model, counts) in models.iter() {
            // A model name is letters, digits and `-._:/@+` only: nothing to escape.
            for (kind, n) in KINDS.iter().zip(counts) {
                let _ = writeln!(out, "{name}{{model=\"{model}\",kind=\"{kind}\"}} {n}");
            }
        }
    }
}
