//! The processes under test (the proxy, nginx, HAProxy) and what the bench reads about them from
//! /proc:
//! CPU time, resident memory (current and peak), open descriptors, children. Also CPU pinning
//! and the descriptor limit.

use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on a process under test becoming ready.
const STARTUP_LIMIT: Duration = Duration::from_secs(15);
/// Bound on a process under test exiting after SIGTERM, before SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn cpu_set(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks `cpu` against its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Pins the calling thread (and the threads and processes it creates later) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let set = cpu_set(cpu);
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises RLIMIT_NOFILE to at least `wanted` if allowed (the hard limit too when root), and
/// returns the soft limit in force afterwards. Children inherit it.
pub fn raise_nofile(wanted: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit read and write one plain struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur >= wanted {
            return lim.rlim_cur;
        }
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: lim.rlim_max.max(wanted),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return wanted;
        }
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return lim.rlim_max;
        }
        lim.rlim_cur
    }
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Fields of /proc/<pid>/stat after the command name, so index 0 is field 3 (`state`).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// CPU time of a process: utime+stime from /proc/<pid>/stat (fields 14 and 15, all threads,
/// living and dead, but in clock ticks, 10 ms at 100 Hz), refined by the per-thread run time in
/// nanoseconds from /proc/<pid>/task/*/schedstat when that agrees with it within two ticks.
fn cpu_ns_one(pid: u32) -> u64 {
    let tick_ns = 1_000_000_000 / clock_ticks_per_sec();
    let ticks_ns = stat_fields(pid)
        .and_then(|f| Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?))
        .unwrap_or(0)
        * tick_ns;
    let mut sched_ns = 0u64;
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let path = task.path().join("schedstat");
            if let Some(ns) = fs::read_to_string(path)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            {
                sched_ns += ns;
            }
        }
    }
    // A thread that exited took its schedstat with it; then only the ticks are whole.
    if sched_ns + 2 * tick_ns >= ticks_ns && sched_ns > 0 {
        sched_ns
    } else {
        ticks_ns
    }
}

/// Busy time of all CPUs (user, nice, system, irq, softirq, steal) from /proc/stat, in ns.
pub fn machine_busy_ns() -> u64 {
    let tick_ns = 1_000_000_000 / clock_ticks_per_sec();
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum::<u64>();
    busy * tick_ns
}

/// CPU time of this bench process so far, in ns.
pub fn self_cpu_ns() -> u64 {
    cpu_ns_one(std::process::id())
}

/// A `Vm...:` line of /proc/<pid>/status, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// VmRSS of a process in KiB.
fn rss_kib_one(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Open descriptors of a process: the entries of /proc/<pid>/fd. `None` when that cannot be
/// listed: the proxy makes itself non-dumpable, so only root (CAP_SYS_PTRACE) may.
fn fd_count_one(pid: u32) -> Option<u64> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = stat_fields(child).and_then(|f| f.get(1)?.parse::<u32>().ok());
            if ppid == Some(pid) {
                out.push(child);
            }
        }
    }
    out
}

/// Sets up a child: pinned to `cpu`, sent `death_signal` if the bench dies.
fn child_setup(cmd: &mut Command, cpu: Option<usize>, death_signal: libc::c_int) {
    let set = cpu.map(cpu_set);
    // SAFETY: the closure runs between fork and exec and only makes two raw system calls
    // (async-signal-safe), touching only the cpu_set_t moved into it.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(set) = &set {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                death_signal as libc::c_ulong,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions; `pid` is a child this bench started.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A process under test: the proxy, nginx (master, with its worker as a measured child) or
/// HAProxy (one process).
pub struct Middle {
    pub addr: SocketAddr,
    /// The proxy's Unix socket, when it listens on one (`--proxy-unix`).
    pub unix: Option<PathBuf>,
    child: Child,
    /// Every process whose CPU time and memory count: the proxy, nginx's master and worker, or
    /// HAProxy.
    pids: Vec<u32>,
    /// Its stderr (the proxy's and HAProxy's log) or nginx's error log, for error messages.
    log: PathBuf,
    /// Where an anchor writes one line per forwarded request (see [`Middle::logged_requests`]).
    request_log: Option<RequestLog>,
    stopped: bool,
}

/// An anchor's per-request log: the file, and the text that marks a forwarded request's line
/// (`None`: every line is one).
struct RequestLog {
    path: PathBuf,
    marker: Option<&'static str>,
}

impl Middle {
    /// CPU time of all its processes so far, in nanoseconds.
    pub fn cpu_ns(&self) -> u64 {
        self.pids.iter().map(|&p| cpu_ns_one(p)).sum()
    }

    /// Resident memory of all its processes, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pids.iter().map(|&p| rss_kib_one(p)).sum()
    }

    /// Peak resident memory since start (VmHWM, kept by the kernel) of all its processes, in
    /// KiB: exact, however briefly the peak lasted.
    pub fn peak_rss_kib(&self) -> u64 {
        self.pids.iter().map(|&p| status_kib(p, "VmHWM:")).sum()
    }

    /// Open descriptors of all its processes (`None` without the right to list them).
    pub fn fd_count(&self) -> Option<u64> {
        self.pids.iter().map(|&p| fd_count_one(p)).sum()
    }

    /// Whether every measured process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last line of the proxy's log (the proxy's lines carry no secrets).
    pub fn last_log_line(&self) -> String {
        last_line(&self.log)
    }

    /// Lines an anchor (nginx, HAProxy) has written to its request log for requests it forwarded
    /// upstream; `None` for the proxy, whose log the bench does not parse. The bench compares
    /// this with the requests the upstream saw, so an anchor cannot be cheaper by not logging.
    pub fn logged_requests(&self) -> Option<usize> {
        let log = self.request_log.as_ref()?;
        let text = fs::read_to_string(&log.path).unwrap_or_default();
        Some(
            text.lines()
                .filter(|l| log.marker.map_or(!l.is_empty(), |m| l.contains(m)))
                .count(),
        )
    }

    /// SIGTERM, then SIGKILL after [`STOP_LIMIT`].
    pub async fn stop(mut self) {
        self.stop_inner().await;
    }

    async fn stop_inner(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_LIMIT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill_all();
    }

    fn kill_all(&mut self) {
        for &pid in self.pids.iter().skip(1) {
            if Path::new(&format!("/proc/{pid}")).exists() {
                signal(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Middle {
    fn drop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            self.kill_all();
        }
    }
}

fn last_line(path: &Path) -> String {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "(no output)".into())
}

/// How to start the proxy.
pub struct ProxySpec<'a> {
    pub bin: &'a Path,
    /// A command the proxy runs under (valgrind, perf record, strace): `wrapper... bin`.
    pub wrapper: &'a [String],
    /// TARGET, e.g. `https://127.0.0.1:40123`.
    pub target: String,
    pub ca_file: Option<&'a Path>,
    /// Further settings (MAX_CONNECTIONS, ...).
    pub env: Vec<(&'static str, String)>,
    /// Settings from the command line (`--proxy-env`).
    pub extra_env: Vec<(&'a str, String)>,
    pub token: &'a str,
    /// Write a new token to its stdin this often (with TOKEN_UPDATES=stdin).
    pub rotate: Option<Duration>,
    /// Where its stderr goes.
    pub log: PathBuf,
    pub cpu: Option<usize>,
}

/// Starts the proxy with LISTEN_PORT=0, hands it the token on stdin and parses its startup line
/// (`proxy: listening on <ip>:<port>, target <TARGET>`).
pub async fn start_proxy(spec: ProxySpec<'_>) -> Result<Middle, String> {
    let log = fs::File::create(&spec.log).map_err(|e| format!("proxy log: {e}"))?;
    let mut cmd = match spec.wrapper.split_first() {
        None => Command::new(spec.bin),
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(spec.bin);
            c
        }
    };
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LISTEN_ADDR", "127.0.0.1")
        .env("LISTEN_PORT", "0")
        .env("TARGET", &spec.target)
        .env("SHUTDOWN_GRACE", "1s")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(ca) = spec.ca_file {
        cmd.env("TARGET_CA_FILE", ca);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    for (k, v) in &spec.extra_env {
        cmd.env(k, v);
    }
    child_setup(&mut cmd, spec.cpu, libc::SIGKILL);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", spec.bin.display()))?;
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        // The proxy may already have exited (a bad setting); that shows below.
        let _ = stdin.write_all(format!("{}\n", spec.token).as_bytes());
        if let Some(every) = spec.rotate {
            // A new token each period until the proxy's stdin closes (it exited).
            std::thread::spawn(move || {
                for n in 1u64.. {
                    std::thread::sleep(every);
                    // The bench's upstream accepts tokens with this prefix (wire.rs).
                    let line = format!("sk-ant-bench-rotated-{n:08}\n");
                    if stdin.write_all(line.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    }
    let mut middle = Middle {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        unix: None,
        child,
        pids: vec![pid],
        log: spec.log,
        request_log: None,
        stopped: false,
    };
    let deadline = Instant::now() + STARTUP_LIMIT;
    loop {
        let text = fs::read_to_string(&middle.log).unwrap_or_default();
        if let Some(addr) = text.lines().find_map(parse_startup_line) {
            middle.addr = addr;
            return Ok(middle);
        }
        let unix = text.lines().find_map(|l| {
            let rest = l.strip_prefix("proxy: listening on unix:")?;
            Some(PathBuf::from(rest.split(", target").next()?))
        });
        if unix.is_some() {
            middle.unix = unix;
            return Ok(middle);
        }
        if !middle.alive() {
            return Err(format!(
                "proxy exited before its startup line; last stderr line: {}",
                middle.last_log_line()
            ));
        }
        if Instant::now() > deadline {
            return Err("proxy printed no startup line in time".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn parse_startup_line(line: &str) -> Option<SocketAddr> {
    if line.starts_with('{') && line.contains("\"event\":\"startup\"") {
        // LOG_FORMAT=json
        return line
            .split("\"listen\":\"")
            .nth(1)?
            .split('"')
            .next()?
            .parse()
            .ok();
    }
    let rest = line.strip_prefix("proxy: listening on ")?;
    let addr = rest.split(", target").next()?;
    addr.trim().parse().ok()
}

/// Finds a binary: `name` on PATH, or in /usr/sbin or /usr/local/sbin (Debian installs nginx
/// and haproxy there, often not on a non-root PATH).
fn find_binary(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Finds an nginx binary: `nginx` on PATH, or /usr/sbin/nginx.
pub fn find_nginx() -> Option<PathBuf> {
    find_binary("nginx")
}

/// Finds a HAProxy binary: `haproxy` on PATH, or /usr/sbin/haproxy.
pub fn find_haproxy() -> Option<PathBuf> {
    find_binary("haproxy")
}

/// `nginx -v` output, e.g. `nginx/1.22.1`.
pub fn nginx_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .and_then(|s| s.strip_prefix("nginx version: ").map(str::to_string))
        .unwrap_or_else(|| "nginx".into())
}

/// `haproxy -v`'s version, e.g. `HAProxy 2.6.12-1+deb12u4` (from `HAProxy version
/// 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/`).
pub fn haproxy_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let first = text.lines().next()?.trim().to_string();
            let version = first
                .strip_prefix("HAProxy version ")?
                .split_whitespace()
                .next()?;
            Some(format!("HAProxy {version}"))
        })
        .unwrap_or_else(|| "HAProxy".into())
}

/// How to start an anchor (nginx or HAProxy).
pub struct AnchorSpec<'a> {
    pub bin: &'a Path,
    /// Its directory (created; config, logs and nginx's pid file go there).
    pub dir: PathBuf,
    pub upstream: SocketAddr,
    /// `Some(ca.pem)` for the TLS upstream.
    pub tls_ca: Option<&'a Path>,
    pub token: &'a str,
    /// Requests without `Authorization: Bearer <phantom>` get 401, like the proxy's PHANTOM_TOKEN.
    pub phantom: &'a str,
    /// Client connections it must be able to hold at once.
    pub connections: usize,
    pub cpu: Option<usize>,
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The nginx configuration equivalent to the proxy: one worker, unbuffered streaming both ways,
/// HTTP/1.1 with keepalive to the upstream, the token injected, the upstream verified.
fn nginx_conf(spec: &AnchorSpec<'_>, port: u16) -> String {
    let dir = spec.dir.display();
    // Each held stream takes two connections (client and upstream); below 1/16 free, nginx
    // starts closing idle ones, which include new connections still waiting for their request.
    let worker_connections = (3 * spec.connections + 1024).max(1024);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // As root, nginx would switch its worker to `nobody`; keep it able to read the temp dir.
    let user = if root { "user root;\n" } else { "" };
    let (scheme, tls) = match spec.tls_ca {
        None => ("http", String::new()),
        Some(ca) => (
            "https",
            format!(
                "            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {};
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
",
                ca.display()
            ),
        ),
    };
    format!(
        "{user}worker_processes 1;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections {worker_connections};
}}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    client_max_body_size 64m;
    keepalive_timeout 60s;
    keepalive_requests 1000;
    upstream backend {{
        server {upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        if ($http_authorization != \"Bearer {phantom}\") {{
            return 401;
        }}
        location / {{
            proxy_pass {scheme}://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Authorization \"Bearer {token}\";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
{tls}        }}
    }}
}}
",
        nofile = worker_connections + 64,
        upstream = spec.upstream,
        token = spec.token,
        phantom = spec.phantom,
    )
}

/// Writes nginx's config into its directory and starts it in the foreground
/// (`nginx -p <dir> -c <dir>/nginx.conf -g 'daemon off;'`); ready once its worker exists and
/// its port accepts.
pub async fn start_nginx(spec: AnchorSpec<'_>) -> Result<Middle, String> {
    fs::create_dir_all(&spec.dir).map_err(|e| format!("nginx dir: {e}"))?;
    let mut last_err = String::new();
    // The free port may be taken between probing and nginx's bind: retry a few times.
    for _ in 0..3 {
        let port = free_port().map_err(|e| format!("free port: {e}"))?;
        let conf = spec.dir.join("nginx.conf");
        fs::write(&conf, nginx_conf(&spec, port)).map_err(|e| format!("nginx.conf: {e}"))?;
        let stderr = fs::File::create(spec.dir.join("stderr.log"))
            .map_err(|e| format!("nginx stderr: {e}"))?;
        let mut cmd = Command::new(spec.bin);
        let mut prefix = spec.dir.clone().into_os_string();
        prefix.push("/");
        cmd.arg("-p")
            .arg(prefix)
            .arg("-e")
            .arg(spec.dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .arg("-g")
            .arg("daemon off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // SIGTERM, not SIGKILL: nginx's master then stops its worker too.
        child_setup(&mut cmd, spec.cpu, libc::SIGTERM);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start nginx: {e}"))?;
        let pid = child.id();
        let mut middle = Middle {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            unix: None,
            child,
            pids: vec![pid],
            log: spec.dir.join("error.log"),
            request_log: Some(RequestLog {
                path: spec.dir.join("access.log"),
                marker: None,
            }),
            stopped: false,
        };
        // Ready once its worker exists (whose CPU and memory count too) and its port accepts.
        match await_ready(&mut middle, "nginx", true).await? {
            Some(exited) => last_err = exited,
            None => return Ok(middle),
        }
    }
    Err(last_err)
}

/// Waits until an anchor's port accepts (and, with `workers`, its master has a worker, which
/// joins `middle.pids`). `Ok(Some(why))`: it exited, perhaps over a port taken meanwhile, and
/// may be started again; `Err`: not ready in time.
async fn await_ready(
    middle: &mut Middle,
    name: &str,
    workers: bool,
) -> Result<Option<String>, String> {
    let deadline = Instant::now() + STARTUP_LIMIT;
    loop {
        if !middle.alive() {
            return Ok(Some(format!("{name} exited: {}", middle.last_log_line())));
        }
        let found = if workers {
            children_of(middle.pids[0])
        } else {
            Vec::new()
        };
        let started = !workers || !found.is_empty();
        if started && tokio::net::TcpStream::connect(middle.addr).await.is_ok() {
            middle.pids.extend(found);
            return Ok(None);
        }
        if Instant::now() > deadline {
            return Err(format!("{name} not ready in time"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Marks HAProxy's log line for a request it forwarded upstream (`option httplog` names the
/// backend and server: `upstream/fixture`); its own answers (401, /health) say `<NOSRV>`.
const HAPROXY_FORWARDED: &str = " upstream/fixture ";

/// The HAProxy configuration for the same job as [`nginx_conf`]'s: one process and one thread,
/// HTTP/1.1 with connection reuse to the upstream, nothing buffered, the phantom token checked
/// and the real one set, the upstream verified over TLS, a log line per request.
fn haproxy_conf(spec: &AnchorSpec<'_>, port: u16) -> String {
    // maxconn counts client-side connections only (upstream ones count towards the descriptor
    // limit HAProxy derives from it, about twice maxconn, and raises itself): each held stream
    // is one, plus room for the warm-up and reconnects.
    let maxconn = (spec.connections + 1024).max(4096);
    let tls = match spec.tls_ca {
        None => String::new(),
        // The fixture's certificate names `localhost` (and 127.0.0.1); like nginx's
        // proxy_ssl_name, send that name and verify the certificate against it.
        Some(ca) => format!(
            " ssl verify required ca-file {} sni str(localhost) verifyhost localhost",
            ca.display()
        ),
    };
    format!(
        "# agent-loop-proxy relay bench: HAProxy as an anchor, configured for the proxy's job.
global
    # One process with one thread: started with -db (foreground, no daemon, no master-worker),
    # stopped with SIGTERM.
    nbthread 1
    maxconn {maxconn}
    # One line per request (option httplog) on stderr, which the bench points at a regular
    # file: a write to a file never fails with EAGAIN, so no line is dropped, and the bench
    # counts them against the requests the upstream saw.
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    # A connection that sends nothing (the bench's readiness probe) is not a request.
    option dontlognull
    # Send what arrives at once. Without this HAProxy writes a response that is not finished
    # yet with MSG_MORE, and the kernel holds a part-filled segment for up to 200 ms: SSE events
    # (and response heads) would wait there. nginx with proxy_buffering off and the proxy write
    # each piece as it comes.
    option http-no-delay
    maxconn {maxconn}
    timeout connect 10s
    # Held and paced SSE streams are quiet for long stretches: 600 s either side, as nginx's
    # proxy_read_timeout / proxy_send_timeout.
    timeout client 600s
    timeout server 600s
    timeout http-request 60s
    timeout http-keep-alive 60s

frontend relay
    bind 127.0.0.1:{port}
    # Answered locally, before the token check, as the proxy answers GET/HEAD /health.
    http-request return status 200 content-type \"text/plain; charset=utf-8\" hdr Cache-Control no-store string \"agent-loop-proxy ok\" if {{ path /health }} {{ method GET HEAD }}
    # The phantom token the sandbox holds; anything else is refused, like nginx's `if`.
    http-request return status 401 unless {{ req.fhdr(authorization) -m str \"Bearer {phantom}\" }}
    # nginx's client_max_body_size 64m, for declared lengths (HAProxy streams bodies and does
    # not count chunked ones).
    http-request deny deny_status 413 if {{ req.hdr_val(content-length) gt 67108864 }}
    http-request set-header Authorization \"Bearer {token}\"
    # 1000 requests per client connection, as nginx's keepalive_requests and the proxy's
    # MAX_REQUESTS_PER_CONNECTION: HAProxy has no such setting, so a session variable counts
    # the connection's requests and the 1000th answer says Connection: close, which makes
    # HAProxy close the connection after it.
    http-request set-var(sess.requests) var(sess.requests,0),add(1)
    http-after-response set-header Connection close if {{ var(sess.requests) -m int ge 1000 }}
    default_backend upstream

backend upstream
    # `always`: any idle upstream connection serves any request, including a client
    # connection's first, as nginx's `keepalive 32` pool and the proxy's POOL_MAX_IDLE do.
    # `safe` would send each new client connection's first request over a fresh connection (or
    # one already reused), so every held stream and every reconnect would pay an upstream
    # connect and, over TLS, a handshake that nginx and the proxy do not. The one upstream and
    # the one credential make sharing connections between clients harmless here.
    http-reuse always
    # Up to 32 idle connections kept for 60 s, as nginx's keepalive 32 / keepalive_timeout.
    server fixture {upstream}{tls} pool-max-conn 32 pool-purge-delay 60s
",
        upstream = spec.upstream,
        token = spec.token,
        phantom = spec.phantom,
    )
}

/// Writes HAProxy's config into its directory and starts it in the foreground
/// (`haproxy -db -f <dir>/haproxy.cfg`, stderr, its log, to `<dir>/haproxy.log`); ready once
/// its port accepts.
pub async fn start_haproxy(spec: AnchorSpec<'_>) -> Result<Middle, String> {
    fs::create_dir_all(&spec.dir).map_err(|e| format!("haproxy dir: {e}"))?;
    let mut last_err = String::new();
    // The free port may be taken between probing and HAProxy's bind: retry a few times.
    for _ in 0..3 {
        let port = free_port().map_err(|e| format!("free port: {e}"))?;
        let conf = spec.dir.join("haproxy.cfg");
        fs::write(&conf, haproxy_conf(&spec, port)).map_err(|e| format!("haproxy.cfg: {e}"))?;
        let log = spec.dir.join("haproxy.log");
        let stderr = fs::File::create(&log).map_err(|e| format!("haproxy log: {e}"))?;
        let mut cmd = Command::new(spec.bin);
        cmd.arg("-db")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // SIGTERM: HAProxy's hard stop, closing every connection at once.
        child_setup(&mut cmd, spec.cpu, libc::SIGTERM);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start haproxy: {e}"))?;
        let pid = child.id();
        let mut middle = Middle {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            unix: None,
            child,
            pids: vec![pid],
            log: log.clone(),
            request_log: Some(RequestLog {
                path: log,
                marker: Some(HAPROXY_FORWARDED),
            }),
            stopped: false,
        };
        match await_ready(&mut middle, "haproxy", false).await? {
            Some(exited) => last_err = exited,
            None => return Ok(middle),
        }
    }
    Err(last_err)
}

/// `<bin> --version` (which reads no stdin), waited for at most a few seconds.
pub fn version_of(bin: &Path) -> String {
    let child = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut text = String::new();
    if let Ok(mut child) = child {
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        if let Some(mut out) = child.stdout.take() {
            let _ = io::Read::read_to_string(&mut out, &mut text);
        }
    }
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        "agent-loop-proxy (no --version output)".into()
    } else {
        first.to_string()
    }
}
