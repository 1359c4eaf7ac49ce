"""Run `relayboard ARGS` with per-thread CPU accounting, for drain.py --profile.

    python bench/thread_cpu.py OUT.json drain --quiet

Before importing app.cli it hooks only the standard library, never app/'s internals:
- every thread's CPU (time.thread_time) is noted when the thread ends; the main
  thread's, and any thread still alive, at exit (pthread_getcpuclockid);
- time spent inside logging is added up per thread: inside Handler.handle (filter,
  format, write: the handlers' emit) and inside Logger._log (that plus building the
  record and finding the caller), the outermost call only.
At exit it writes OUT.json: the threads (name, CPU seconds, logging CPU seconds, log
records handled), the CPU of live threads Python did not start, and the process's CPU
so far (getrusage: what comes after, the interpreter's teardown, is not in it).
"""

from __future__ import annotations

import atexit
import json
import logging
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

_local = threading.local()
_lock = threading.Lock()
_threads: list[dict[str, Any]] = []
# Per live thread (by ident): [handler CPU, Logger._log CPU, records handled].
_logging: dict[int, list[float]] = {}


def _account(slot: int, fn: Any) -> Any:
    """Wrap `fn` so that its outermost calls' thread CPU is added to slot `slot`."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        depth = getattr(_local, "depth", None)
        if depth is None:
            depth = _local.depth = [0, 0]
        if depth[slot]:
            return fn(*args, **kwargs)
        depth[slot] = 1
        started = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.thread_time() - started
            depth[slot] = 0
            row = _logging.setdefault(threading.get_ident(), [0.0, 0.0, 0.0])
            row[slot] += spent
            if slot == 0:
                row[2] += 1

    return wrapper


def _row(thread: threading.Thread, cpu: float) -> dict[str, Any]:
    handlers, calls, records = _logging.pop(thread.ident or 0, [0.0, 0.0, 0.0])
    return {
        "name": thread.name,
        "main": thread is threading.main_thread(),
        "cpu": cpu,
        "logging_handlers_cpu": handlers,
        "logging_calls_cpu": calls,
        "log_records": int(records),
    }


def _install() -> None:
    logging.Handler.handle = _account(0, logging.Handler.handle)  # type: ignore[method-assign]
    logging.Logger._log = _account(1, logging.Logger._log)  # type: ignore[method-assign]
    bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def bootstrap_inner(self: threading.Thread) -> None:
        try:
            bootstrap(self)
        finally:
            row = _row(self, time.thread_time())
            with _lock:
                _threads.append(row)

    threading.Thread._bootstrap_inner = bootstrap_inner  # type: ignore[attr-defined]


def _report(path: str) -> None:
    rows = [_row(threading.main_thread(), time.thread_time())]
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.ident is None:
            continue
        try:
            cpu = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (OSError, ValueError):
            continue
        rows.append({**_row(thread, cpu), "alive_at_exit": True})
    with _lock:
        rows += _threads
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(path, "w") as out:
        json.dump(
            {
                "threads": rows,
                "native_threads_cpu": _native_threads_cpu(),
                "process_cpu_at_exit": usage.ru_utime + usage.ru_stime,
            },
            out,
        )


def _native_threads_cpu() -> float:
    """Return the CPU seconds of this process's live threads that Python did not start
    (e.g. a C library's thread pool), from /proc/self/task/*/schedstat."""
    python = {t.native_id for t in threading.enumerate()}
    total = 0
    for task in Path("/proc/self/task").iterdir():
        if int(task.name) in python:
            continue
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    _install()
    atexit.register(_report, out)
    from app.cli import main as relayboard

    sys.argv = ["relayboard", *args]
    sys.exit(relayboard())


if __name__ == "__main__":
    main()
