"""The console's web application (FastAPI + Jinja2, server-rendered, no JavaScript needed).

Pages (a session is required everywhere except ``/login``; without one a page redirects to
``/login`` and the JSON API answers 401): ``/queue``, ``/candidates/{event_id}`` (the card),
``/metrics`` (+ ``/metrics.csv``), crops ``/crops/{event_id}.jpg`` (every view is written to the
audit log) and case photos ``/case-photos/{image_key}.jpg`` from the operator bundle.

JSON API (session or ``Authorization: Bearer <token>``): ``GET /api/candidates?status=``,
``GET /api/candidates/{event_id}``, ``POST /api/candidates/{event_id}/verdict``,
``GET /api/metrics``.

Protection: argon2 passwords (store), a signed ``HttpOnly``, ``SameSite=Strict`` session cookie
(``Secure`` unless ``review.cookie_secure`` is off), a CSRF token in every form (and in the
``X-CSRF-Token`` header for session-authenticated API posts; bearer-token clients need none),
login rate limiting per client and per user, and strict security headers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.sessions import SessionMiddleware

from namus_edge.core.config import ReviewConfig
from namus_edge.review import metrics
from namus_edge.review.auth import LoginLimiter, csrf_ok, new_csrf_token
from namus_edge.review.casebook import CaseBook
from namus_edge.review.feedback import Feedback
from namus_edge.review.store import REASONS, VERDICTS, Store, StoreError, User

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'none'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
VERDICT_LABELS = {"match": "Match", "not_a_match": "Not a match", "unsure": "Unsure", "unusable": "Image unusable"}


@dataclass
class ReviewContext:
    """What the web app needs: the store, case photos, feedback publisher, settings."""

    store: Store
    casebook: CaseBook
    config: ReviewConfig
    secret: str
    feedback: Feedback | None = None
    limiter: LoginLimiter = field(default_factory=lambda: LoginLimiter(5, 300.0))
    today: Callable[[], date] = field(default_factory=lambda: lambda: datetime.now(timezone.utc).date())


def _ts(value: float | None) -> str:
    if value is None:
        return "—"
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _range(lo: Any, hi: Any) -> str:
    if lo is None and hi is None:
        return "unknown"
    if lo is None or hi is None or lo == hi:
        return f"{lo if lo is not None else hi:g}"
    return f"{float(lo):g}–{float(hi):g}"


def card_view(item: dict[str, Any], casebook: CaseBook) -> dict[str, Any]:
    """Everything the candidate card shows beyond the item itself (case facts, photos, face facts)."""
    case_id = item["case"]["id_formatted"]
    facts = casebook.case(case_id) or {}
    x1, y1, x2, y2 = item["bbox"]
    policy = item["policy"] or {}
    others = []
    for cand in item["candidates"][1:]:
        photo = casebook.thumb(cand["image_key"]) is not None
        others.append({**cand, "has_thumb": photo, "case": casebook.case(cand["id_formatted"])})
    return {
        "facts": facts,
        "photos": casebook.photos(case_id),
        "others": others,
        "age_at_disappearance": _range(facts.get("age_min"), facts.get("age_max")),
        "age_today": _range(item["case"].get("current_age_min"), item["case"].get("current_age_max")),
        "face_size": f"{x2 - x1:.0f} × {y2 - y1:.0f} px",
        "threshold": policy.get("threshold"),
        "rule": policy.get("rule"),
        "gallery_size": policy.get("gallery_size", casebook.gallery_size()),
        "bundle_error": casebook.error,
    }


def create_app(ctx: ReviewContext) -> FastAPI:
    """Build the FastAPI application around a :class:`ReviewContext`."""
    app = FastAPI(title="namus-edge review", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["ts"] = _ts
    templates.env.globals.update(VERDICTS=VERDICTS, REASONS=REASONS, VERDICT_LABELS=VERDICT_LABELS)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    app.add_middleware(SessionMiddleware, secret_key=ctx.secret, session_cookie="namus_review",
                       max_age=ctx.config.session_max_age_s, same_site="strict", https_only=ctx.config.cookie_secure)

    # -- identity -------------------------------------------------------------------------------

    def bearer_user(request: Request) -> User | None:
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer " and header[7:].strip():
            return ctx.store.user_for_token(header[7:].strip())
        return None

    def session_user(request: Request) -> User | None:
        name = request.session.get("user")
        return ctx.store.get_user(name) if isinstance(name, str) else None

    def api_user(request: Request, *, posting: bool = False) -> User:
        user = bearer_user(request)
        if user is not None:
            return user
        user = session_user(request)
        if user is None:
            raise HTTPException(401, "authentication required (session or Authorization: Bearer)",
                                headers={"WWW-Authenticate": "Bearer"})
        if posting and not csrf_ok(request.session.get("csrf"), request.headers.get("x-csrf-token")):
            raise HTTPException(403, "missing or wrong X-CSRF-Token header")
        return user

    def csrf(request: Request) -> str:
        token = request.session.get("csrf")
        if not isinstance(token, str) or not token:
            token = new_csrf_token()
            request.session["csrf"] = token
        return token

    async def form_checked(request: Request) -> dict[str, str]:
        form = await request.form()
        if not csrf_ok(request.session.get("csrf"), form.get("csrf_token")):
            raise HTTPException(403, "missing or wrong CSRF token; reload the page")
        return {k: v for k, v in form.items() if isinstance(v, str)}

    def page(request: Request, name: str, user: User | None, code: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"user": user, "csrf_token": csrf(request),
                                                          "pending": ctx.store.count_pending() if user else 0,
                                                          **context}, status_code=code)

    def login_redirect() -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)

    # -- login ----------------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> Response:
        return page(request, "login.html", None, error=None)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await form_checked(request)
        name, password = form.get("username", ""), form.get("password", "")
        client = request.client.host if request.client else "?"
        if ctx.limiter.blocked(client, name):
            ctx.store.log(name or "?", "login_blocked", client=client)
            return page(request, "login.html", None, code=429, error="Too many failed logins; wait and retry.")
        user = ctx.store.authenticate(name, password)
        if user is None:
            ctx.limiter.failed(client, name)
            ctx.store.log(name or "?", "login_failed", client=client)
            return page(request, "login.html", None, code=401, error="Wrong user name or password.")
        ctx.limiter.succeeded(name)
        request.session.clear()
        request.session["user"] = user.name
        request.session["csrf"] = new_csrf_token()
        ctx.store.log(user.name, "login", client=client)
        return RedirectResponse("/queue", status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await form_checked(request)
        request.session.clear()
        return login_redirect()

    # -- pages ----------------------------------------------------------------------------------

    @app.get("/")
    def root(request: Request) -> Response:
        return RedirectResponse("/queue" if session_user(request) else "/login", status_code=303)

    @app.get("/queue", response_class=HTMLResponse)
    def queue(request: Request, status: str = "pending") -> Response:
        user = session_user(request)
        if user is None:
            return login_redirect()
        try:
            items = ctx.store.list_items(status)
        except StoreError as exc:
            raise HTTPException(400, str(exc)) from None
        return page(request, "queue.html", user, items=items, status=status)

    @app.get("/candidates/{event_id}", response_class=HTMLResponse)
    def card(request: Request, event_id: str) -> Response:
        user = session_user(request)
        if user is None:
            return login_redirect()
        item = ctx.store.get_item(event_id)
        if item is None:
            raise HTTPException(404, f"no candidate with event_id {event_id}")
        mine = next((v for v in reversed(item["verdicts"]) if v["user"] == user.name and v["current"]), None)
        return page(request, "card.html", user, item=item, view=card_view(item, ctx.casebook), mine=mine,
                    message=request.query_params.get("saved"))

    @app.post("/candidates/{event_id}/verdict")
    async def verdict_form(request: Request, event_id: str) -> Response:
        user = session_user(request)
        if user is None:
            return login_redirect()
        form = await form_checked(request)
        record_verdict(user, event_id, form.get("verdict", ""), form.get("reason", ""), form.get("note", ""))
        return RedirectResponse(f"/candidates/{event_id}?saved=1", status_code=303)

    @app.post("/candidates/{event_id}/release")
    async def release_form(request: Request, event_id: str) -> Response:
        user = session_user(request)
        if user is None:
            return login_redirect()
        await form_checked(request)
        if user.role != "admin":
            raise HTTPException(403, "only an admin releases a confirmed item")
        try:
            ctx.store.release(event_id, user.name)
        except StoreError as exc:
            raise HTTPException(409, str(exc)) from None
        return RedirectResponse(f"/candidates/{event_id}", status_code=303)

    @app.get("/crops/{event_id}.jpg")
    def crop(request: Request, event_id: str) -> Response:
        user = session_user(request) or bearer_user(request)
        if user is None:
            raise HTTPException(401, "authentication required")
        found = ctx.store.crop(event_id)
        if found is None:
            raise HTTPException(404, "no crop (never received, or purged by the retention policy)")
        jpeg, digest = found
        ctx.store.log(user.name, "view_crop", event_id=event_id, sha256=digest)
        return Response(jpeg, media_type="image/jpeg")

    @app.get("/case-photos/{image_key}.jpg")
    def case_photo(request: Request, image_key: str) -> Response:
        if (session_user(request) or bearer_user(request)) is None:
            raise HTTPException(401, "authentication required")
        data = ctx.casebook.thumb(image_key)
        if data is None:
            raise HTTPException(404, "no such case photo in the operator bundle")
        return Response(data, media_type="image/jpeg")

    @app.get("/metrics", response_class=HTMLResponse)
    def metrics_page(request: Request) -> Response:
        user = session_user(request)
        if user is None:
            return login_redirect()
        data = metrics.compute(ctx.store.metric_rows())
        return page(request, "metrics.html", user, m=data, svg=metrics.histogram_svg(data["histogram"]))

    @app.get("/metrics.csv")
    def metrics_csv(request: Request) -> Response:
        if (session_user(request) or bearer_user(request)) is None:
            raise HTTPException(401, "authentication required")
        return PlainTextResponse(metrics.to_csv(ctx.store.metric_rows()), media_type="text/csv",
                                 headers={"Content-Disposition": 'attachment; filename="review-metrics.csv"'})

    # -- JSON API -------------------------------------------------------------------------------

    def record_verdict(user: User, event_id: str, verdict: str, reason: str, note: str) -> dict[str, Any]:
        try:
            outcome = ctx.store.add_verdict(event_id, user.name, verdict, reason, note,
                                            context={"console_bundle": ctx.casebook.version, "role": user.role})
        except StoreError as exc:
            raise HTTPException(404 if "not a stored event" in str(exc) else 422, str(exc)) from None
        if ctx.feedback is not None:
            ctx.feedback.verdict(outcome, ctx.store.count_pending())
        return outcome.item

    @app.get("/api/candidates")
    def api_list(request: Request, status: str = "pending") -> Response:
        api_user(request)
        if status not in ("pending", "reviewed", "all"):
            raise HTTPException(400, f"status: {status!r} is not pending, reviewed or all")
        return JSONResponse({"items": ctx.store.list_items(status)})

    @app.get("/api/candidates/{event_id}")
    def api_get(request: Request, event_id: str) -> Response:
        api_user(request)
        item = ctx.store.get_item(event_id)
        if item is None:
            raise HTTPException(404, f"no candidate with event_id {event_id}")
        return JSONResponse(item)

    @app.post("/api/candidates/{event_id}/verdict")
    async def api_verdict(request: Request, event_id: str) -> Response:
        user = api_user(request, posting=True)
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise HTTPException(400, "body: expected a JSON object") from None
        if not isinstance(body, dict) or not isinstance(body.get("verdict"), str):
            raise HTTPException(422, f"verdict: expected one of {', '.join(VERDICTS)}")
        reason, note = body.get("reason", ""), body.get("note", "")
        if not isinstance(reason, str) or not isinstance(note, str):
            raise HTTPException(422, "reason and note must be strings")
        return JSONResponse(record_verdict(user, event_id, body["verdict"], reason, note))

    @app.get("/api/metrics")
    def api_metrics(request: Request) -> Response:
        api_user(request)
        return JSONResponse(metrics.compute(ctx.store.metric_rows()))

    return app
