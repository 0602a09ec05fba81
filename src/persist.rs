//! Pure: whether each connection outlives an exchange. Every keep-alive decision in the crate
//! is made here, from named facts (RFC 9112 §9.3 persistence, §9.6 tear-down;
//! docs/http-rules.md §7.1: close when in doubt).
//!
//! Two moments decide. When a response head is written, [`client_may_persist`] says whether
//! it carries `Connection: close`. When the exchange has ended, [`settle`] takes its final
//! state, an [`End`], and says what happens to each side: the client connection is kept,
//! closed (FIN, then a lingering close) or reset (RST); the upstream connection is pooled or
//! dropped.

/// What the client's side allows, known once its request head is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTerms {
    /// HTTP/1.1 without `Connection: close`; never HTTP/1.0 (R35).
    pub keep_alive: bool,
    /// The connection may serve another request: under `MAX_REQUESTS_PER_CONNECTION`, and
    /// the proxy is not draining.
    pub more_allowed: bool,
}

impl ClientTerms {
    /// Terms for ends whose fate does not depend on the client's wishes.
    pub const CLOSING: ClientTerms = ClientTerms {
        keep_alive: false,
        more_allowed: false,
    };

    /// Whether the client's side lets the connection persist after this exchange.
    pub fn persist(self) -> bool {
        self.keep_alive && self.more_allowed
    }
}

/// Whether the upstream lets us reuse its connection after this response (RFC 9112 §9.3):
/// HTTP/1.1, or HTTP/1.0 with `keep-alive`; no `close`; and a body that does not run until
/// the upstream closes.
pub fn upstream_allows_reuse(
    http11: bool,
    keep_alive_10: bool,
    close: bool,
    until_close: bool,
) -> bool {
    !close && (http11 || keep_alive_10) && !until_close
}

/// Whether the client connection may persist after a final response, decided when its head is
/// written. `exchange_allows`: the client's terms allow it and its request body was read
/// whole by the time the head arrived. `close_delimited`: the client sees a body that ends
/// when we close (the upstream's was, or it is de-chunked for HTTP/1.0).
pub fn client_may_persist(exchange_allows: bool, close_delimited: bool) -> bool {
    exchange_allows && !close_delimited
}

/// The final state of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The proxy answered itself and nothing of an upstream response reached the client.
    /// `in_sync`: the client's request was read exactly (head and body), so the connection's
    /// next byte starts a new request.
    Answered { in_sync: bool },
    /// `/health` was answered. Always closed: it needs no phantom token, so keep-alive would
    /// let any local process hold connection slots by renewing them with health checks.
    Health,
    /// The upstream's response reached the client whole.
    Relayed(Relayed),
    /// Response bytes reached the client, then the exchange failed. `close_delimited`: the
    /// client sees a body that ends at close, so a FIN would make it look complete.
    Cut { close_delimited: bool },
    /// The client stopped reading or left before the exchange could finish.
    ClientGone,
}

/// The facts of a response relayed whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// The request body was sent upstream whole.
    pub body_sent: bool,
    /// The final response head arrived before the request body was sent whole: the upstream
    /// answered without reading it all (or read the rest as something else), so what it
    /// expects next on this connection is unknown.
    pub answered_early: bool,
    /// The response head told the client `Connection: close`.
    pub announced_close: bool,
    /// The upstream allowed reuse (see [`upstream_allows_reuse`]).
    pub upstream_allows: bool,
    /// The response had a body and it ended exactly where its framing said, with nothing
    /// after it (R30). A response that ends at its head (HEAD, 204, 304) does not count: that
    /// is where an upstream that disagrees about a body would send one.
    pub ended_exactly: bool,
}

/// What happens to the client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFate {
    /// Serve the next request on it.
    Keep,
    /// FIN, then a lingering close (R34).
    Close,
    /// RST, so a cut close-delimited response cannot look complete (R29).
    Reset,
}

/// What happens to the upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFate {
    Pool,
    Drop,
}

/// Both sides' fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fate {
    pub client: ClientFate,
    pub upstream: UpstreamFate,
}

/// Given an exchange's final state and the client's terms, what happens to each connection.
pub fn settle(end: End, terms: ClientTerms) -> Fate {
    let keep_if = |yes: bool| {
        if yes {
            ClientFate::Keep
        } else {
            ClientFate::Close
        }
    };
    let (client, upstream) = match end {
        End::Answered { in_sync } => (keep_if(in_sync && terms.persist()), UpstreamFate::Drop),
        End::Health | End::ClientGone => (ClientFate::Close, UpstreamFate::Drop),
        End::Relayed(r) => {
            let client = keep_if(r.body_sent && !r.announced_close && terms.persist());
            let pool = r.body_sent && !r.answered_early && r.upstream_allows && r.ended_exactly;
            let upstream = if pool {
                UpstreamFate::Pool
            } else {
                UpstreamFate::Drop
            };
            (client, upstream)
        }
        End::Cut { close_delimited } if close_delimited => (ClientFate::Reset, UpstreamFate::Drop),
        End::Cut { .. } => (ClientFate::Close, UpstreamFate::Drop),
    };
    Fate { client, upstream }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: ClientTerms = ClientTerms {
        keep_alive: true,
        more_allowed: true,
    };
    const CLEAN: Relayed = Relayed {
        body_sent: true,
        answered_early: false,
        announced_close: false,
        upstream_allows: true,
        ended_exactly: true,
    };

    #[test]
    fn a_clean_exchange_keeps_both_connections() {
        let f = settle(End::Relayed(CLEAN), OPEN);
        assert_eq!(
            (f.client, f.upstream),
            (ClientFate::Keep, UpstreamFate::Pool)
        );
    }

    #[test]
    fn any_doubt_closes() {
        let closing = ClientTerms {
            keep_alive: false,
            ..OPEN
        };
        assert_eq!(
            settle(End::Relayed(CLEAN), closing).client,
            ClientFate::Close
        );
        for r in [
            Relayed {
                body_sent: false,
                ..CLEAN
            },
            Relayed {
                ended_exactly: false,
                ..CLEAN
            },
            Relayed {
                upstream_allows: false,
                ..CLEAN
            },
            Relayed {
                answered_early: true,
                ..CLEAN
            },
        ] {
            assert_eq!(
                settle(End::Relayed(r), OPEN).upstream,
                UpstreamFate::Drop,
                "{r:?}"
            );
        }
        let announced = Relayed {
            announced_close: true,
            ..CLEAN
        };
        assert_eq!(
            settle(End::Relayed(announced), OPEN).client,
            ClientFate::Close
        );
        assert_eq!(settle(End::Health, OPEN).client, ClientFate::Close);
        assert_eq!(settle(End::ClientGone, OPEN).client, ClientFate::Close);
        let out_of_sync = End::Answered { in_sync: false };
        assert_eq!(settle(out_of_sync, OPEN).client, ClientFate::Close);
        assert_eq!(
            settle(End::Answered { in_sync: true }, OPEN).client,
            ClientFate::Keep
        );
    }

    #[test]
    fn a_cut_close_delimited_response_is_reset() {
        let cut = |close_delimited| settle(End::Cut { close_delimited }, OPEN).client;
        assert_eq!(cut(true), ClientFate::Reset);
        assert_eq!(cut(false), ClientFate::Close);
    }
}
