//! The integration tests, one module per property, in one test binary: the support harness
//! compiles once, the tests share one process, and each proxy runs in it through the library
//! (`support::proxy`). What only a process shows is in `tests/process`.

mod support;

mod attack_review;
mod credential_confinement;
mod credential_lifecycle;
mod egress;
mod forwarding;
mod harness;
mod health;
mod keepalive;
mod limits;
mod limits_more;
mod logging;
mod operator_signals;
mod phantom_token;
mod refused_requests;
mod request_framing;
mod response_framing;
mod response_truncation;
mod streaming;
mod tls;
mod token_scrubbing;
mod uploads;
mod upstream_errors;
mod upstream_reuse;
mod usage;
