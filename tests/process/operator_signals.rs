//! The metrics listener's startup error: exit code 1 and a `proxy: ` line naming the setting
//! (the metrics themselves: `tests/it/operator_signals.rs`).

use crate::support::*;

/// (Split from `the_metrics_listener_answers_get_metrics_only_and_the_sandbox_port_never_does`
/// in `tests/it`: the exit code needs the process.)
#[test]
fn a_metrics_addr_that_is_not_an_address_exits_1_naming_the_setting() {
    let envs = [("METRICS_ADDR", "not-an-address")];
    let out = run(&[], &envs, Some(b"sk-ant-x\n"), true, IO_TIMEOUT);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.starts_with("proxy: METRICS_ADDR: "),
        "{:?}",
        out.stderr
    );
}
