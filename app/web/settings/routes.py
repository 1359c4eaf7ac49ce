"""Settings: API keys (create, shown once; list; revoke)."""

from __future__ import annotations

from flask import Blueprint, Response, flash, make_response, redirect, render_template, url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from app.services import api_keys
from app.web.render import flash_trigger, fragment, htmx, page_or_fragment
from app.web.settings.forms import ApiKeyForm, ScopeForm

bp = Blueprint("settings", __name__, url_prefix="/settings")

NEW_KEY_INPUT = "new-api-key"


@bp.get("/")
def index() -> Response:
    """Show the API keys and the form that creates one."""
    return page_or_fragment(
        "settings/index.html", "settings/_keys.html", form=ApiKeyForm(), keys=api_keys.listing()
    )


@bp.post("/api-keys")
def create_key() -> Response | WerkzeugResponse:
    """Create an API key and show it this once, in this response only."""
    form = ApiKeyForm()
    new_key = None
    if form.validate_on_submit():
        try:
            row, new_key = api_keys.create(form.name.data or "", form.scope.data or api_keys.SEND)
        except api_keys.ApiKeyError as exc:
            if api_keys.created_recently(form.name.data or ""):
                # Most likely this very form sent again by a reload: say so, not "error".
                flash(
                    f"The API key {form.name.data!r} was just created and shown once; it cannot "
                    "be shown again. If it was not copied, revoke it and create another.",
                    "warning",
                )
                return redirect(url_for("settings.index"))
            form.name.errors = [*form.name.errors, _sentence(str(exc))]
        else:
            flash(f"API key {row.name!r} created. Copy it now: it will not be shown again.")
            form = ApiKeyForm(formdata=None)
    if new_key is None:
        flash("The API key was not created: see the name field.", "error")
    response = make_response(
        render_template(
            "settings/index.html",
            form=form,
            keys=api_keys.listing(),
            new_key=new_key,
            new_key_input=NEW_KEY_INPUT,
        ),
        201 if new_key else 200,
    )
    if new_key:
        # The secret is in this page alone: keep it out of caches and the back-forward history.
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/api-keys/<name>/revoke")
def revoke_key(name: str) -> Response:
    """Revoke an API key: applications using it are refused at once."""
    try:
        row = api_keys.revoke(name)
    except api_keys.ApiKeyError as exc:
        text, category = _sentence(str(exc)), "error"
    else:
        text, category = f"API key {row.name!r} revoked: it no longer authenticates.", "success"
    if htmx:
        return flash_trigger(
            fragment("settings/_keys.html", keys=api_keys.listing()), text, category
        )
    flash(text, category)
    return redirect(url_for("settings.index"))  # type: ignore[return-value]


@bp.post("/api-keys/<name>/scope")
def change_scope(name: str) -> Response:
    """Change what a key may read: its own messages, or every one."""
    form = ScopeForm()
    if not form.validate_on_submit():
        text, category = "Scope not changed: choose send or read-all.", "error"
    else:
        try:
            row = api_keys.set_scope(name, form.scope.data or "")
        except api_keys.ApiKeyError as exc:
            text, category = _sentence(str(exc)), "error"
        else:
            reads = "every message" if row.scope == api_keys.READ_ALL else "only its own messages"
            text, category = f"API key {row.name!r} now reads {reads}.", "success"
    if htmx:
        return flash_trigger(
            fragment("settings/_keys.html", keys=api_keys.listing()), text, category
        )
    flash(text, category)
    return redirect(url_for("settings.index"))  # type: ignore[return-value]


def _sentence(text: str) -> str:
    """Capitalise a service message for showing on its own."""
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
