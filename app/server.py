"""Run gunicorn programmatically, starting the scheduler in each worker."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from app import create_app, settings_of


def _post_worker_init(worker: Any) -> None:
    app = worker.wsgi
    if settings_of(app).scheduler:
        from app.jobs import start_background

        scheduler, job = start_background(app)

        def stop(_worker: Any = None) -> None:
            job.stop.set()
            scheduler.shutdown(wait=True)

        worker.relayboard_stop = stop


def _worker_exit(_server: Any, worker: Any) -> None:
    stop = getattr(worker, "relayboard_stop", None)
    if stop:
        stop()


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app()


def run_gunicorn(*, bind: str, workers: int, threads: int = 1) -> None:
    """Serve the app with gunicorn until stopped."""
    _Gunicorn(
        {
            "bind": bind,
            "workers": workers,
            "threads": threads,
            "post_worker_init": _post_worker_init,
            "worker_exit": _worker_exit,
            "graceful_timeout": 30,
            "accesslog": "-",
        }
    ).run()
