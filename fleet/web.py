"""`edge-fleet serve`: the fleet view in a browser, behind a login.

A Starlette application rendering Jinja2 templates on the server, with plots as inline
SVG (`fleet.plots`): every asset ships in the package, nothing is fetched from elsewhere.
Pages: the fleet (gateways online or not, version, config, store depth, last heard), a
gateway (its devices up, degraded or down and why; its configuration version, the history
of pushes and the gateway's answers, the diff of the last change applied), a device (its machine's state
timeline, energy per state per day or shift, idle share, usage, starts, peak demand, any
tag's windows over a span, anomaly and limit episodes with their context) and the
completeness report. Every page but the login needs a session (a signed cookie).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import structlog
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fleet import config_history, queries
from fleet.auth import verify_password
from fleet.completeness import StoreReport, completeness, format_ranges
from fleet.config import FleetConfig
from fleet.plots import STATE_COLOURS, series_plot, state_timeline

log = structlog.get_logger(__name__)

HERE = Path(__file__).parent
SPANS = {"1h": dt.timedelta(hours=1), "24h": dt.timedelta(days=1), "7d": dt.timedelta(days=7),
         "30d": dt.timedelta(days=30)}
OPEN = ("/login", "/static/")
FAILED_LOGIN_DELAY_S = 0.5
"""A wrong password waits this long: a guesser gets two tries a second per connection."""


def make_app(config: FleetConfig) -> Starlette:
    serve = config.serve
    secret = (serve.session_secret.get_secret_value() if serve.session_secret
              else secrets.token_hex(32))
    if serve.session_secret is None:
        log.warning("fleet_session_secret_generated",
                    hint="logins end when the server restarts; set serve.session_secret")
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(default=True))
    env.globals.update(colours=STATE_COLOURS, ranges=format_ranges, states=queries.STATES)
    dsn = config.database.dsn.get_secret_value()

    def page(name: str, request: Request, status: int = 200, **values: Any) -> HTMLResponse:
        values.setdefault("user", request.session.get("user"))
        return HTMLResponse(env.get_template(name).render(**values), status_code=status)

    async def login_form(request: Request) -> Response:
        return page("login.html", request, error=None)

    async def login(request: Request) -> Response:
        form = await request.form()
        name, password = str(form.get("user", "")), str(form.get("password", ""))
        stored = serve.users.get(name)
        if stored is None or not verify_password(password, stored.get_secret_value()):
            await asyncio.sleep(FAILED_LOGIN_DELAY_S)
            log.warning("fleet_login_failed", user=name[:64])
            return page("login.html", request, status=401, error="wrong name or password")
        request.session.clear()
        request.session["user"] = name
        log.info("fleet_login", user=name)
        return RedirectResponse("/", status_code=303)

    async def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def fleet_page(request: Request) -> Response:
        now = dt.datetime.now(dt.UTC)
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            gateways = await queries.fleet(conn, now)
        return page("fleet.html", request, gateways=gateways, now=now)

    async def gateway_page(request: Request) -> Response:
        gateway = request.path_params["gateway"]
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            devices = await queries.devices(conn, gateway)
        report = next(iter(await asyncio.to_thread(_reports, dsn, gateway)), None)
        config, history, change = await asyncio.to_thread(_config_view, dsn, gateway)
        return page("gateway.html", request, gateway=gateway, devices=devices, report=report,
                    config=config, history=history, change=change)

    async def device_page(request: Request) -> Response:
        gateway, device = request.path_params["gateway"], request.path_params["device"]
        span_name = request.query_params.get("span", "24h")
        span = SPANS.get(span_name, SPANS["24h"])
        now = dt.datetime.now(dt.UTC)
        end = _moment(request.query_params.get("end")) or now
        start = end - span
        chosen = _moment(request.query_params.get("from")), _moment(request.query_params.get("to"))
        span_error = ""
        if chosen[0] is not None:  # a span of the user's own: from, to (or now)
            if chosen[0] < (chosen[1] or now):
                start, end = chosen[0], chosen[1] or now
            else:
                span_error = "“from” must be before “to”: showing the preset span"
        by = "shift" if request.query_params.get("by") == "shift" else "day"
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            tags = await queries.tags(conn, gateway, device)
            tag = request.query_params.get("tag") or (tags[0] if tags else "")
            segments = await queries.state_segments(conn, gateway, device, start, end)
            energy = await queries.energy(conn, gateway, device, start, end, by)
            points, unit = (await queries.series(conn, gateway, device, tag, start, end)
                            if tag else ([], ""))
            episodes = await queries.episodes(conn, gateway, device, start, end)
        return page("device.html", request, gateway=gateway, device=device, span=span_name,
                    spans=list(SPANS), end=end, start=start, by=by, tags=tags, tag=tag,
                    timeline=state_timeline(segments, start, end) if segments else "",
                    energy=energy, plot=series_plot(points, start, end, unit) if tag else "",
                    episodes=episodes, end_param=request.query_params.get("end", ""),
                    chosen=chosen, span_error=span_error)

    async def completeness_page(request: Request) -> Response:
        reports = await asyncio.to_thread(_reports, dsn, None)
        return page("completeness.html", request, reports=reports)

    routes = [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", fleet_page),
        Route("/completeness", completeness_page),
        Route("/gateway/{gateway}", gateway_page),
        Route("/gateway/{gateway}/device/{device}", device_page),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    async def require_login(request: Request,
                            call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path.startswith(OPEN) or request.session.get("user"):
            response = await call_next(request)
        else:
            response = RedirectResponse("/login", status_code=303)
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
            "frame-ancestors 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # The session first (outermost), then the login check that reads it.
    middleware = [Middleware(SessionMiddleware, secret_key=secret, session_cookie="fleet",
                             max_age=int(serve.session_max_age_s), same_site="strict",
                             https_only=serve.tls_cert_file is not None),
                  Middleware(BaseHTTPMiddleware, dispatch=require_login)]
    return Starlette(routes=routes, middleware=middleware)


def _reports(dsn: str, gateway: str | None) -> list[StoreReport]:
    with psycopg.connect(dsn) as conn:
        return completeness(conn, gateway)


def _config_view(dsn: str, gateway: str) -> tuple[config_history.ConfigStatus,
                                                  list[config_history.Outcome],
                                                  config_history.Change | None]:
    with psycopg.connect(dsn) as conn:
        try:
            return (config_history.config_status(conn, gateway)[0],
                    config_history.outcomes(conn, gateway),
                    config_history.last_change(conn, gateway))
        except psycopg.errors.UndefinedTable:  # a database the ingest has not migrated yet
            return config_history.ConfigStatus(gateway), [], None


def _moment(text: str | None) -> dt.datetime | None:
    """An ISO time from a query (UTC unless it says otherwise), or None."""
    if text and re.fullmatch(r"[0-9T:\-+.Z ]{10,40}", text):
        try:
            moment = dt.datetime.fromisoformat(text)
            return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        except ValueError:
            pass
    return None
