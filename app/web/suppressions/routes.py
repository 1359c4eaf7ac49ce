"""The suppressions area: addresses no longer sent to after a hard bounce; search and lift."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, request, url_for
from flask_login import current_user
from werkzeug.wrappers import Response

from app.services import suppressions
from app.web.render import flash_trigger, fragment, htmx, page_or_fragment, wants_fragment
from app.web.suppressions.forms import LiftForm, SuppressionSearchForm

bp = Blueprint("suppressions", __name__, url_prefix="/suppressions")

SHOWN = 200  # the newest ones; a search narrows the list


def _by() -> str:
    """Name the signed-in operator as suppression events name who lifted one."""
    return f"operator {current_user.email}"[:128]


def _search_form() -> SuppressionSearchForm:
    form = SuppressionSearchForm(request.args)
    form.validate()
    return form


def _list(form: SuppressionSearchForm) -> dict[str, Any]:
    """Return what the list shows for a search form (nothing while the search is invalid)."""
    context: dict[str, Any] = {
        "form": form,
        "filter_args": form.args(),
        "search": None,
        "rows": [],
        "more": False,
    }
    if form.errors:
        return context
    search = form.search()
    rows = suppressions.listing(search, limit=SHOWN + 1)
    context.update(search=search, rows=rows[:SHOWN], more=len(rows) > SHOWN, shown=SHOWN)
    return context


@bp.get("/")
def index() -> Response:
    """Show the suppressed addresses, newest first; htmx asks for the list alone."""
    context = _list(_search_form())
    part = "suppressions/_list_fragment.html" if wants_fragment() else "suppressions/index.html"
    return page_or_fragment("suppressions/index.html", part, **context)


@bp.post("/lift")
def lift() -> Response:
    """Lift one address's suppression: mail to it is sent again."""
    form = LiftForm()
    if form.validate_on_submit():
        address = (form.address.data or "").lower()
        if suppressions.lift(address, _by()):
            text, category = f"{address}: suppression lifted", "success"
        else:
            text, category = f"{address} is not suppressed", "info"
    else:
        text, category = "Nothing lifted: say which address to lift.", "error"
    search = _search_form()  # the search the page showed rides along in the query string
    if htmx:
        return flash_trigger(fragment("suppressions/_list.html", **_list(search)), text, category)
    flash(text, category)
    response = redirect(url_for(".index", q=search.args().get("q")))  # None: left out
    response.vary.add("HX-Request")
    return response
