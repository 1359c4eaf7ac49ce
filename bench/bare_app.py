"""The API benchmark's baseline: a bare Flask app with one route (`gunicorn bare_app:app`)."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/api/send")
def send() -> Any:
    """Parse the JSON body like Relayboard does, and answer 202 {"id": 1}."""
    request.get_json()
    return jsonify(id=1), 202
