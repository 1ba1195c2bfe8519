# Troupe's sandbox: loaded as sitecustomize in every Python run. It reports (it does not block; the jail
# does) attempts to reach the network and to write outside the workspace, as marker lines on stderr that
# the sandbox strips from the output and counts as violations. A program can silence it (by closing fd 2);
# containment never depends on it.
import os
import sys

_MARK = "\x1etroupe-violation "
_ALLOWED = ("/workspace", "/tmp", "/dev/null", "/dev/stdout", "/dev/stderr", "/proc/self/fd")
_seen = set()


def _report(kind, detail):
    key = (kind, detail)
    if key in _seen:
        return
    _seen.add(key)
    try:
        os.write(2, (_MARK + kind + " " + detail.replace("\n", " ")[:200] + "\n").encode())
    except OSError:
        pass


def _outside(path):
    try:
        path = os.fsdecode(path)
    except TypeError:
        return False
    if isinstance(path, int):
        return False
    full = os.path.normpath(os.path.join(os.getcwd(), path)) if not path.startswith("/") else os.path.normpath(path)
    return not any(full == a or full.startswith(a + "/") for a in _ALLOWED)


def _hook(event, args):
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        _report("network", event + " " + repr(args[1] if len(args) > 1 else args))
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        _report("network", event + " " + repr(args[0]))
    elif event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
        )
        if writing and path is not None and not isinstance(path, int) and _outside(path):
            _report("filesystem", "write " + os.fsdecode(path))
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.symlink", "os.link", "os.truncate", "os.chmod"):
        path = args[0]
        if not isinstance(path, int) and _outside(path):
            _report("filesystem", event + " " + os.fsdecode(path))


sys.addaudithook(_hook)
