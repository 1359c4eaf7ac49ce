"""APScheduler wiring: the drain runs every RELAYBOARD_DRAIN_INTERVAL seconds.

Several processes may run it at once: claims are atomic, so each message goes to one.
"""

from __future__ import annotations

import threading

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from flask import Flask

from app import logs, settings_of
from app.extensions import db
from app.services.delivery import DeliveryEngine

log = logs.get("jobs")


class DrainJob:
    """One process's drain: a delivery engine and the flag that stops it between steps."""

    def __init__(self, app: Flask) -> None:
        with app.app_context():
            engine = db.engine
        self.engine = DeliveryEngine(engine, settings_of(app))
        self.stop = threading.Event()

    def __call__(self) -> None:
        """Deliver what is due; log a summary when anything moved."""
        try:
            report = self.engine.drain(stop=self.stop)
        except Exception:
            log.exception("drain failed; the next run retries")
            return
        if report.claimed:
            log.info(
                "drain pass",
                extra={
                    "claimed": report.claimed,
                    "sent": report.sent,
                    "deferred": report.deferred,
                    "failed": report.failed,
                    "failovers": report.failovers,
                    "seconds": round(report.seconds, 3),
                },
            )


HEALTH_CHECK_MINUTES = 5
HEALTH_HISTORY_DAYS = 30


def health_checks(app: Flask) -> None:
    """Probe every enabled relay (one instance at a time, under a lease); prune old results."""
    from app.services import health

    with app.app_context():
        try:
            health.run_scheduled_checks()
            health.prune(days=HEALTH_HISTORY_DAYS)
        except Exception:
            log.exception("health checks failed; the next run retries")


def schedule(app: Flask, scheduler: BaseScheduler) -> DrainJob:
    """Add the drain and the health checks to a scheduler; return the drain job."""
    scheduler.add_job(
        health_checks,
        "interval",
        args=[app],
        minutes=HEALTH_CHECK_MINUTES,
        id="health_checks",
        max_instances=1,
        coalesce=True,
    )
    job = DrainJob(app)
    scheduler.add_job(
        job,
        "interval",
        seconds=settings_of(app).drain_interval,
        id="drain",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
    )
    return job


def start_background(app: Flask) -> tuple[BackgroundScheduler, DrainJob]:
    """Start the scheduler in a background thread (gunicorn workers)."""
    scheduler = BackgroundScheduler(timezone="UTC")
    job = schedule(app, scheduler)
    scheduler.start()
    log.info("scheduler started", extra={"interval": settings_of(app).drain_interval})
    return scheduler, job


def run_blocking(app: Flask) -> None:
    """Run the scheduler in the foreground until SIGTERM or Ctrl-C; in-flight work finishes."""
    import signal

    scheduler = BlockingScheduler(timezone="UTC")
    job = schedule(app, scheduler)

    def shut_down(signum: int, _frame: object) -> None:
        log.info("stopping", extra={"signal": signum})
        job.stop.set()
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    log.info("worker started", extra={"interval": settings_of(app).drain_interval})
    scheduler.start()
