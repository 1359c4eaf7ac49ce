"""`relayboard serve`: gunicorn with the app, the scheduler in each worker, and clean stops.

SIGTERM or SIGINT stops gracefully: the workers finish their requests, their delivery
passes stop claiming and give messages in flight RELAYBOARD_STOP_GRACE seconds, every
outcome is recorded. A second signal ends every worker at once (leases then lapse, as
after a crash).
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from app import create_app
from app.config import settings_of

# gunicorn waits this much longer than the grace period before it kills a worker.
STOP_MARGIN_SECONDS = 15.0


def _post_worker_init(worker: Any) -> None:
    app = worker.wsgi
    if not settings_of(app).scheduler:
        return
    from app.jobs import start_background

    scheduler, job = start_background(app)
    graceful = worker.handle_exit  # gunicorn's: finish the requests in hand, then exit

    def on_term(signum: int, frame: FrameType | None) -> None:
        job.stop.set()  # the pass stops claiming now, not once the requests are done
        graceful(signum, frame)

    def stop(_worker: Any = None) -> None:
        job.stop.set()
        scheduler.shutdown(wait=True)  # the running pass ends within the grace period

    signal.signal(signal.SIGTERM, on_term)
    worker.relayboard_stop = stop


def _worker_exit(_server: Any, worker: Any) -> None:
    stop = getattr(worker, "relayboard_stop", None)
    if stop:
        stop()


class _Arbiter(Arbiter):
    """gunicorn's master, with Ctrl-C as graceful as SIGTERM and a second signal final."""

    def handle_int(self) -> None:
        """Stop gracefully, as on SIGTERM."""
        raise StopIteration

    def stop(self, graceful: bool = True) -> None:
        """Stop the workers; while waiting for them, a second signal kills them at once."""

        def now(signum: int, _frame: FrameType | None) -> None:
            self.log.warning("second signal: stopping the workers now")
            self.kill_workers(signal.SIGKILL)
            os._exit(128 + signum)

        if graceful:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                signal.signal(sig, now)
        super().stop(graceful)


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app()

    def run(self) -> None:
        _Arbiter(self).run()


def run_gunicorn(
    *, bind: str, workers: int, threads: int, stop_grace: float, access_log: bool = False
) -> None:
    """Serve the app with gunicorn until stopped."""
    _Gunicorn(
        {
            "bind": bind,
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread" if threads > 1 else "sync",
            "post_worker_init": _post_worker_init,
            "worker_exit": _worker_exit,
            "graceful_timeout": int(stop_grace + STOP_MARGIN_SECONDS + 0.999),
            "accesslog": "-" if access_log else None,
        }
    ).run()
