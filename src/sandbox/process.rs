//! The system calls the sandbox needs and the standard library does not offer: limits and identity set in
//! the child between `fork` and `exec`, files handed to bubblewrap as inherited memory files, waiting with
//! a timeout on a pidfd, reaping with `wait4` for the CPU time, killing a process group, finding a run's
//! processes by user id, and lock files that claim user ids. The only `unsafe` code in Troupe lives here; each block says why it is sound.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

/// Limits and identity applied to the jail's first process (and so to everything it starts).
#[derive(Debug, Clone, Copy)]
pub struct ChildSetup {
    /// RLIMIT_CPU soft limit in seconds (hard: one more).
    pub cpu_seconds: u64,
    /// RLIMIT_AS in bytes.
    pub memory_bytes: u64,
    /// RLIMIT_NPROC.
    pub max_processes: u64,
    /// RLIMIT_FSIZE in bytes.
    pub max_file_bytes: u64,
    /// RLIMIT_NOFILE.
    pub max_open_files: u64,
    /// Run as this user and group id (only when Troupe is root).
    pub uid: Option<u32>,
}

/// Arranges for `command`'s child to get `setup`, a session and process group of its own, no new
/// privileges, death when Troupe dies, and the inherited `fds` (their close-on-exec flag cleared).
pub fn prepare(command: &mut Command, setup: ChildSetup, fds: Vec<RawFd>) {
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe functions
    // (setsid, prctl, setrlimit, fcntl, setgroups, setgid, setuid); it allocates nothing (the vector was
    // moved in before the fork) and touches no lock.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_NO_NEW_PRIVS,
                1 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            let limits = [
                (libc::RLIMIT_CPU, setup.cpu_seconds, setup.cpu_seconds + 1),
                (libc::RLIMIT_AS, setup.memory_bytes, setup.memory_bytes),
                (libc::RLIMIT_NPROC, setup.max_processes, setup.max_processes),
                (
                    libc::RLIMIT_FSIZE,
                    setup.max_file_bytes,
                    setup.max_file_bytes,
                ),
                (
                    libc::RLIMIT_NOFILE,
                    setup.max_open_files,
                    setup.max_open_files,
                ),
                (libc::RLIMIT_CORE, 0, 0),
            ];
            for (resource, soft, hard) in limits {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(resource, &limit) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for &fd in &fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(uid) = setup.uid {
                if libc::setgroups(0, std::ptr::null()) < 0
                    || libc::setgid(uid) < 0
                    || libc::setuid(uid) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A file in memory holding `bytes`, positioned at its start, closed on exec unless handed on by
/// [`prepare`].
pub fn memory_file(name: &str, bytes: &[u8]) -> io::Result<File> {
    let name = std::ffi::CString::new(name.replace('\0', "_"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `name` is a valid NUL-terminated string; the returned descriptor is checked and then owned.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(bytes)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// An executable file in memory holding `bytes`, open read-only (no writable descriptor is left, so exec
/// never meets "text file busy") and closed on exec; run it as `/proc/self/fd/<fd>`.
pub fn executable_memory_file(name: &str, bytes: &[u8]) -> io::Result<File> {
    let writable = memory_file(name, bytes)?;
    File::open(format!("/proc/self/fd/{}", writable.as_raw_fd()))
}

/// An exclusive advisory lock on `path` (created if missing), held while the returned file is open;
/// `Ok(None)` when another open file (another process) holds it.
pub fn try_lock_file(path: &std::path::Path) -> io::Result<Option<File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock takes a descriptor this function owns and flags; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(file));
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(error)
    }
}

/// Whether Troupe runs as root (and so can give each run its own user id).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Troupe's real user id (the one RLIMIT_NPROC counts).
pub fn real_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// How a reaped process ended and what it used (its waited-for descendants included).
#[derive(Debug, Clone, Copy, Default)]
pub struct Reaped {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal, when a signal killed it.
    pub signal: Option<i32>,
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
}

/// A pidfd for `pid`, to wait for its exit with a timeout; `None` on kernels without pidfds.
pub fn pidfd(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits up to `timeout` for the process behind `pidfd` to exit; true when it has.
pub fn wait_exit(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `poll` points to one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut poll, 1, millis) };
    ready > 0
}

/// Reaps `pid` (blocking until it exits, or returning `None` at once with `nohang` if it has not) with its
/// resource usage.
pub fn reap(pid: u32, nohang: bool) -> io::Result<Option<Reaped>> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if nohang { libc::WNOHANG } else { 0 };
    loop {
        // SAFETY: `status` and `usage` are valid for writes for the duration of the call.
        let reaped = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        if reaped < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if reaped == 0 {
            return Ok(None);
        }
        break;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Some(Reaped {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        // No peak RSS: a child forked from Troupe carries Troupe's high-water mark (the shim measures it).
    }))
}

/// Sends SIGKILL to process group `pgid` (the jail's session leader's group); a group that is already
/// gone is not an error.
pub fn kill_group(pgid: u32) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        // SAFETY: kill with a negative pid signals a process group; no memory is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Sends SIGKILL to process `pid`.
pub fn kill(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: as above; a process that is gone makes kill return ESRCH, which is ignored.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// The live processes whose real user id is `uid`, from `/proc` (zombies, which only wait to be reaped by
/// their new parent, are not counted).
pub fn processes_of(uid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find(|line| line.starts_with(name))
                    .and_then(|line| line.split_whitespace().nth(1))
            };
            let dead = matches!(field("State:"), Some("Z" | "X"));
            !dead && field("Uid:").and_then(|id| id.parse::<u32>().ok()) == Some(uid)
        })
        .collect()
}
