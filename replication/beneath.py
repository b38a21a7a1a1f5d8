"""openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS: a whole relative path opened in one call,
refused by the kernel if any component is a symlink or leads out of the starting folder.

StorageRoot opens folders one component at a time with O_NOFOLLOW, which costs two system calls
and some Python per component. On the leader that walk ran for every change (the watcher's lstat,
the batch's size, the sender's lstat and open): profiled during a 30-plugin install (py-spy), about
a quarter of the event loop's busy time went to it. The kernel does the same checks in one call.

Only the answers that need no interpretation are used: a folder fd, or "no such path". Anything
else (a symlink on the way, a file where a folder should be, a rename racing the lookup, a kernel or
seccomp profile without openat2) returns None and StorageRoot takes its component-by-component path,
which says exactly what is in the way.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Callable
from typing import Any

SYS_OPENAT2 = 437
"""The same number on every architecture that has it (added in Linux 5.6, after the tables were unified)."""
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


OpenBeneath = Callable[[int, str, int], int | None]
"""(dir_fd, relative path, open flags) -> fd, or None: ask the slow path. FileNotFoundError when missing."""


def _make() -> OpenBeneath | None:
    """The openat2 opener when this kernel (and its seccomp profile) allows it, else None."""
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    syscall.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t)

    size = ctypes.sizeof(_OpenHow)
    hows: dict[int, tuple[_OpenHow, Any]] = {}
    """One read-only open_how (and its pointer) per flags: building them per call was half the ~9 us
    of Python this costs per path, on the leader's loop for every change."""

    def open_beneath(dir_fd: int, rel: str, flags: int) -> int | None:
        found = hows.get(flags)
        if found is None:
            how = _OpenHow(flags, 0, _RESOLVE)
            found = hows[flags] = (how, ctypes.byref(how))
        fd = syscall(SYS_OPENAT2, dir_fd, rel.encode("utf-8", "surrogateescape"), found[1], size)
        if fd >= 0:
            return int(fd)
        if ctypes.get_errno() == errno.ENOENT:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), rel)
        return None

    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # StorageRoot's
    probe = os.open("/", flags)
    try:
        fd = open_beneath(probe, ".", flags)
    except OSError:
        return None
    finally:
        os.close(probe)
    if fd is None:
        return None  # ENOSYS, or EPERM from a seccomp profile that predates openat2
    os.close(fd)
    return open_beneath


OPEN_BENEATH: OpenBeneath | None = _make()
"""Decided once at import; None where the kernel cannot do it."""
