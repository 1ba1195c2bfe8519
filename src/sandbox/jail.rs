//! The bubblewrap command line of one run: every namespace unshared (so no network: the run's network
//! namespace has only a loopback device that is down), the system directories read-only, a private tmpfs
//! `/workspace` (the working directory, holding the run's files) and `/tmp`, a minimal `/dev` and `/proc`,
//! a new session, capabilities dropped, the environment cleared, and the root remounted read-only last.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use super::Language;

/// Where the run's files are inside the jail (also its working directory and `HOME`).
pub const WORKSPACE: &str = "/workspace";
/// Where the Python audit hook is mounted inside the jail.
const HOOK_DIR: &str = "/opt/troupe";

/// How one top-level system directory appears in the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemDir {
    /// A symlink (merged /usr: `/bin -> usr/bin`).
    Symlink {
        /// The directory, e.g. `/bin`.
        path: String,
        /// Its target, e.g. `usr/bin`.
        target: String,
    },
    /// A real directory, bound read-only.
    Directory(String),
}

/// The top-level system directories of this machine as the jail needs them.
pub fn system_dirs() -> Vec<SystemDir> {
    ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
        .into_iter()
        .filter_map(|path| match std::fs::read_link(path) {
            Ok(target) => Some(SystemDir::Symlink {
                path: path.to_owned(),
                target: target.to_string_lossy().into_owned(),
            }),
            Err(_) if Path::new(path).is_dir() => Some(SystemDir::Directory(path.to_owned())),
            Err(_) => None,
        })
        .collect()
}

/// What one jail is made of.
#[derive(Debug, Clone)]
pub struct JailSpec<'a> {
    /// Top-level system directories.
    pub system: &'a [SystemDir],
    /// Size of `/workspace` and `/tmp` in bytes.
    pub workspace_bytes: u64,
    /// Files to copy into `/workspace`: (inherited descriptor, relative name).
    pub files: &'a [(RawFd, String)],
    /// The Python audit hook's descriptor, for Python runs.
    pub hook: Option<RawFd>,
    /// The command to run inside.
    pub command: Vec<OsString>,
}

/// The arguments to give bubblewrap.
pub fn arguments(spec: &JailSpec<'_>) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::with_capacity(64);
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&[
        "--unshare-all",
        // The command (Troupe's shim) is the pid namespace's init: bubblewrap then reaps it itself. With
        // bubblewrap's own init, that init outlives the outer bubblewrap as a zombie left to the machine's
        // init, and on a machine whose init reaps slowly those zombies count against RLIMIT_NPROC.
        "--as-pid-1",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
        "--setenv",
        "HOME",
        WORKSPACE,
        "--setenv",
        "PATH",
        "/usr/local/bin:/usr/bin:/bin",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--setenv",
        "PYTHONDONTWRITEBYTECODE",
        "1",
        "--setenv",
        "PYTHONUNBUFFERED",
        "1",
        "--ro-bind",
        "/usr",
        "/usr",
    ]);
    for dir in spec.system {
        match dir {
            SystemDir::Symlink { path, target } => push(&["--symlink", target, path]),
            SystemDir::Directory(path) => push(&["--ro-bind", path, path]),
        }
    }
    // Alternatives (awk, editors) are symlinks through /etc; the loader cache makes start-up faster.
    push(&[
        "--ro-bind-try",
        "/etc/alternatives",
        "/etc/alternatives",
        "--ro-bind-try",
        "/etc/ld.so.cache",
        "/etc/ld.so.cache",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
    ]);
    let size = spec.workspace_bytes.to_string();
    push(&["--size", &size, "--tmpfs", WORKSPACE]);
    push(&["--size", &size, "--tmpfs", "/tmp"]);
    for (fd, name) in spec.files {
        let fd = fd.to_string();
        let dest = format!("{WORKSPACE}/{name}");
        push(&["--file", &fd, &dest]);
    }
    if let Some(hook) = spec.hook {
        let fd = hook.to_string();
        let dest = format!("{HOOK_DIR}/sitecustomize.py");
        push(&[
            "--ro-bind-data",
            &fd,
            &dest,
            "--setenv",
            "PYTHONPATH",
            HOOK_DIR,
        ]);
    }
    push(&["--remount-ro", "/", "--chdir", WORKSPACE, "--"]);
    args.extend(spec.command.iter().cloned());
    args
}

/// The command that runs `entry` (a file in the workspace) in `language`.
pub fn command(language: Language, python: &Path, shell: &Path, entry: &str) -> Vec<OsString> {
    let interpreter: PathBuf = match language {
        Language::Python => python.to_path_buf(),
        Language::Shell => shell.to_path_buf(),
    };
    let mut command = vec![interpreter.into_os_string()];
    if language == Language::Python {
        // -B: no bytecode files; -s: no user site directory (there is no user).
        command.push("-B".into());
        command.push("-s".into());
    }
    command.push(entry.into());
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_jail_unshares_everything_and_remounts_root_read_only_last() {
        let system = vec![SystemDir::Symlink {
            path: "/bin".into(),
            target: "usr/bin".into(),
        }];
        let files = vec![(7, "main.py".to_owned())];
        let args = arguments(&JailSpec {
            system: &system,
            workspace_bytes: 1 << 20,
            files: &files,
            hook: Some(9),
            command: command(
                Language::Python,
                Path::new("/usr/bin/python3"),
                Path::new("/bin/sh"),
                "main.py",
            ),
        });
        let line = text(&args);
        for expected in [
            "--unshare-all",
            "--as-pid-1",
            "--die-with-parent",
            "--new-session",
            "--cap-drop ALL",
            "--clearenv",
            "--ro-bind /usr /usr",
            "--symlink usr/bin /bin",
            "--size 1048576 --tmpfs /workspace",
            "--file 7 /workspace/main.py",
            "--ro-bind-data 9 /opt/troupe/sitecustomize.py",
            "--remount-ro / --chdir /workspace -- /usr/bin/python3 -B -s main.py",
        ] {
            assert!(line.contains(expected), "{expected} missing from {line}");
        }
        assert!(!line.contains("--share-net"));
        assert!(line.ends_with("main.py"));
    }
}
