#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agent_loop_proxy_fuzz::usage(data));
