//! The integration tests, one module per property, in one test binary: the support harness
//! compiles once, and the tests share one process.

mod support;

mod configuration;
mod credential_confinement;
mod credential_lifecycle;
mod egress;
mod forwarding;
mod harness;
mod health;
mod healthcheck;
mod keepalive;
mod lifecycle;
mod limits;
mod limits_more;
mod logging;
mod operator_signals;
mod phantom_token;
mod refused_requests;
mod request_framing;
mod response_framing;
mod response_truncation;
mod shutdown;
mod streaming;
mod tls;
mod token_intake;
mod token_scrubbing;
mod uploads;
mod upstream_errors;
mod upstream_reuse;
