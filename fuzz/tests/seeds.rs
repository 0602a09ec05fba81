//! Runs every target's properties over its committed seed corpus (and any inputs saved under
//! `corpus/<target>/` by a local run), on the stable toolchain without libFuzzer:
//! `cargo test --manifest-path fuzz/Cargo.toml`.

use std::fs;
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in ["corpus"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for p in paths {
            let data = fs::read(&p).unwrap();
            eprintln!("{target}: {}", p.display());
            check(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no seeds for {target}");
}

#[test]
fn parse_head_seeds() {
    replay("parse_head", agent_loop_proxy_fuzz::parse_head);
}

#[test]
fn chunked_seeds() {
    replay("chunked", agent_loop_proxy_fuzz::chunked);
}

#[test]
fn response_head_seeds() {
    replay("response_head", agent_loop_proxy_fuzz::response_head);
}

#[test]
fn relay_response_seeds() {
    replay("relay_response", agent_loop_proxy_fuzz::relay_response);
}

#[test]
fn ws_frames_seeds() {
    replay("ws_frames", agent_loop_proxy_fuzz::ws_frames);
}

#[test]
fn usage_seeds() {
    replay("usage", agent_loop_proxy_fuzz::usage);
}
