"""The console's pages (``/ui/...``): sign in and out here; everything else a page shows, its script fetches from the
public API with the session cookie (gateway.auth reads it) and the CSRF header (static/console.js)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.pricing import FREE
from gateway.auth import Authenticator, Principal
from gateway.console.session import COOKIE, CSRF_HEADER, TTL_S, Session, SessionStore
from gateway.errors import GatewayError
from gateway.services import services

HERE = Path(__file__).parent
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff",
                    "referrer-policy": "same-origin", "x-frame-options": "DENY"}
MAX_FORM_BYTES = 16 * 1024
LOGIN, HOME = "/ui/login", "/ui/playground"

templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescaping on
router = APIRouter(include_in_schema=False)


def secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    response.headers.setdefault("cache-control", "no-store")
    return response


class SecuredStatic:
    """The static files, with the console's security headers on every answer."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.raw = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.raw]
            await send(message)

        await self.app(scope, receive, send_secured)


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/ui/static", SecuredStatic(StaticFiles(directory=str(HERE / "static"))), name="ui-static")


def _redirect(to: str) -> Response:
    return secured(RedirectResponse(to, status_code=303))


def _store(request: Request) -> tuple[Authenticator, SessionStore]:
    auth = services(request).auth
    assert auth.sessions is not None  # built with the services (gateway.services)
    return auth, auth.sessions


def _same_origin(request: Request) -> bool:
    """A browser's form POST names its origin; one from another site is refused (login CSRF)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in parsed.items()}


def _render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    return secured(templates.TemplateResponse(request, name, context, status_code=status))


async def _signed_in(request: Request) -> tuple[Session, Principal] | None:
    """The session and its principal, re-derived now (a revoked key is signed out here); None: sign in."""
    auth, store = _store(request)
    session = await store.get(request.cookies.get(COOKIE))
    if session is None:
        return None
    try:
        return session, await auth.credential(session.credential)
    except GatewayError as e:
        if e.status == 401:
            await store.delete(session.id)
            return None
        raise


async def _page(request: Request, template: str, page: str, **context: Any) -> Response:
    found = await _signed_in(request)
    if found is None:
        response = _redirect(LOGIN)
        response.delete_cookie(COOKIE, path="/")
        return response
    session, principal = found
    who = principal.alias or principal.key_id or principal.user_id or principal.id
    return _render(request, template, page=page, csrf=session.csrf, principal=principal, who=who,
                   is_admin=principal.is_admin, **context)


@router.get("/ui")
@router.get("/ui/")
async def index() -> Response:
    return _redirect(HOME)


@router.get(LOGIN)
async def login_form(request: Request) -> Response:
    if await _signed_in(request) is not None:
        return _redirect(HOME)
    return _render(request, "login.html", page="login")


@router.post(LOGIN)
async def login(request: Request) -> Response:
    if not _same_origin(request):
        return _render(request, "login.html", 403, page="login", error="This sign-in came from another site.")
    key = (await _form(request)).get("key", "").strip()
    if not key:
        return _render(request, "login.html", 401, page="login", error="Enter a key.")
    auth, store = _store(request)
    try:
        await auth.credential(key)
    except GatewayError as e:
        message = "That key was not accepted." if e.status == 401 else e.message
        return _render(request, "login.html", e.status, page="login", error=message)
    session = await store.create(key)
    response = _redirect(HOME)
    response.set_cookie(COOKIE, session.id, max_age=TTL_S, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    _, store = _store(request)
    session = await store.get(request.cookies.get(COOKIE))
    if session is not None:
        token = request.headers.get(CSRF_HEADER) or (await _form(request)).get("csrf")
        if not session.csrf_ok(token) or not _same_origin(request):
            return secured(Response("Missing or wrong CSRF token.", status_code=403, media_type="text/plain"))
        await store.delete(session.id)
    response = _redirect(LOGIN)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/ui/playground")
async def playground(request: Request) -> Response:
    prices = {m: {"input": pr.input, "output": pr.output} for m, pr in services(request).prices.items()
              if pr != FREE}
    return await _page(request, "playground.html", "playground", prices=prices)


def _plain_page(page: str) -> Callable[[Request], Awaitable[Response]]:
    async def show(request: Request) -> Response:
        return await _page(request, f"{page}.html", page)
    show.__name__ = page
    return show


# pages whose data the browser fetches from the public API: the server renders only the layout
for _name in ("models", "keys", "queue", "batches", "benchmarks"):
    router.add_api_route(f"/ui/{_name}", _plain_page(_name), methods=["GET"])


@router.get("/ui/benchmarks/compare")
async def compare(request: Request, a: str = "", b: str = "") -> Response:
    return await _page(request, "compare.html", "benchmarks", run_a=a[:64], run_b=b[:64])


@router.get("/ui/benchmarks/{run_id}")
async def benchmark(request: Request, run_id: str) -> Response:
    return await _page(request, "benchmark.html", "benchmarks", run_id=run_id[:64])
