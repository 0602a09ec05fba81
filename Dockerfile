# agent-loop-proxy container image: one static binary in an otherwise empty image.
#
#   docker build -t agent-loop-proxy:v1 .
#   echo "$TOKEN" | docker run -i --rm --read-only --cap-drop ALL \
#     --security-opt no-new-privileges -p 127.0.0.1:18080:18080 agent-loop-proxy:v1
#
# .ci/container-check builds the same binary (same target, same flags) without a
# Docker engine, runs it the way this image runs it (empty root, uid 65532, no
# /etc, no CA files, no shell), and cross-checks the settings below against it.

# ---------------------------------------------------------------------------
# Build stage.
# Pinned by tag: the toolchain matches the one CI tests with (rustc 1.95.0), and
# bookworm matches the CI machine's glibc (2.36), whose static archive ends up in
# the binary. Nothing of this image ships except the binary. To pin by digest as
# well (reproducible builds, at the cost of manual updates for security fixes):
#   docker buildx imagetools inspect rust:1.95.0-slim-bookworm
# and use rust:1.95.0-slim-bookworm@sha256:<digest>. The -slim variant carries
# gcc and libc6-dev (libc.a), which is all ring and the static link need.
FROM rust:1.95.0-slim-bookworm AS build

SHELL ["/bin/bash", "-euo", "pipefail", "-c"]

# glibc, statically linked (a static-pie). The same flags as .ci/container-check;
# with an explicit --target they apply to the binary, not to build scripts.
ENV RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_TERM_COLOR=never

WORKDIR /src

# Dependency layer: compile every locked dependency against placeholder sources,
# so that a change under src/ recompiles only this crate. The placeholders'
# fingerprints are deleted afterwards, so cargo can never mistake them for the
# real crate (COPY keeps the sources' mtimes, which may be older).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/relay.rs \
 && echo 'fn main() {}' > benches/scrub.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-gnu \
 && rm -rf src benches target/x86_64-unknown-linux-gnu/release/.fingerprint/agent-loop-proxy-*

# The crate itself. The binary must be static (no ELF interpreter, no needed
# libraries) and must run; the build fails otherwise.
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-gnu \
 && bin=target/x86_64-unknown-linux-gnu/release/agent-loop-proxy \
 && if readelf --program-headers --wide "$bin" | grep -q INTERP; then echo "not static: $bin" >&2; exit 1; fi \
 && if readelf --dynamic --wide "$bin" | grep -q NEEDED; then echo "not static: $bin" >&2; exit 1; fi \
 && "$bin" --version \
 && install -D -m 0555 "$bin" /out/agent-loop-proxy

# ---------------------------------------------------------------------------
# Final stage: nothing but the binary. No shell, no /etc, no CA bundle (the
# Mozilla roots are compiled in; TARGET_CA_FILE can point at a mounted bundle).
FROM scratch

ARG VERSION=0.1.0
ARG SOURCE_URL=https://github.com/OWNER/agent-loop-proxy
LABEL org.opencontainers.image.title="agent-loop-proxy" \
      org.opencontainers.image.description="Credential-injection reverse proxy for sandboxed AI coding agents" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

# Owned by root and not writable: the proxy's user can run it, not replace it.
COPY --from=build /out/agent-loop-proxy /agent-loop-proxy

# Non-root, numeric (there is no /etc/passwd to look a name up in). Binding
# 18080 needs no capability, so the container runs with --cap-drop ALL,
# --read-only and no-new-privileges; it writes nothing, anywhere.
USER 65532:65532

# The listener must be reachable through the published port; publish it on the
# host's loopback only (-p 127.0.0.1:18080:18080).
ENV LISTEN_ADDR=0.0.0.0
EXPOSE 18080

# SIGTERM drains in-flight requests for up to SHUTDOWN_GRACE (8s), then exits 0;
# docker stop waits 10s before SIGKILL.
STOPSIGNAL SIGTERM

# GET /health on LISTEN_PORT (loopback when LISTEN_ADDR is 0.0.0.0) from inside the
# container; bounded by the binary itself (3s per step), --timeout is a backstop. Needs no
# token and no shell.
HEALTHCHECK --interval=30s --timeout=10s --start-period=5s --retries=3 \
  CMD ["/agent-loop-proxy", "healthcheck"]

ENTRYPOINT ["/agent-loop-proxy"]
