//! The integration tests for what only a process shows: stdin and its closing (a terminal
//! on it included), exit codes, signals, the `healthcheck` subcommand, `--help`, `--check`
//! and `--version`, configuration errors
//! before stdin is read, /proc (non-dumpable, the token never in argv or the environment),
//! uids and resource limits. Everything else runs in process, in `tests/it`, whose harness
//! this binary shares.

#[path = "../it/support/mod.rs"]
mod support;

mod attack_review;
mod ceiling_tokens;
mod ceilings;
mod codex;
mod configuration;
mod credential_confinement;
mod credential_lifecycle;
mod egress;
mod federation;
mod healthcheck;
mod lifecycle;
mod operator_signals;
mod shutdown;
mod signals;
mod terminal;
mod token_command;
mod token_intake;
mod unix_socket;
mod websocket;
