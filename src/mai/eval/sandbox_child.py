"""Runs one untrusted program inside the limits of the sandbox: `python -I -B sandbox_child.py WORKDIR LIMITS_JSON`.

Started by `mai.eval.sandbox.run_program` in a fresh process; standard library only. Before the
program runs, this process confines itself, in layers so that one missing kernel feature still
leaves the others:

1. resource limits: address space (memory), CPU seconds, size of written files, no core dumps;
2. a new, empty network namespace (no interface but a downed loopback), when the kernel allows;
3. Landlock: writes, file creation and removal only beneath WORKDIR, and no TCP bind or connect,
   when the kernel has it (Linux 5.13+, TCP rules 6.7+);
4. an audit hook that refuses sockets, processes (fork, exec, subprocess), ctypes and any write
   outside WORKDIR from Python code, on every platform.

The program's source arrives on stdin, followed by a line holding a one-time token. It runs as
`__main__` in WORKDIR; only if it finishes without raising or exiting early is the token written
to stdout, so a program that calls `sys.exit(0)` or `os._exit(0)` halfway does not pass.
"""

import ctypes
import json
import os
import resource
import sys

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446  # x86_64 and arm64
PR_SET_NO_NEW_PRIVS = 38
LANDLOCK_RULE_PATH_BENEATH = 1
# Filesystem rights Landlock governs that change something: write, remove, make, link, truncate.
WRITE_FILE, REMOVE_DIR, REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
MAKE_RIGHTS = sum(1 << bit for bit in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
REFER, TRUNCATE = 1 << 13, 1 << 14
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
BLOCKED_EVENTS = {
    "socket.__new__",
    "socket.connect",
    "socket.bind",
    "socket.getaddrinfo",
    "os.fork",
    "os.forkpty",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.system",
    "os.kill",
    "os.killpg",
    "subprocess.Popen",
    "pty.spawn",
    "ctypes.dlopen",
    "ctypes.dlsym",
    "ctypes.cdata",
}
PATH_EVENTS = {"os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.symlink", "os.link"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def limit_resources(limits: dict) -> None:
    cpu = max(1, int(limits["cpu_seconds"] + 0.999))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def isolate_network(libc) -> str:
    """Move into a new network namespace: as root directly, otherwise inside a new user namespace."""
    if libc.unshare(CLONE_NEWNET) == 0:
        return "netns"
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        return "none"
    try:  # map ourselves to root inside, so the files we own stay ours
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
    except OSError:
        pass
    return "userns+netns"


def restrict_writes(libc, workdir: str) -> str:
    """Landlock: every change to the filesystem outside workdir is refused, and TCP too (ABI ≥ 4)."""
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return "none"
    fs = WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_RIGHTS
    fs |= REFER if abi >= 2 else 0
    fs |= TRUNCATE if abi >= 3 else 0
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    attr = _RulesetAttr(fs, net)
    size = ctypes.sizeof(attr) if net else ctypes.sizeof(ctypes.c_uint64)
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return "none"
    for path, access in ((workdir, fs), ("/dev/null", WRITE_FILE)):
        fd = os.open(path, os.O_PATH)
        rule = _PathBeneathAttr(access & (WRITE_FILE if path == "/dev/null" else fs), fd)
        libc.syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        os.close(fd)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    status = libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    os.close(ruleset)
    return f"landlock-abi{abi}" if status == 0 else "none"


def audit_hook(workdir: str):
    """Refuse, from Python code, what the program must not do; kernel layers back this up."""
    root = os.path.realpath(workdir)

    def inside(path) -> bool:
        if isinstance(path, int):  # an already-open descriptor
            return True
        real = os.path.realpath(os.fsdecode(path))
        return real == root or real.startswith(root + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event in BLOCKED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & WRITE_FLAGS)
            if writing and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing {path} is outside the working directory")
        elif event in PATH_EVENTS or event == "os.rename" or event == "shutil.rmtree":
            paths = args[:2] if event == "os.rename" else args[:1]
            if not all(inside(p) for p in paths if isinstance(p, str | bytes | os.PathLike)):
                raise PermissionError(f"sandbox: {event} outside the working directory")

    return hook


def main() -> None:
    workdir, limits = sys.argv[1], json.loads(sys.argv[2])
    source = sys.stdin.read()
    source, _, token = source.rpartition("\n")
    sys.stdin.close()
    limit_resources(limits)
    libc = ctypes.CDLL(None, use_errno=True)
    layers = [isolate_network(libc), restrict_writes(libc, workdir)]
    sys.stderr.write(f"sandbox layers: {', '.join(layers)}\n")
    sys.stderr.flush()
    os.chdir(workdir)
    sys.path[:0] = [workdir]
    code = compile(source, "program.py", "exec")
    if limits.get("audit_hook", True):
        sys.addaudithook(audit_hook(workdir))
    del libc
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as e:
        sys.stderr.write(f"sandbox: the program exited early (code {e.code})\n")
        os._exit(3)
    sys.stdout.write("\n" + token + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
