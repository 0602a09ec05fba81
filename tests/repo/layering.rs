//! The module graph stays one-way (src/lib.rs, "Layout"): each module imports only modules
//! listed after it, the bottom imports nothing of the crate, and the pure core touches
//! neither tokio nor the operating system. Read from the sources, so a new `use` that breaks
//! the layering fails here before it lands.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The modules top-down, as src/lib.rs lists them, with their layer.
const ORDER: &[(&str, Layer)] = &[
    ("check", Layer::Io),
    ("run", Layer::Io),
    ("scrape", Layer::Io),
    ("server", Layer::Io),
    ("connection", Layer::Io),
    ("tunnel", Layer::Io),
    ("exchange", Layer::Io),
    ("federation", Layer::Io),
    ("state", Layer::Io),
    ("upstream", Layer::Io),
    ("readhead", Layer::Io),
    ("listen", Layer::Io),
    ("intake", Layer::Process),
    ("command", Layer::Process),
    ("refetch", Layer::Process),
    ("config", Layer::Process),
    ("credential", Layer::Process),
    ("log", Layer::Process),
    ("metrics", Layer::Process),
    ("secret", Layer::Process),
    ("sys", Layer::Process),
    ("head", Layer::Pure),
    ("rewrite", Layer::Pure),
    ("policy", Layer::Pure),
    ("ceiling", Layer::Pure),
    ("handshake", Layer::Pure),
    ("relaybuf", Layer::Pure),
    ("tracker", Layer::Pure),
    ("wsframe", Layer::Pure),
    ("response", Layer::Pure),
    ("answer", Layer::Pure),
    ("framing", Layer::Pure),
    ("scan", Layer::Pure),
    ("persist", Layer::Pure),
    ("scrub", Layer::Pure),
    ("egress", Layer::Pure),
    ("usage", Layer::Pure),
    ("flatjson", Layer::Pure),
    ("error", Layer::Bottom),
    ("limits", Layer::Bottom),
    ("settings", Layer::Bottom),
    ("syntax", Layer::Bottom),
    ("target", Layer::Bottom),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Io,
    Process,
    Pure,
    Bottom,
}

/// What the pure core may not name: the runtime and the operating system's I/O (address
/// types such as `std::net::Ipv6Addr` are values, not I/O, and are allowed).
const NOT_PURE: &[&str] = &[
    "tokio",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "to_socket_addrs",
    "std::fs",
    "std::process",
    "std::thread",
    "std::os",
    "std::io",
    "libc",
];

/// A module's source without its `#[cfg(test)]` parts (tests may use anything): `src/x.rs` or
/// `src/x/mod.rs`, and the child modules beside it in `src/x/` (a directory module such as
/// `exchange/` is one module here, whatever its files import). Each file is cut at its own
/// first `#[cfg(test)]`; child `tests.rs` files are test code and skipped.
fn source(module: &str) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<PathBuf> = match fs::read_dir(src.join(module)) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs") && !p.ends_with("tests.rs"))
            .collect(),
        Err(_) => Vec::new(),
    };
    let flat = src.join(format!("{module}.rs"));
    if flat.exists() {
        files.push(flat);
    }
    assert!(!files.is_empty(), "crate::{module} has no source files");
    files
        .iter()
        .map(|path| {
            let text =
                fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            match text.find("#[cfg(test)]") {
                Some(i) => text[..i].to_string(),
                None => text,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Code lines only: comments (including doc comments) say `crate::x` without importing it.
fn code(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The crate modules a source refers to, through `crate::x` paths or `use crate::{x, ...}`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found
}

fn position(module: &str) -> usize {
    ORDER
        .iter()
        .position(|(m, _)| *m == module)
        .unwrap_or_else(|| panic!("crate::{module} is not in the layering order"))
}

#[test]
fn every_module_is_placed_in_the_layering() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut on_disk: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            // `x.rs`, or a directory module `x/mod.rs` (a directory beside `x.rs` holds only
            // its children).
            let module = match name.strip_suffix(".rs") {
                Some(m) => m.to_string(),
                None if e.path().join("mod.rs").is_file() => name,
                None => return None,
            };
            (module != "lib" && module != "main").then_some(module)
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = ORDER.iter().map(|(m, _)| m.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "the modules in src/ and the layering order differ"
    );
    let lib = fs::read_to_string(dir.join("lib.rs")).unwrap();
    for (m, _) in ORDER {
        assert!(
            lib.lines()
                .any(|l| l == format!("pub mod {m};") || l == format!("mod {m};")),
            "lib.rs does not declare {m}"
        );
    }
}

#[test]
fn modules_import_only_what_is_listed_after_them() {
    for (at, (module, _)) in ORDER.iter().enumerate() {
        for import in imports(&code(&source(module))) {
            if import == *module {
                continue; // `$crate::log::line` inside log's own macro
            }
            let to = position(&import);
            assert!(
                to > at,
                "crate::{module} imports crate::{import}, which is listed above it (a cycle or an upward import)"
            );
        }
    }
}

#[test]
fn the_bottom_imports_nothing_of_the_crate() {
    for (module, layer) in ORDER {
        if *layer == Layer::Bottom {
            let found = imports(&code(&source(module)));
            assert!(found.is_empty(), "crate::{module} imports {found:?}");
        }
    }
}

#[test]
fn the_pure_core_does_no_io() {
    for (module, layer) in ORDER {
        if matches!(layer, Layer::Pure | Layer::Bottom) {
            let code = code(&source(module));
            for name in NOT_PURE {
                assert!(
                    !code.contains(name),
                    "pure crate::{module} names {name}: I/O belongs above the pure core"
                );
            }
        }
    }
}

#[test]
fn the_checker_sees_imports_in_both_forms() {
    let found = imports("use crate::a::B;\nuse crate::{c, d::E};\nlet x = crate::f::g();");
    let want: BTreeSet<String> = ["a", "c", "d", "f"].iter().map(|s| s.to_string()).collect();
    assert_eq!(found, want);
    assert!(code("// crate::h\nlet y = 1; // crate::i")
        .find("crate::")
        .is_none());
}
