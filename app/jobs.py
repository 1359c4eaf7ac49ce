"""APScheduler wiring: delivery passes every RELAYBOARD_DRAIN_INTERVAL seconds, health checks
every five minutes, and the clean stop of `relayboard worker`.

Several processes may run passes at once: claims are atomic, so each message goes to one.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from flask import Flask

from app import logs
from app.config import Settings, settings_of
from app.db import db, is_unreachable, reachability
from app.services.delivery import DeliveryEngine

log = logs.get("jobs")

HEALTH_CHECK_MINUTES = 5
HEALTH_HISTORY_DAYS = 30
BACKOFF_MAX_SECONDS = 60.0
MAINTENANCE_SECONDS = 1  # how soon a received webhook or a window's start is acted on
WEBHOOK_BATCH = 200  # webhooks acted on in one transaction


class DrainJob:
    """One process's delivery passes, the flag that stops them, and the backoff of an outage."""

    def __init__(self, app: Flask) -> None:
        with app.app_context():
            database = db.engine
        self.settings: Settings = settings_of(app)
        self.engine = DeliveryEngine(database, self.settings)
        self.stop = threading.Event()
        self.failures = 0  # passes in a row that found the database unreachable
        self.retry_at = 0.0  # time.monotonic() before which no pass starts (backing off)

    def __call__(self) -> None:
        """Run a pass if it is time; log a summary when anything moved."""
        if self.stop.is_set() or time.monotonic() < self.retry_at:
            return
        try:
            report = self.engine.run_pass(stop=self.stop)
        except Exception as exc:
            if not is_unreachable(exc):
                log.exception("delivery pass failed; the next one retries")
                return
            # Logged once per outage (reachability), not once per pass; passes back off.
            reachability.failed(exc, "worker")
            self.failures += 1
            wait = min(BACKOFF_MAX_SECONDS, self.settings.drain_interval * 2**self.failures)
            self.retry_at = time.monotonic() + wait
            return
        self.failures, self.retry_at = 0, 0.0
        reachability.succeeded("worker")
        if report.claimed:
            log.info(
                "delivery pass",
                extra={
                    "claimed": report.claimed,
                    "sent": report.sent,
                    "deferred": report.deferred,
                    "failed": report.failed,
                    "released": report.released,
                    "failovers": report.failovers,
                    "seconds": round(report.seconds, 3),
                },
            )


def health_checks(app: Flask) -> None:
    """Probe every enabled relay (one instance at a time, under a lease); prune old results."""
    from app.services import health

    with app.app_context():
        try:
            health.run_scheduled_checks(settings_of(app))
            health.prune(days=HEALTH_HISTORY_DAYS)
        except Exception as exc:
            if is_unreachable(exc):
                reachability.failed(exc, "health checks")
            else:
                log.exception("health checks failed; the next run retries")


def maintenance_job(app: Flask) -> None:
    """Act on received webhooks, start or end planned maintenance windows, and release
    what running drains' ramps allow."""
    from app.services import drains, maintenance, webhooks

    settings = settings_of(app)
    with app.app_context():
        try:
            # Batch after batch while more wait, for most of the second: acting keeps up
            # with what the intake stores, and the next run goes on from there.
            deadline = time.monotonic() + MAINTENANCE_SECONDS * 0.8
            while (
                webhooks.process_pending(limit=WEBHOOK_BATCH, settings=settings) == (WEBHOOK_BATCH)
                and time.monotonic() < deadline
            ):
                pass
            maintenance.tick(settings=settings)
            drains.pace()
        except Exception as exc:
            if is_unreachable(exc):
                reachability.failed(exc, "maintenance")
            else:
                log.exception("acting on webhooks or maintenance windows failed; retrying")


def schedule(app: Flask, scheduler: BaseScheduler) -> DrainJob:
    """Add the passes, webhook and maintenance handling and the health checks to a
    scheduler; return the drain job."""
    scheduler.add_job(
        health_checks,
        "interval",
        args=[app],
        minutes=HEALTH_CHECK_MINUTES,
        id="health_checks",
        max_instances=1,
        coalesce=True,
    )
    scheduler.add_job(
        maintenance_job,
        "interval",
        args=[app],
        seconds=MAINTENANCE_SECONDS,
        id="maintenance",
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


def run_worker(app: Flask) -> None:
    """Run the scheduler until SIGTERM or SIGINT, then stop cleanly; a second signal is final.

    The clean stop: no new pass starts; the running one stops claiming, gives messages in
    flight RELAYBOARD_STOP_GRACE seconds, records every outcome and sends unattempted
    claims back to the queue. A second signal exits at once: leases then lapse, as after
    a crash, and the reaper queues those messages again.
    """
    scheduler, job = start_background(app)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            log.warning("second signal: exiting now", extra={"signal": signum})
            os._exit(128 + signum)
        log.info("stopping", extra={"signal": signum, "grace_seconds": job.settings.stop_grace})
        stopping.set()
        job.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("worker started", extra={"interval": job.settings.drain_interval})
    while not stopping.wait(1.0):
        pass
    scheduler.shutdown(wait=True)  # the running pass ends within the grace period
    log.info("worker stopped")
