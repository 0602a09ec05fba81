"""container-check fixture: check the Dockerfile against what container-check
assumes, and hand what it says to the script as bash assignments.

Usage: python3 dockerfile_check.py DOCKERFILE DOCKERIGNORE CARGO_TOML TARGET_ENV OUT

TARGET_ENV is the TARGETARCH mapping script's path in the build context
(docker/target-env.sh): the build stage must run it and build for the triple it
gives, not for a triple written into the Dockerfile.

Writes df_* assignments (USER, COPY destination, ENV, HEALTHCHECK, ENTRYPOINT,
version, dependency-cache layer) to OUT for the script to source, prints one
line per problem found, and exits 1 if there was any.
"""
import json, re, shlex, sys

dockerfile, dockerignore, cargo_toml, target_env, out = sys.argv[1:6]
problems = []

def logical_lines(text):
    buf = ""
    for raw in text.splitlines():
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and (not s or s.startswith("#")):
            continue  # blank or comment line inside a continued instruction (Docker skips them)
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        if buf.strip():
            yield buf.strip()
        buf = ""
    if buf.strip():
        yield buf.strip()

stages = []  # [(name, base, [(INSTR, args)])]
platforms = {}  # stage index -> its FROM --platform value
for line in logical_lines(open(dockerfile).read()):
    instr, _, args = line.partition(" ")
    instr = instr.upper(); args = args.strip()
    if instr == "FROM":
        words = args.split()
        for w in words:
            if w.startswith("--platform="):
                platforms[len(stages)] = w.split("=", 1)[1]
        words = [w for w in words if not w.startswith("--platform")]
        name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
        stages.append((name, words[0], []))
    elif stages:
        stages[-1][2].append((instr, args))
    elif instr not in ("ARG",):
        problems.append(f"{instr} before the first FROM")

if len(stages) < 2:
    problems.append("expected a multi-stage build (build stage + final stage)")
    stages = stages + [(None, "", [])] * (2 - len(stages))
final_name, final_base, final = stages[-1]
if final_base != "scratch":
    problems.append(f"final stage is FROM {final_base!r}, expected scratch")
if len(stages) - 1 in platforms:
    problems.append("final stage has FROM --platform: scratch must follow the target platform")

def kv_pairs(args):
    words = shlex.split(args)
    if len(words) == 2 and "=" not in words[0]:
        return [(words[0], words[1])]  # legacy `ENV key value`
    return [tuple(w.split("=", 1)) for w in words]

def exec_form(args, what):
    a = args
    if what == "HEALTHCHECK":
        m = re.search(r"\bCMD\s+(\[.*\])\s*$", args)
        if not m:
            problems.append("HEALTHCHECK must be `CMD [...]` in exec form (there is no shell)")
            return []
        a = m.group(1)
    try:
        v = json.loads(a)
        assert isinstance(v, list) and v and all(isinstance(x, str) for x in v)
        return v
    except Exception:
        problems.append(f"{what} must be in exec (JSON array) form: there is no shell")
        return []

found = {}
copies, envs, labels, args_ = [], [], {}, {}
for instr, a in final:
    if instr in ("RUN", "ADD", "SHELL", "VOLUME", "ONBUILD"):
        problems.append(f"final stage has {instr}: nothing can run in scratch, and nothing is writable")
    elif instr == "COPY":
        copies.append(a.split())
    elif instr == "ENV":
        envs += kv_pairs(a)
    elif instr == "LABEL":
        labels.update(dict(kv_pairs(a)))
    elif instr == "ARG":
        k, _, v = a.partition("=")
        args_[k] = v.strip('"')
    else:
        found.setdefault(instr, []).append(a)

dest = "/agent-loop-proxy"
build_stage_name = None
if len(copies) != 1:
    problems.append(f"final stage must hold exactly one COPY (the binary), found {len(copies)}")
else:
    c = copies[0]
    frm = [w for w in c if w.startswith("--from=")]
    plain = [w for w in c if not w.startswith("--")]
    if not frm or len(plain) != 2:
        problems.append("COPY must be `COPY --from=<build stage> <binary> <dest>`")
    else:
        build_stage_name = frm[0].split("=", 1)[1]
        if not plain[0].endswith("/agent-loop-proxy"):
            problems.append(f"COPY source {plain[0]} is not the agent-loop-proxy binary")
        dest = plain[1]
        if not dest.startswith("/"):
            problems.append("COPY destination must be absolute")

build = [(i, s) for i, s in enumerate(stages[:-1]) if s[0] == build_stage_name]
build_instrs = build[0][1][2] if build else []
if not build:
    problems.append(f"no stage named {build_stage_name!r} to copy from")
elif platforms.get(build[0][0]) not in ("$BUILDPLATFORM", "${BUILDPLATFORM}"):
    problems.append("build stage must be FROM --platform=$BUILDPLATFORM (it cross-compiles for "
                    "TARGETARCH; without it an arm64 image builds under emulation)")
rustflags_env = any(i == "ENV" and "RUSTFLAGS" in a and "target-feature=+crt-static" in a for i, a in build_instrs)

# The target: ARG TARGETARCH, the mapping script copied in and run (install +
# env written to a file), and every `cargo build` sourcing that file and building
# --target "$TARGET_TRIPLE". A triple written into the Dockerfile is an error: the
# image would be that arch whatever --platform says.
mapping_dest, env_file, mapping_runs = None, None, False
args_before_mapping = set()
for i, a in build_instrs:
    if i == "ARG":
        args_before_mapping.add(a.split("=", 1)[0])
    elif i == "COPY":
        w = [x for x in a.split() if not x.startswith("--")]
        if len(w) == 2 and w[0] == target_env:
            mapping_dest = w[1]
    elif i == "RUN" and mapping_dest and mapping_dest.rsplit("/", 1)[-1] in a:
        name = re.escape(mapping_dest.rsplit("/", 1)[-1])
        m = re.search(name + r"\s+env\s*>\s*(\S+)", a)
        if re.search(name + r"\s+install\b", a) and m:
            env_file = m.group(1)
            mapping_runs = "TARGETARCH" in args_before_mapping
        break
if not mapping_dest:
    problems.append(f"build stage does not COPY {target_env} (the TARGETARCH mapping)")
elif not env_file:
    problems.append(f"build stage does not RUN {mapping_dest} `install` and `env >FILE`")
elif not mapping_runs:
    problems.append(f"build stage runs {mapping_dest} before `ARG TARGETARCH` (it would see no TARGETARCH)")
for i, a in build_instrs:
    if i == "RUN" and re.search(r"(x86_64|aarch64)-unknown-linux-\w+", a):
        problems.append(f"build stage hard-codes a target triple: {a[:70]}...")
builds = [a for i, a in build_instrs if i == "RUN" and "cargo build" in a]
if not builds:
    problems.append("build stage has no `cargo build`")
target_flags = [f"--target {q}$TARGET_TRIPLE{q}" for q in ('"', "")] + \
               [f"--target {q}${{TARGET_TRIPLE}}{q}" for q in ('"', "")]
for a in builds:
    if env_file and not re.search(r"(^|&&|;)\s*(\.|source)\s+" + re.escape(env_file) + r"\s*(&&|;)",
                                  a.split("cargo build", 1)[0]):
        problems.append(f"build stage `cargo build` runs without sourcing {env_file} first")
    for cmd in re.findall(r"cargo build[^&;|]*", a):
        for flag in ("--release", "--locked"):
            if flag not in cmd:
                problems.append(f"build stage `{cmd.strip()}` lacks {flag} (container-check builds with it)")
        if not any(t in cmd for t in target_flags):
            problems.append(f"build stage `{cmd.strip()}` lacks --target \"$TARGET_TRIPLE\" (from {target_env})")
        if not (rustflags_env or "target-feature=+crt-static" in a):
            problems.append("build stage does not set RUSTFLAGS='-C target-feature=+crt-static'")
# The binary's own checks: static and for the target's machine, whatever the arch
# (container-check can only run the binary for this machine's arch, and the other
# arch's only where it has the cross toolchain).
if builds:
    last = builds[-1]
    for what, needle in (("an ELF interpreter check (readelf, INTERP)", "INTERP"),
                         ("a needed-libraries check (readelf, NEEDED)", "NEEDED"),
                         ("a machine check (readelf, $TARGET_ELF_MACHINE)", "$TARGET_ELF_MACHINE")):
        if needle not in last or "readelf" not in last:
            problems.append(f"build stage's final `cargo build` RUN lacks {what}")

user = found.get("USER", [""])[-1]
m = re.fullmatch(r"(\d+):(\d+)", user)
if not m:
    problems.append(f"USER must be numeric uid:gid (no /etc/passwd in scratch), found {user!r}")
    uid, gid = "65532", "65532"
else:
    uid, gid = m.groups()
    if uid == "0" or gid == "0":
        problems.append("USER must not be root")

env = dict(envs)
if env.get("LISTEN_ADDR") != "0.0.0.0":
    problems.append("ENV LISTEN_ADDR=0.0.0.0 missing (else the published port reaches nothing)")
expose = " ".join(found.get("EXPOSE", [])).split()
port = env.get("LISTEN_PORT", "18080")
if port not in [e.split("/")[0] for e in expose]:
    problems.append(f"EXPOSE {port} missing")
if found.get("STOPSIGNAL", [""])[-1] != "SIGTERM":
    problems.append("STOPSIGNAL SIGTERM missing")
hc = exec_form(found.get("HEALTHCHECK", ["NONE"])[-1], "HEALTHCHECK")
if hc and hc != [dest, "healthcheck"]:
    problems.append(f"HEALTHCHECK runs {hc}, expected {[dest, 'healthcheck']}")
ep = exec_form(found.get("ENTRYPOINT", ["?"])[-1], "ENTRYPOINT")
if ep and ep != [dest]:
    problems.append(f"ENTRYPOINT is {ep}, expected {[dest]}")
if found.get("CMD"):
    problems.append("final stage has CMD: the proxy takes no arguments")

cargo_version = None
in_pkg = False
for line in open(cargo_toml):
    s = line.strip()
    if s.startswith("["):
        in_pkg = s == "[package]"
    elif in_pkg and (mm := re.match(r'version\s*=\s*"([^"]+)"', s)):
        cargo_version = mm.group(1)
for key in ("source", "version", "description"):
    if f"org.opencontainers.image.{key}" not in labels:
        problems.append(f"LABEL org.opencontainers.image.{key} missing")
version_label = labels.get("org.opencontainers.image.version", "")
version = re.sub(r"\$\{?(\w+)\}?", lambda g: args_.get(g.group(1), ""), version_label)
if version != cargo_version:
    problems.append(f"image version label resolves to {version!r}, Cargo.toml says {cargo_version!r}")

# The dependency-cache layer: the COPYs before the first `cargo build` and the
# commands that create placeholder sources before it, so that container-check can
# replay them and ask cargo whether the placeholders satisfy Cargo.toml.
# COPYs outside the WORKDIR (the mapping script) are not part of the crate; nor is
# sourcing the target settings, which container-check makes for itself.
layer_copies, layer_prep, workdir = [], "", "/"
for i, a in build_instrs:
    if i == "WORKDIR":
        workdir = a.rstrip("/") + "/"
    elif i == "COPY":
        w = [x for x in a.split() if not x.startswith("--")]
        if w and (not w[-1].startswith("/") or w[-1].startswith(workdir)):
            layer_copies += w[:-1]
    elif i == "RUN" and "cargo build" in a:
        prep = a.split("cargo build", 1)[0]
        steps = [c.strip() for c in prep.split("&&")]
        steps = [c for c in steps if c and not re.fullmatch(r"(\.|source)\s+\S+", c)]
        if "." not in layer_copies and steps:
            layer_prep = " && ".join(steps)
        break
if "." in layer_copies:
    layer_copies = []

ignored = set()
for line in open(dockerignore):
    s = line.strip()
    if s and not s.startswith("#"):
        ignored.add(s.strip("/"))
for must in ("target", "fuzz/target", ".git"):
    if must not in ignored and f"**/{must}" not in ignored:
        problems.append(f".dockerignore does not exclude {must}")

with open(out, "w") as f:
    q = shlex.quote
    f.write(f"df_uid={q(uid)}\ndf_gid={q(gid)}\ndf_dest={q(dest)}\n")
    f.write("df_env=(" + " ".join(q(f"{k}={v}") for k, v in envs) + ")\n")
    f.write("df_healthcheck=(" + " ".join(q(x) for x in (hc or [dest, "healthcheck"])) + ")\n")
    f.write("df_entrypoint=(" + " ".join(q(x) for x in (ep or [dest])) + ")\n")
    f.write(f"df_version={q(version)}\n")
    f.write("df_layer_copies=(" + " ".join(q(x) for x in layer_copies) + ")\n")
    f.write(f"df_layer_prep={q(layer_prep)}\n")
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
