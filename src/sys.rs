//! The few operating-system calls std does not offer. The only `unsafe` in the crate lives
//! here, each block one libc call on arguments it owns.

/// Makes the process non-dumpable and disables core files, before the token exists.
///
/// Non-dumpable: other processes of the same uid cannot ptrace it or read its memory
/// (`/proc/<pid>/mem`), and its `/proc/<pid>/` files belong to root. Returns false if either
/// call failed (the caller warns; the proxy still runs).
pub fn harden_process() -> bool {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid rlimit struct we own.
    let core_ok = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } == 0;
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integer arguments only.
    let dump_ok = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0;
    core_ok && dump_ok
}

/// A secret's own memory: a zeroed, page-aligned allocation of whole pages, locked in RAM
/// when created (best effort), and on drop wiped, unlocked and freed, in that order.
///
/// Its pages hold nothing else. `mlock` does not count nested locks per page, so a secret
/// that shared a page with another would unlock it when dropped, or stay locked with it;
/// with pages of its own, each lock is undone exactly once, and a replaced token gives its
/// pages (and its share of `RLIMIT_MEMLOCK`) back.
pub struct SecretPages {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
    /// The bytes in use, from the start; the rest of the pages stay zero.
    len: usize,
    locked: bool,
}

// SAFETY: the allocation is owned exclusively by this value (no aliasing, no interior
// mutability); moving it to or sharing `&` with another thread is as safe as for a Vec<u8>.
unsafe impl Send for SecretPages {}
// SAFETY: as above; `&SecretPages` only reads.
unsafe impl Sync for SecretPages {}

impl SecretPages {
    /// `len` zero bytes in pages of their own (at least one page), locked if the OS agrees.
    pub fn new(len: usize) -> SecretPages {
        let page = page_size();
        let size = len.max(1).div_ceil(page) * page;
        let layout = std::alloc::Layout::from_size_align(size, page)
            .unwrap_or_else(|_| std::alloc::handle_alloc_error(std::alloc::Layout::new::<u8>()));
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: the range is the allocation just made, owned by us.
        let locked = unsafe { libc::mlock(ptr.as_ptr().cast(), size) } == 0;
        SecretPages {
            ptr,
            layout,
            len,
            locked,
        }
    }

    /// The bytes in use.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len <= size`, the memory is initialised (zeroed at allocation) and lives
        // as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes in use, to write the secret in once.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for as_slice, and `&mut self` is the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Whether the OS agreed to keep these pages out of swap.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// The start of the pages (tests check the alignment).
    #[cfg(test)]
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }
}

impl Drop for SecretPages {
    fn drop(&mut self) {
        let size = self.layout.size();
        // SAFETY: the whole allocation, owned by us until the dealloc below.
        let all = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), size) };
        zeroize::Zeroize::zeroize(all);
        if self.locked {
            // SAFETY: the range we locked in `new`.
            unsafe { libc::munlock(self.ptr.as_ptr().cast(), size) };
        }
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// A secret in pages of its own, with a substring searcher over part of it, built once: the
/// response scrubber's searcher for a token, without a copy of the token outside its pages.
pub struct SearchableSecret {
    /// Declared before `pages`, so it is dropped first: it points into them.
    finder: memchr::memmem::Finder<'static>,
    pages: SecretPages,
}

impl SearchableSecret {
    /// A searcher for `pages[needle]` (non-empty), kept with the pages.
    pub fn new(pages: SecretPages, needle: std::ops::Range<usize>) -> SearchableSecret {
        let bytes = &pages.as_slice()[needle];
        // SAFETY: `bytes` lies in the pages' heap allocation, which does not move when `pages`
        // moves, is never written again (this type gives no mutable access), and is freed
        // only when `pages` drops, after `finder` (field order). `finder()` lends the
        // searcher for the borrow of `self` only, so no copy of it outlives the pages.
        let bytes: &'static [u8] =
            unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) };
        SearchableSecret {
            finder: memchr::memmem::Finder::new(bytes),
            pages,
        }
    }

    /// The secret's bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.pages.as_slice()
    }

    /// The searcher for the part given at creation.
    pub fn finder(&self) -> &memchr::memmem::Finder<'_> {
        &self.finder
    }

    /// Whether the OS agreed to keep the pages out of swap.
    pub fn is_locked(&self) -> bool {
        self.pages.is_locked()
    }

    /// The start of the pages (tests check the alignment).
    #[cfg(test)]
    pub fn addr(&self) -> usize {
        self.pages.addr()
    }
}

/// The OS's page size (4096 where it cannot be read).
pub fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf takes an integer argument only.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n)
            .ok()
            .filter(|&n| n.is_power_of_two())
            .unwrap_or(4096)
    })
}

/// Raises a listening socket's accept queue to `backlog` (std listens with 128, which a burst
/// of connections overflows: the kernel then drops SYNs and clients retry a second later).
/// Linux applies a second `listen` to a listening socket as a new backlog, capped at
/// `net.core.somaxconn`. Returns false if the call failed (the old queue stays).
pub fn set_listen_backlog(fd: std::os::fd::BorrowedFd<'_>, backlog: i32) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: listen on a socket descriptor we borrow for the duration of the call.
    unsafe { libc::listen(fd.as_raw_fd(), backlog) == 0 }
}

/// Sends SIGKILL to every process of group `pgid` (a token command and whatever it started):
/// a timed-out helper leaves nothing behind. A `pgid` of 0 or below is refused (it would name
/// the proxy's own group, or every process it may signal).
pub fn kill_group(pgid: i32) -> bool {
    if pgid <= 0 {
        return false;
    }
    // SAFETY: kill(2) on a negative pid signals that process group; no memory is involved.
    unsafe { libc::kill(-pgid, libc::SIGKILL) == 0 }
}

/// Closes standard input for good, after the token line was read: nothing can later be read
/// from the launcher's pipe, and the pipe's writer sees it closed. fd 0 is pointed at
/// /dev/null when it exists, so a later socket cannot be mistaken for stdin.
pub fn close_stdin() {
    // SAFETY: open/dup2/close on integer fds; a failure leaves fd 0 closed or unchanged.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::close(null);
        } else {
            libc::close(0);
        }
    }
}

/// A terminal whose echo was turned off, restored to its earlier settings when dropped: a
/// token typed at the prompt is not shown on the screen (nor left in a scrollback).
pub struct EchoOff {
    fd: std::os::fd::RawFd,
    saved: libc::termios,
}

impl EchoOff {
    /// Turns echo off on the terminal `fd` (keeping the echo of the newline, so the line
    /// still ends); `None` if `fd` is not a terminal or its settings cannot be changed.
    pub fn new(fd: std::os::fd::BorrowedFd<'_>) -> Option<EchoOff> {
        use std::os::fd::AsRawFd;
        let fd = fd.as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it for a descriptor we borrow.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `saved` is a valid termios we own.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: tcsetattr reads a valid termios we own.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
            return None;
        }
        Some(EchoOff { fd, saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: tcsetattr reads the termios saved from this descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Runs `f` (a bind) with the file-creation mask `mask`, then restores the previous one: a
/// socket file is created with `0777 & !mask` (unix(7)), so the mask alone gives it its
/// mode, from its first instant and with no chmod after. The mask is process-wide; the
/// proxy binds before it starts any thread that creates files.
pub fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask takes and returns an integer; it cannot fail.
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    let out = f();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    out
}

/// Makes each open descriptor of `first..first + count` close-on-exec, and does nothing else
/// to it (no close, no other flag). A service manager's `LISTEN_FDS` (sd_listen_fds(3))
/// passes descriptors from 3 on without close-on-exec; when `LISTEN_PID` names another
/// process they are not served, yet would otherwise reach every child (a token command and
/// whatever it starts). The range stops at the open-file limit (`_SC_OPEN_MAX`; no
/// descriptor is numbered past it), so an absurd count costs no more than that many calls.
pub fn set_cloexec_range(first: i32, count: u32) {
    // SAFETY: sysconf takes an integer argument only.
    let limit = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    let limit = match limit {
        ..=0 => 1024,
        n => i32::try_from(n).unwrap_or(i32::MAX),
    };
    let count = i32::try_from(count).unwrap_or(i32::MAX);
    for fd in first.max(0)..first.saturating_add(count).min(limit) {
        // SAFETY: fcntl on an integer descriptor; F_GETFD only reads its flags, and fails
        // with EBADF on one that is not open.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
            // SAFETY: as above; F_SETFD sets the close-on-exec flag and nothing else.
            unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        }
    }
}

/// A listening socket passed by a service manager, checked and adopted.
pub enum Adopted {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Adopts descriptor `fd` (sd_listen_fds(3): passed open, from 3 on) as a listening socket:
/// it must be open, a stream socket (`SO_TYPE`), listening (`SO_ACCEPTCONN`), of the
/// Internet or Unix domain (`SO_DOMAIN`), socket(7). It is made close-on-exec, so a token
/// command never inherits it. `Err` says which check failed; the fd is then left alone.
pub fn adopt_listener(fd: i32) -> Result<Adopted, &'static str> {
    use std::os::fd::FromRawFd;
    if fd < 3 {
        return Err("is not a passed descriptor (3 or above)");
    }
    // SAFETY: fcntl on an integer descriptor; F_GETFD only reads its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err("names no open descriptor");
    }
    let opt = |name: libc::c_int| -> Option<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into the int we own.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(v)
    };
    if opt(libc::SO_TYPE) != Some(libc::SOCK_STREAM) {
        return Err("is not a stream socket");
    }
    if opt(libc::SO_ACCEPTCONN) != Some(1) {
        return Err("is not a listening socket");
    }
    let domain = opt(libc::SO_DOMAIN);
    // SAFETY: as above; F_SETFD sets the close-on-exec flag on a descriptor we now own.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err("cannot be made close-on-exec");
    }
    match domain {
        // SAFETY: the descriptor is open, a listening stream socket of this domain, and
        // handed to us by the service manager; nothing else in the process owns it.
        Some(libc::AF_INET | libc::AF_INET6) => Ok(Adopted::Tcp(unsafe {
            std::net::TcpListener::from_raw_fd(fd)
        })),
        // SAFETY: as above.
        Some(libc::AF_UNIX) => Ok(Adopted::Unix(unsafe {
            std::os::unix::net::UnixListener::from_raw_fd(fd)
        })),
        _ => Err("is neither a TCP nor a Unix socket"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn cloexec(fd: i32) -> bool {
        // SAFETY: F_GETFD only reads the flags of a descriptor the test owns.
        unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    #[test]
    fn passed_descriptors_become_close_on_exec_and_stay_open() {
        let file = std::fs::File::open("/dev/null").expect("open");
        let fd = file.as_raw_fd();
        // SAFETY: clears the flag std set on a descriptor the test owns.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
        assert!(!cloexec(fd));
        set_cloexec_range(fd, 1);
        assert!(cloexec(fd));
        // Still open: the flags can be read.
        // SAFETY: as above.
        assert!(unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
        // A range past every open descriptor, and an absurd count, are harmless.
        set_cloexec_range(fd + 1000, u32::MAX);
    }
}
