"""WSGI entry point: `gunicorn wsgi:app` (the scheduler starts with `relayboard serve`)."""

from app import create_app

app = create_app()
