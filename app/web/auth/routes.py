"""First-run setup, sign in, sign out."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import login_user, logout_user
from werkzeug.wrappers import Response

from app import ratelimit
from app.services import operators
from app.web.auth.forms import LoginForm, SetupForm

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str:
    """Return a local path to go to after sign-in (never another site)."""
    if target and target.startswith("/") and not target.startswith("//"):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("overview.index")


@bp.route("/setup", methods=["GET", "POST"])
def setup() -> str | Response:
    """Create the first operator; open only while none exists."""
    if operators.exists():
        abort(404)
    form = SetupForm()
    if form.validate_on_submit():
        try:
            operator = operators.create(form.email.data or "", form.password.data or "")
        except operators.OperatorError as exc:
            form.email.errors = [*form.email.errors, str(exc)]
        else:
            login_user(operator)
            flash(f"Welcome, {operator.email}. Add a relay to start delivering.", "success")
            return redirect(url_for("overview.index"))
    return render_template("auth/setup.html", form=form)


@bp.route("/login", methods=["GET", "POST"])
def login() -> str | Response | tuple[str, int, dict[str, str]]:
    """Sign in with email and password (at most 10 attempts a minute from one address)."""
    if not operators.exists():
        return redirect(url_for("auth.setup"))
    form = LoginForm()
    if request.method == "POST":
        refusal = ratelimit.of(current_app).hit_sign_in(request.remote_addr or "unknown")
        if refusal is not None:
            form.password.errors = [
                f"Too many sign-in attempts from this address (limit {refusal.limit}); "
                f"try again in {refusal.retry_after} s."
            ]
            page = render_template("auth/login.html", form=form)
            return page, 429, {"Retry-After": str(refusal.retry_after)}
    if form.validate_on_submit():
        operator = operators.authenticate(form.email.data or "", form.password.data or "")
        if operator is not None:
            login_user(operator)
            return redirect(_safe_next(request.args.get("next")))
        form.password.errors = ["That email and password do not match an operator."]
    return render_template("auth/login.html", form=form)


@bp.post("/logout")
def logout() -> Response:
    """Sign out."""
    logout_user()
    flash("Signed out.", "info")
    return redirect(url_for("auth.login"))
