#!/usr/bin/env bash
# docker/target-env.sh: the one place that maps Docker's TARGETARCH to what the
# Dockerfile's build stage needs to build the static binary for it.
#
#   TARGETARCH=arm64 docker/target-env.sh env      print the settings as `export` lines
#   TARGETARCH=arm64 docker/target-env.sh install  install the cross toolchain (root)
#
# Inputs (environment):
#   TARGETARCH  the image's architecture (Docker sets it from --platform): amd64 or
#               arm64; anything else is an error. Unset: the build machine's.
#   TARGETOS    linux, or unset (the image is a Linux binary in scratch).
#   BUILDARCH   the architecture this runs on. Unset: dpkg --print-architecture
#               (else uname -m). The Dockerfile leaves it unset, so it is always the
#               machine that really runs the build stage; .ci/container-check sets it
#               to check the mapping for a build machine it is not.
#
# `env` prints (and .ci/container-check asserts, for every pair of arches):
#   TARGET_TRIPLE          Rust target: x86_64-unknown-linux-gnu | aarch64-unknown-linux-gnu
#   TARGET_ELF_MACHINE     what `readelf --file-header` says the binary's Machine is
#   TARGET_CROSS           0: TARGETARCH is the build machine's; 1: cross-compiling
#   TARGET_CROSS_PACKAGES  the Debian cross gcc and static libc for the target
#                          (empty when native: the image's own gcc and libc6-dev serve)
# and, only when cross-compiling, the settings that point cargo and the cc crate
# (ring's C and assembly) at the cross toolchain:
#   CARGO_TARGET_<TRIPLE>_LINKER, CC_<triple>, AR_<triple>   (<gnu-prefix>-gcc/-ar)
# A native build sets nothing beyond the four above: it is the build .ci/container-check
# runs on the CI machine.
#
# `install` does nothing for a native build; for a cross build it installs
# TARGET_CROSS_PACKAGES (no recommends, lists removed afterwards) and the target's
# Rust standard library (rustup target add), then checks the linker is on PATH.
set -euo pipefail

die() { echo "target-env: $*" >&2; exit 1; }

machine_arch() {
    if command -v dpkg >/dev/null 2>&1; then
        dpkg --print-architecture
        return
    fi
    case $(uname -m) in
        x86_64) echo amd64 ;;
        aarch64 | arm64) echo arm64 ;;
        *) uname -m ;;
    esac
}

build_arch=${BUILDARCH:-$(machine_arch)}
target_arch=${TARGETARCH:-$build_arch}
[[ ${TARGETOS:-linux} == linux ]] ||
    die "TARGETOS=$TARGETOS: the image holds a Linux binary; build for linux/amd64 or linux/arm64"

# arch -> Rust triple, GNU tool prefix, Debian cross packages (as named on the
# *other* arch's build machine), readelf's Machine.
case $target_arch in
    amd64)
        triple=x86_64-unknown-linux-gnu
        gnu=x86_64-linux-gnu
        cross_packages="gcc-x86-64-linux-gnu libc6-dev-amd64-cross"
        elf_machine="Advanced Micro Devices X86-64"
        ;;
    arm64)
        triple=aarch64-unknown-linux-gnu
        gnu=aarch64-linux-gnu
        cross_packages="gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
        elf_machine="AArch64"
        ;;
    *)
        die "TARGETARCH=$target_arch is not supported; supported: amd64 (linux/amd64), arm64 (linux/arm64)"
        ;;
esac
case $build_arch in
    amd64 | arm64) ;;
    *) die "build machine architecture $build_arch is not supported; build on amd64 or arm64" ;;
esac

if [[ $target_arch == "$build_arch" ]]; then
    cross=0
    cross_packages=
else
    cross=1
fi
triple_us=${triple//-/_}   # aarch64_unknown_linux_gnu: the cc crate's CC_<target>
triple_uc=${triple_us^^}   # AARCH64_UNKNOWN_LINUX_GNU: cargo's CARGO_TARGET_<TRIPLE>_LINKER

print_env() {
    printf 'export %s=%q\n' \
        TARGET_TRIPLE "$triple" \
        TARGET_ELF_MACHINE "$elf_machine" \
        TARGET_CROSS "$cross" \
        TARGET_CROSS_PACKAGES "$cross_packages"
    if ((cross)); then
        printf 'export %s=%q\n' \
            "CARGO_TARGET_${triple_uc}_LINKER" "$gnu-gcc" \
            "CC_${triple_us}" "$gnu-gcc" \
            "AR_${triple_us}" "$gnu-ar"
    fi
}

install_toolchain() {
    if ((!cross)); then
        echo "target-env: $target_arch on $build_arch: native build for $triple, nothing to install"
        return
    fi
    echo "target-env: $target_arch on $build_arch: cross-compiling for $triple; installing $cross_packages"
    local pkgs
    read -r -a pkgs <<<"$cross_packages"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}"
    rm -rf /var/lib/apt/lists/*
    rustup target add "$triple"
    command -v "$gnu-gcc" >/dev/null || die "$gnu-gcc not on PATH after installing $cross_packages"
    command -v "$gnu-ar" >/dev/null || die "$gnu-ar not on PATH after installing $cross_packages"
}

case ${1:-} in
    env) print_env ;;
    install) install_toolchain ;;
    *) die "usage: TARGETARCH=amd64|arm64 $0 env|install" ;;
esac
