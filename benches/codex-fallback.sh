#!/usr/bin/env bash
# What the proxy's answer to a WebSocket upgrade costs Codex CLI: `codex exec` end to end
# (one prompt, one turn) through the proxy to a local fake of the Responses API
# (benches/codex/fake_responses.py), timed from start to exit, RUNS times per case.
#
# Codex opens `GET /v1/responses` with `Upgrade: websocket` before it streams over HTTP; a
# refusal it does not take as final is retried ("Reconnecting... n/5") before it falls back.
# Counting those attempts in the proxy's access log gives a figure that does not depend on
# timing; the wall times show what the retries cost.
#
# Cases, for each proxy binary given:
#   builtin  the built-in `openai` provider pointed at the proxy (`openai_base_url`): WebSocket on
#   ws-on    a custom provider (`[model_providers.local]`) with `supports_websockets = true`
#   ws-off   the same provider with `supports_websockets = false` (a custom provider's default)
#
# Usage: benches/codex-fallback.sh CODEX_BIN [LABEL=]PROXY_BIN [[LABEL=]PROXY_BIN ...]
#   RUNS=5 (runs per case); CASES="builtin ws-on ws-off".
# Installs nothing. Needs python3. Codex gets a fresh CODEX_HOME and HOME per run, no login:
# its key is a phantom that the proxy swaps for the real one (given to the proxy on stdin).
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi
codex=$1
shift
runs=${RUNS:-5}
cases=${CASES:-builtin ws-on ws-off}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
text="fake upstream says hello"
phantom="phantom-codex-bench"

work=$(mktemp -d)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

die() { printf 'codex-fallback: %s\n' "$*" >&2; exit 1; }

# wait_line FILE PATTERN: until a line of FILE matches (10 s at most); prints that line.
wait_line() {
    for _ in $(seq 100); do
        if grep -m1 -E "$2" "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "no line matching '$2' in $1 after 10 s: $(tail -n 5 "$1" 2>/dev/null)"
}

[ -x "$codex" ] || die "not an executable: $codex"
python3 "$here/codex/fake_responses.py" --text "$text" >"$work/fake.log" 2>&1 &
pids+=($!)
fake_port=$(wait_line "$work/fake.log" '^listening ' | cut -d' ' -f2)

# config_for CASE PORT: Codex's config.toml for CASE against the proxy on PORT. Nothing of it
# leaves the machine: no update check or analytics, and no plugins or apps (whose sync would
# `git clone` from github.com and ask api.github.com).
config_for() {
    local base="http://127.0.0.1:$2/v1"
    printf 'model = "fake-model"\ncheck_for_update_on_startup = false\n'
    case $1 in
        builtin) printf 'openai_base_url = "%s"\n' "$base" ;;
        ws-on | ws-off) printf 'model_provider = "local"\n' ;;
        *) die "unknown case: $1" ;;
    esac
    printf '\n[analytics]\nenabled = false\n\n'
    printf '[features]\nplugins = false\nremote_plugin = false\napps = false\n'
    case $1 in
        ws-on | ws-off)
            local ws=true
            [ "$1" = ws-off ] && ws=false
            printf '\n[model_providers.local]\nname = "local"\nbase_url = "%s"\n' "$base"
            printf 'wire_api = "responses"\nenv_key = "LOCAL_PROXY_KEY"\n'
            printf 'supports_websockets = %s\n' "$ws" ;;
    esac
}

# one_run CASE PORT DIR: one `codex exec`; prints its wall time in seconds. `codex exec` takes
# the built-in provider's key from CODEX_API_KEY, the custom one's from its env_key.
one_run() {
    local dir=$3 start end
    mkdir -p "$dir/home/.codex" "$dir/cwd"
    config_for "$1" "$2" >"$dir/home/.codex/config.toml"
    start=$(date +%s%N)
    (cd "$dir/cwd" && env -i PATH="$PATH" HOME="$dir/home" CODEX_HOME="$dir/home/.codex" \
        CODEX_API_KEY="$phantom" LOCAL_PROXY_KEY="$phantom" TERM=dumb \
        timeout 120 "$codex" exec --skip-git-repo-check --ephemeral --color never \
        "Say hello." </dev/null >"$dir/out" 2>"$dir/err") ||
        die "codex exec failed ($1, $dir): $(tail -n 5 "$dir/err")"
    end=$(date +%s%N)
    grep -qF "$text" "$dir/out" || die "the fake's text is not in codex's output ($dir/out)"
    awk -v ns=$((end - start)) 'BEGIN { printf "%.2f\n", ns / 1e9 }'
}

# upgrades LOG: the access-log lines of Codex's upgrade attempts (`GET /v1/responses`).
upgrades() { grep -E '^proxy: GET /v1/responses [0-9]{3} ' "$1" || true; }

median() { sort -n | awk '{ v[NR] = $1 } END { m = int((NR + 1) / 2); print (NR % 2) ? v[m] : (v[m] + v[m + 1]) / 2 }'; }

printf '%s; %s runs per case\n\n' "$("$codex" --version)" "$runs"
printf '| proxy | case | upgrade answer | upgrade attempts per run | median (s) | runs (s) |\n'
printf '|---|---|---|---|---:|---|\n'
for spec in "$@"; do
    label=${spec%%=*}
    proxy=${spec#*=}
    [ "$label" = "$spec" ] && label=$(basename "$(dirname "$(dirname "$(dirname "$proxy")")")")
    [ -x "$proxy" ] || die "not an executable: $proxy"
    for c in $cases; do
        log="$work/proxy-$label-$c.log"
        printf 'real-token-codex-bench\n' | env -i PATH="$PATH" LISTEN_PORT=0 \
            TARGET="http://127.0.0.1:$fake_port" PHANTOM_TOKEN="$phantom" "$proxy" 2>"$log" &
        pids+=($!)
        proxy_pid=$!
        proxy_port=$(wait_line "$log" '^proxy: listening on ' | sed -E 's/^proxy: listening on [^,]*:([0-9]+),.*/\1/')
        times=() counts=() seen=0
        for r in $(seq "$runs"); do
            times+=("$(one_run "$c" "$proxy_port" "$work/run-$label-$c-$r")")
            sleep 0.2 # the access-log line follows the answer
            now=$(upgrades "$log" | wc -l)
            counts+=($((now - seen)))
            seen=$now
        done
        kill "$proxy_pid" 2>/dev/null || true
        wait "$proxy_pid" 2>/dev/null || true
        status=$(upgrades "$log" | awk '{ print $4 }' | sort -u | paste -sd/ -)
        printf '| %s | %s | %s | %s | %s | %s |\n' "$label" "$c" "${status:--}" \
            "$(printf '%s\n' "${counts[@]}" | sort -n | uniq | paste -sd/ -)" \
            "$(printf '%s\n' "${times[@]}" | median)" "${times[*]}"
    done
done
