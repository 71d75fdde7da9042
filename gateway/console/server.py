"""The console component: Starlette on uvicorn, on its own address (loopback unless TLS).

Pages are rendered on the server; a little JavaScript (static/console.js) replaces a page's
<main> with what the page's event stream sends (server-sent events: a fresh rendering whenever
it changes, checked twice a second). Operator actions are forms with a CSRF token; each one
done is an event in the outbox (`console.action`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.console._auth import LoginBrake, Session, Sessions, csrf_ok
from gateway.console._view import PAGES, e, render_main
from gateway.console.accounts import AccountError, Accounts
from gateway.console.settings import ConsoleConfig
from gateway.console.sources import Activity, Sources
from gateway.runtime.health import listen, serve_asgi
from gateway.runtime.supervisor import Handle

__all__ = ["Actions", "Activity", "Console", "Sources", "console_app"]

log = structlog.get_logger("gateway.console")
COOKIE = "sg_console"
_FORM_MAX = 4096
_STREAM_EVERY_S = 0.5
_HEARTBEAT_S = 15.0
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# action -> (the form field naming its target, the page to go back to)
_ACTIONS = {
    "reprint": ("job", "/printers"),
    "clear-screen": ("screen", "/devices"),
    "personalisation": ("state", "/overview"),
}
_STATIC = {"console.js": "text/javascript", "console.css": "text/css"}


@dataclass(frozen=True, slots=True)
class Actions:
    """What an operator may do, each a callable the composition root wires; None: not offered.

    `audit(data)` commits one `console.action` event to the outbox.
    """

    audit: Callable[[dict[str, Any]], Awaitable[None]]
    reprint: Callable[[str], Awaitable[bool]] | None = None  # a failed job's id -> requeued
    clear_screen: Callable[[str], Awaitable[bool]] | None = None  # a screen id -> cleared
    personalisation: Callable[[str], Awaitable[bool]] | None = None  # "pause" or "resume"


def console_app(
    config: ConsoleConfig,
    sources: Sources,
    actions: Actions,
    accounts: Accounts,
    closing: asyncio.Event | None = None,
) -> Starlette:
    """The console's pages, stream, login and actions, as an ASGI application."""
    h = _Handlers(config, sources, actions, accounts, closing or asyncio.Event())
    return Starlette(
        routes=[
            Route("/", h.home),
            Route("/login", h.login_page, methods=["GET"]),
            Route("/login", h.login, methods=["POST"]),
            Route("/logout", h.logout, methods=["POST"]),
            Route("/actions/{action}", h.act, methods=["POST"]),
            Route("/stream/{page}", h.stream),
            Route("/static/{name}", h.asset),
            Route("/{page}", h.page),
        ]
    )


class _Handlers:
    def __init__(
        self,
        config: ConsoleConfig,
        sources: Sources,
        actions: Actions,
        accounts: Accounts,
        closing: asyncio.Event,
    ) -> None:
        self.config, self.sources, self.actions, self.accounts = config, sources, actions, accounts
        self.closing = closing  # set when the daemon stops: event streams end
        self.sessions = Sessions(config.session_hours * 3600)
        self.brake = LoginBrake()
        self.static = {
            name: resources.files("gateway.console").joinpath("static", name).read_bytes()
            for name in _STATIC
        }

    def session_of(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE), time.time())

    def page_html(self, title: str, main: str, session: Session | None, stream: str = "") -> str:
        nav = ""
        if session is not None:
            links = "".join(f'<a href="/{p}">{e(label)}</a>' for p, label in PAGES.items())
            who = f"{session.account.name} ({session.account.role})"
            nav = (
                f'<nav>{links}<span class="who">{e(who)} <span id="live"></span></span>'
                f'<form method="post" action="/logout"><input type="hidden" name="csrf"'
                f' value="{e(session.csrf)}"><button>Log out</button></form></nav>'
            )
        attrs = f' data-stream="{e(stream)}"' if stream else ""
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title)} · {e(self.sources.config.store.id)}</title>"
            '<link rel="stylesheet" href="/static/console.css">'
            '<script src="/static/console.js" defer></script></head>'
            f"<body><header><h1>{e(self.sources.config.store.id)}</h1>{nav}</header>"
            f"<main{attrs}>{main}</main></body></html>"
        )

    def respond(
        self, body: str, status: int = 200, headers: dict[str, str] | None = None
    ) -> Response:
        return HTMLResponse(body, status_code=status, headers={**_HEADERS, **(headers or {})})

    def form_for(self, session: Session) -> Callable[..., str]:
        def form(action: str, label: str, **fields: str) -> str:
            if not session.account.may_act:
                return ""
            hidden = "".join(
                f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in fields.items()
            )
            return (
                f'<form method="post" action="{e(action)}" class="action">{hidden}'
                f'<input type="hidden" name="csrf" value="{e(session.csrf)}">'
                f"<button>{e(label)}</button></form>"
            )

        return form

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/overview", status_code=303)

    async def page(self, request: Request) -> Response:
        name = request.path_params["page"]
        if name not in PAGES:
            return self.respond(self.page_html("Not found", "<p>No such page.</p>", None), 404)
        session = self.session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        main = await render_main(name, self.sources, self.form_for(session))
        return self.respond(self.page_html(PAGES[name], main, session, f"/stream/{name}"))

    async def stream(self, request: Request) -> Response:
        name = request.path_params["page"]
        session = self.session_of(request)
        if name not in PAGES or session is None:
            return Response("log in first\n", status_code=401, headers=_HEADERS)

        async def events() -> AsyncIterator[str]:
            last, quiet = "", 0.0
            yield "retry: 1000\n\n"
            while self.session_of(request) is session and not self.closing.is_set():
                main = await render_main(name, self.sources, self.form_for(session))
                if main != last:
                    last, quiet = main, 0.0
                    yield (
                        "event: page\n"
                        + "".join(f"data: {line}\n" for line in main.split("\n"))
                        + "\n"
                    )
                elif quiet >= _HEARTBEAT_S:
                    quiet = 0.0
                    yield ": still here\n\n"
                with contextlib.suppress(TimeoutError):  # the daemon stops: end the stream
                    await asyncio.wait_for(self.closing.wait(), _STREAM_EVERY_S)
                quiet += _STREAM_EVERY_S

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={**_HEADERS, "X-Accel-Buffering": "no"},
        )

    async def login_page(self, request: Request) -> Response:
        return self.respond(self.page_html("Log in", _login_form(self.accounts), None))

    async def login(self, request: Request) -> Response:
        fields = await _form(request)
        name = fields.get("name", "").strip().lower()
        password = fields.get("password", "")
        address = request.client.host if request.client else "?"
        keys = (f"name:{name}", f"address:{address}")
        now = time.time()
        wait = self.brake.wait_s(keys, now)
        if wait > 0:
            log.warning("console login refused: too many failures", user=name, client=address)
            message = f"Too many failed logins: try again in {wait:.0f} s."
            body = self.page_html("Log in", _login_form(self.accounts, message), None)
            return self.respond(body, 429, {"Retry-After": str(int(wait) + 1)})
        try:
            account = await asyncio.to_thread(self.accounts.verify, name, password)
        except AccountError as exc:
            log.error("console self.accounts unreadable", error=str(exc))
            account = None
        if account is None:
            failures = self.brake.failed(keys, now)
            known = name in await asyncio.to_thread(_names, self.accounts)
            # An unknown name is not logged as typed: it may be a password in the wrong field.
            log.warning(
                "console login failed",
                user=name if known else "(unknown name)",
                client=address,
                failures=failures,
            )
            body = self.page_html(
                "Log in", _login_form(self.accounts, "Wrong name or password."), None
            )
            return self.respond(body, 401)
        self.brake.succeeded(keys)
        token, _ = self.sessions.open(account, now)
        log.info("console login", user=account.name, role=account.role, client=address)
        response = RedirectResponse("/overview", status_code=303, headers=_HEADERS)
        response.set_cookie(
            COOKIE,
            token,
            max_age=int(self.config.session_hours * 3600),
            httponly=True,
            samesite="strict",
            secure=self.config.tls,
            path="/",
        )
        return response

    async def logout(self, request: Request) -> Response:
        session = self.session_of(request)
        fields = await _form(request)
        if session is not None and csrf_ok(session, fields.get("csrf")):
            self.sessions.close(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303, headers=_HEADERS)
        response.delete_cookie(COOKIE, path="/")
        return response

    async def act(self, request: Request) -> Response:
        what = request.path_params["action"]
        session = self.session_of(request)
        if session is None:
            return self.respond(self.page_html("Refused", "<p>Log in first.</p>", None), 401)
        fields = await _form(request)
        if not csrf_ok(session, fields.get("csrf")):
            log.warning("console action refused: no valid CSRF token", user=session.account.name)
            body = self.page_html(
                "Refused", "<p>Refused: the form was not this console's.</p>", session
            )
            return self.respond(body, 403)
        account = session.account
        field, back = _ACTIONS.get(what, ("", ""))
        target = fields.get(field, "")
        handler = {
            "reprint": self.actions.reprint,
            "clear-screen": self.actions.clear_screen,
            "personalisation": self.actions.personalisation,
        }.get(what)
        if handler is None:
            return self.respond(self.page_html("Not found", "<p>No such action.</p>", session), 404)
        audit = {"action": what, "target": target, "user": account.name, "role": account.role}
        if not account.may_act:
            await self.actions.audit({**audit, "outcome": "refused: viewer"})
            log.warning("console action refused: viewer", user=account.name, action=what)
            body = self.page_html("Refused", "<p>Refused: a viewer may not act.</p>", session)
            return self.respond(body, 403)
        done = await handler(target)
        await self.actions.audit({**audit, "outcome": "done" if done else "nothing to do"})
        log.info("console action", user=account.name, action=what, target=target, done=done)
        return RedirectResponse(back, status_code=303, headers=_HEADERS)

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.static:
            return Response("not found\n", status_code=404)
        headers = {**_HEADERS, "Cache-Control": "max-age=300"}
        return Response(self.static[name], media_type=_STATIC[name], headers=headers)


def _names(accounts: Accounts) -> list[str]:
    try:
        return accounts.names()
    except AccountError:
        return []


def _login_form(accounts: Accounts, message: str = "") -> str:
    hint = ""
    if not _names(accounts):
        hint = (
            '<p class="hint">No console account yet. On the box, run'
            " <code>store-gateway console add-user NAME --role operator</code>.</p>"
        )
    shown = f'<p class="message">{e(message)}</p>' if message else ""
    return (
        f'<section class="login"><h2>Log in</h2>{shown}{hint}'
        '<form method="post" action="/login">'
        '<label>Name <input name="name" autocomplete="username" required></label>'
        '<label>Password <input name="password" type="password"'
        ' autocomplete="current-password" required></label>'
        "<button>Log in</button></form></section>"
    )


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _FORM_MAX:
            return {}
    return {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}


class Console:
    name = "console"
    requires = ("store",)

    def __init__(
        self, config: ConsoleConfig, sources: Sources, actions: Actions, accounts: Accounts
    ) -> None:
        self._config = config
        self._closing = asyncio.Event()
        self._app = console_app(config, sources, actions, accounts, self._closing)

    async def run(self, handle: Handle) -> None:
        c = self._config
        self._closing.clear()  # a restart after a failure serves streams again
        sock = listen(c.host, c.port)
        port = sock.getsockname()[1]
        url = f"{'https' if c.tls else 'http'}://{c.host}:{port}/"
        log.info("console listening", url=url)
        await serve_asgi(
            self._app,
            sock,
            lambda: handle.ready(url),
            certfile=str(c.tls_cert_file) if c.tls_cert_file else None,
            keyfile=str(c.tls_key_file) if c.tls_key_file else None,
            closing=self._closing,
        )
