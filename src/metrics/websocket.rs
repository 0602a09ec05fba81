//! The WebSocket tunnels' signals: how many are open, the bytes they carried each way, and
//! how they closed, by a fixed set of close codes (RFC 6455 §7.4.1).

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use super::PREFIX;

/// The `code` label values; any other code counts as `other`, so the set stays bounded
/// whatever a peer sends.
const CODES: [&str; 8] = [
    "1000", "1001", "1002", "1006", "1008", "1009", "1010", "1011",
];

pub struct TunnelMetrics {
    open: AtomicI64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    /// By [`CODES`], then `other`.
    closes: [AtomicU64; CODES.len() + 1],
}

/// Counts a tunnel open while alive (the gauge).
pub struct Open<'m>(&'m TunnelMetrics);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

impl TunnelMetrics {
    pub const fn new() -> TunnelMetrics {
        TunnelMetrics {
            open: AtomicI64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            closes: [const { AtomicU64::new(0) }; CODES.len() + 1],
        }
    }

    /// A tunnel opened; it counts as open until the guard drops.
    pub fn open(&self) -> Open<'_> {
        self.open.fetch_add(1, Relaxed);
        Open(self)
    }

    /// A tunnel closed with `code`, having carried these bytes (frames, after its 101).
    pub fn closed(&self, code: u16, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Relaxed);
        self.bytes_down.fetch_add(down, Relaxed);
        let code = code.to_string();
        let i = CODES.iter().position(|c| *c == code).unwrap_or(CODES.len());
        self.closes[i].fetch_add(1, Relaxed);
    }

    pub fn render(&self, out: &mut String) {
        let name = format!("{PREFIX}_websocket_tunnels");
        let v = self.open.load(Relaxed);
        let _ = writeln!(
            out,
            "# HELP {name} WebSocket tunnels open.\n# TYPE {name} gauge\n{name} {v}"
        );
        let name = format!("{PREFIX}_websocket_bytes_total");
        let help = "Frame bytes relayed through WebSocket tunnels, by direction.";
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (dir, c) in [("up", &self.bytes_up), ("down", &self.bytes_down)] {
            let v = c.load(Relaxed);
            let _ = writeln!(out, "{name}{{direction=\"{dir}\"}} {v}");
        }
        let name = format!("{PREFIX}_websocket_closes_total");
        let help = "WebSocket tunnels closed, by close code (1006: no close frame).";
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (code, c) in CODES.iter().chain(&["other"]).zip(&self.closes) {
            let v = c.load(Relaxed);
            let _ = writeln!(out, "{name}{{code=\"{code}\"}} {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code the tunnel closes with by itself has a label of its own, 1008 (a held
    /// prefix past its bound) and 1011 (the credential stopped being usable) included.
    #[test]
    fn every_code_the_relay_refuses_with_has_its_label() {
        use crate::wsframe::Close;
        let own = [
            Close::PROTOCOL_ERROR,
            Close::POLICY,
            Close::TOO_BIG,
            Close::EXTENSION,
        ];
        for code in own.iter().map(|c| c.code).chain([1000, 1001, 1006, 1011]) {
            assert!(CODES.contains(&code.to_string().as_str()), "{code}");
        }
    }

    #[test]
    fn codes_are_a_bounded_set_and_the_gauge_follows_the_guard() {
        let m = TunnelMetrics::new();
        {
            let _a = m.open();
            let mut out = String::new();
            m.render(&mut out);
            assert!(out.contains("_websocket_tunnels 1\n"), "{out}");
        }
        m.closed(1001, 5, 7);
        m.closed(4321, 0, 0);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("_websocket_tunnels 0\n"), "{out}");
        assert!(
            out.contains("_websocket_closes_total{code=\"1001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("_websocket_closes_total{code=\"other\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("_websocket_bytes_total{direction=\"down\"} 7\n"),
            "{out}"
        );
    }
}
