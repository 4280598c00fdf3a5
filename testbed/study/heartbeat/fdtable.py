"""The process's file descriptor table, grown before the measured day rather than during it.

The kernel grows a process's table of open files by doubling it (at 256, 512, 1,024 ...
descriptors), and in a process with more than one thread each growth waits for an RCU grace
period: 4-14 ms of wall time on the study's machine, in whatever call opened the descriptor
(an accept, a connect). The lab's process (it has threads) opens a descriptor or two a
phone while the phones go online, so each doubling stalled its loop at the same moments of
the day, whatever the number of phones (docs/performance.md). Grown once at the start, the
table never grows again: the kernel does not shrink it. A fleet grows its own too, for
when its process has threads.
"""

from __future__ import annotations

import fcntl
import os
import resource

MAX_RESERVED = 1 << 16    # descriptors: 512 KB of kernel table at most


def grow_fd_table(descriptors: int | None = None) -> int:
    """Make the kernel's table hold `descriptors` (default: the soft limit of open files,
    at most `MAX_RESERVED`) now, without opening or closing any descriptor of the caller's
    (the table is grown by a duplicate at the top, closed at once). Returns the size asked
    for, never more than the soft limit; 0 where the table could not be grown (the
    duplicate failed), with nothing else changed."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = MAX_RESERVED if soft == resource.RLIM_INFINITY else min(soft, MAX_RESERVED)
    want = min(limit, descriptors or limit)
    probe = os.open(os.devnull, os.O_RDONLY)
    try:
        # the lowest free descriptor at or above the top: never one in use, and the table
        # holds it from then on
        top = fcntl.fcntl(probe, fcntl.F_DUPFD, want - 1)
        os.close(top)
    except OSError:
        return 0
    finally:
        os.close(probe)
    return want
