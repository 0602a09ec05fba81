"""container-check helper: print the agent-loop-proxy executable(s) a cargo
build reported.

Usage: python3 cargo_executable.py BUILD_JSON

BUILD_JSON is what `cargo build --message-format=json-render-diagnostics`
wrote on stdout. One path per compiler-artifact message for the
agent-loop-proxy target that has an executable; container-check takes the last.
"""
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "agent-loop-proxy":
        print(m["executable"])
