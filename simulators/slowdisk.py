"""A slow disk for a child process: every fsync and fdatasync sleeps first, as on an SD card.

An `LD_PRELOAD` shim compiled with gcc at run time (nothing is shipped built). Used by the
benchmarks (a store box's 10 ms fsync) and by tests that need a commit to take long enough to
catch a process in the middle of one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["slow_fsync_env"]

_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

/* Sleeps SLOW_FSYNC_DELAY_US in every fsync and fdatasync, then syncs: an SD card's commit. */
static void delay(void) {
    const char *value = getenv("SLOW_FSYNC_DELAY_US");
    long us = value ? atol(value) : 0;
    struct timespec left = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&left, &left) != 0) {
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    delay();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    delay();
    return real(fd);
}
"""


def slow_fsync_env(work: Path, delay_ms: float) -> dict[str, str]:
    """Environment for a child process whose every fsync/fdatasync takes `delay_ms` longer
    (the shim is compiled into `work`)."""
    source = work / "fsync_delay.c"
    source.write_text(_SHIM)
    shim = work / "fsync_delay.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"], check=True
    )
    return {"LD_PRELOAD": str(shim), "SLOW_FSYNC_DELAY_US": str(int(delay_ms * 1000))}
