"""Start one command and report its wall time and ``os.wait4`` resource usage.

Usage: ``python -I -S launcher.py RESULT_FILE COMMAND [ARG...]``; writes
``wall_s user_s sys_s maxrss_kib exit_code`` to RESULT_FILE and exits 0 (the command's own
status is in the file).

Why a launcher: at ``exec`` Linux records the peak RSS of the memory image being replaced into
the new program's ``ru_maxrss``. A tool spawned straight from the harness (vfork shares the
harness's memory) therefore reports at least the harness's own RSS (tens of MB). Forked from
this tiny interpreter instead, only its few MiB of private memory are carried over, so any
tool using more than that reports its own peak. Standard library only, few imports, on purpose.
"""

import os
import sys
import time


def main() -> int:
    result_path, argv = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: become the command
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(2, f"launcher: cannot run {argv[0]}: {exc}\n".encode())
        os._exit(127)
    _pid, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    with open(result_path, "w") as result:
        result.write(f"{wall} {usage.ru_utime} {usage.ru_stime} {usage.ru_maxrss} {code}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
