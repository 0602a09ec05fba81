# agent-loop-proxy container image: one static binary in an otherwise empty image,
# for linux/amd64 and linux/arm64.
#
#   docker build -t agent-loop-proxy:v1 .          # the image for this machine's arch
#   docker buildx build --platform linux/amd64,linux/arm64 -t agent-loop-proxy:v1 --push .
#   echo "$TOKEN" | docker run -i --rm --read-only --cap-drop ALL \
#     --security-opt no-new-privileges -p 127.0.0.1:18080:18080 agent-loop-proxy:v1
#
# Needs BuildKit (the default builder since Docker 23; Docker Desktop always), which
# sets BUILDPLATFORM and TARGETARCH.
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
# and use rust:1.95.0-slim-bookworm@sha256:<digest> (the digest of the multi-arch
# index, so that it still resolves on both build machines). The -slim variant
# carries gcc and libc6-dev (libc.a), which is all ring and the static link need.
#
# Multi-platform: this stage always runs on the build machine's own arch
# (--platform=$BUILDPLATFORM) and cross-compiles for TARGETARCH. The alternative,
# building natively per platform, runs rustc for the other arch under QEMU emulation:
# many times slower (fat LTO, codegen-units=1) and it needs binfmt set up on the
# build machine. Cross-compiling needs only Debian's cross gcc and static glibc and
# rustup's standard library for the target, and the output is the same kind of
# binary: static glibc, checked below. The final stage is scratch, which has a
# variant for every platform, so only this stage has to know about arches.
FROM --platform=$BUILDPLATFORM rust:1.95.0-slim-bookworm AS build

SHELL ["/bin/bash", "-euo", "pipefail", "-c"]

# glibc, statically linked. The same flags as .ci/container-check; with an explicit
# --target they apply to the binary, not to build scripts (which run here).
ENV RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_TERM_COLOR=never

WORKDIR /src

# TARGETARCH (amd64 | arm64, from --platform; the build machine's arch for a plain
# `docker build`) -> Rust triple and, when it is not this machine's arch, the cross
# toolchain: all in docker/target-env.sh, which .ci/container-check runs for every
# pair of arches. Any other arch (arm/v7, 386, riscv64, ...) fails here, by name.
# `install` is a no-op for a native build; for a cross build it installs
# gcc-<arch>-linux-gnu and libc6-dev-<arch>-cross (unpinned, like the image's own
# packages: the base tag fixes the Debian release) and `rustup target add`s the
# triple. The settings land in /usr/local/etc/target.env, which every RUN that
# builds sources: TARGET_TRIPLE, TARGET_CROSS, TARGET_ELF_MACHINE and, cross only,
# the linker, C compiler and archiver for cargo and the cc crate (ring).
ARG TARGETARCH
ARG TARGETOS
COPY --chmod=0555 docker/target-env.sh /usr/local/bin/target-env
RUN target-env install \
 && target-env env >/usr/local/etc/target.env \
 && cat /usr/local/etc/target.env

# Dependency layer: compile every locked dependency against placeholder sources,
# so that a change under src/ recompiles only this crate. The placeholders'
# fingerprints are deleted afterwards, so cargo can never mistake them for the
# real crate (COPY keeps the sources' mtimes, which may be older). Cached per
# target arch (TARGETARCH is part of the cache key from its ARG on).
COPY Cargo.toml Cargo.lock ./
RUN . /usr/local/etc/target.env \
 && mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/relay.rs \
 && echo 'fn main() {}' > benches/scrub.rs \
 && cargo build --release --locked --target "$TARGET_TRIPLE" \
 && rm -rf src benches "target/$TARGET_TRIPLE/release/.fingerprint/agent-loop-proxy-"*

# The crate itself. The binary must be static (no ELF interpreter, no needed
# libraries) and for the target's machine; readelf reads any arch's ELF, so these
# checks hold for a cross build too, and the build fails otherwise. It must also
# run, which can only be tried when it is this machine's arch: a cross-compiled
# binary is not run here (.ci/container-check runs the cross build under QEMU where
# it can). amd64 is a static-pie; arm64 is a static non-PIE executable (rustc's
# aarch64-unknown-linux-gnu does not do static-pie), equally free of the loader.
COPY . .
RUN . /usr/local/etc/target.env \
 && cargo build --release --locked --target "$TARGET_TRIPLE" \
 && bin="target/$TARGET_TRIPLE/release/agent-loop-proxy" \
 && if readelf --program-headers --wide "$bin" | grep -q INTERP; then echo "not static: $bin" >&2; exit 1; fi \
 && if readelf --dynamic --wide "$bin" | grep -q NEEDED; then echo "not static: $bin" >&2; exit 1; fi \
 && machine=$(readelf --file-header "$bin" | sed -n 's/^ *Machine: *//p') \
 && if [ "$machine" != "$TARGET_ELF_MACHINE" ]; then echo "$bin is for $machine, not $TARGET_ELF_MACHINE" >&2; exit 1; fi \
 && if [ "$TARGET_CROSS" = 0 ]; then "$bin" --version; else echo "cross-compiled for $TARGET_TRIPLE: not run on this build machine"; fi \
 && install -D -m 0555 "$bin" /out/agent-loop-proxy

# ---------------------------------------------------------------------------
# Final stage: nothing but the binary. No shell, no /etc, no CA bundle (the
# Mozilla roots are compiled in; TARGET_CA_FILE can point at a mounted bundle).
FROM scratch

ARG VERSION=0.2.0
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
