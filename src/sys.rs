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

/// Whether the process is currently dumpable (for tests and the startup warning).
pub fn is_dumpable() -> bool {
    // SAFETY: prctl(PR_GET_DUMPABLE) takes integer arguments only.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) != 0 }
}

/// Best-effort `mlock` of a buffer's pages so the token is never swapped out.
pub fn lock_memory(buf: &[u8]) -> bool {
    if buf.is_empty() {
        return false;
    }
    // SAFETY: the range is a live allocation we borrow for the duration of the call.
    unsafe { libc::mlock(buf.as_ptr().cast(), buf.len()) == 0 }
}

/// Undoes [`lock_memory`].
pub fn unlock_memory(buf: &[u8]) {
    if !buf.is_empty() {
        // SAFETY: as for lock_memory.
        unsafe { libc::munlock(buf.as_ptr().cast(), buf.len()) };
    }
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
