//! The README's settings table and the proxy's own (`src/settings.rs`, which `--help` prints
//! and the parser reads names from) list the same settings with the same defaults.

use agent_loop_proxy::settings::SETTINGS;
use std::path::Path;

/// The README's rows: names (split at ` / `) and default, backticks removed.
fn readme_rows() -> Vec<(Vec<String>, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let text = std::fs::read_to_string(path).expect("README.md");
    let start = text
        .find("| `LISTEN_PORT` |")
        .expect("README has a settings table");
    text[start..]
        .lines()
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            let names = cells[0]
                .split(" / ")
                .map(|n| n.trim_matches('`').to_string())
                .collect();
            (names, cells[1].replace('`', ""))
        })
        .collect()
}

#[test]
fn the_readme_lists_every_setting_with_its_default() {
    let readme = readme_rows();
    let ours: Vec<(Vec<String>, String)> = SETTINGS
        .iter()
        .map(|s| {
            let names = s.names.iter().map(|n| n.to_string()).collect();
            (names, s.default.to_string())
        })
        .collect();
    for row in &readme {
        assert!(
            ours.contains(row),
            "README row not in src/settings.rs: {row:?}"
        );
    }
    for row in &ours {
        assert!(
            readme.contains(row),
            "setting missing from the README: {row:?}"
        );
    }
    assert_eq!(readme.len(), ours.len());
}

#[test]
fn help_names_every_setting_and_its_default() {
    let help = agent_loop_proxy::settings::help_table();
    for s in SETTINGS {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(s.names[0]))
            .unwrap_or_else(|| panic!("{} not in --help", s.names[0]));
        assert!(line.contains(s.default), "{line}");
    }
}
