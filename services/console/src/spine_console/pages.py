"""What every page handler shares: the templates, the session of the request, the CSRF
check, and rendering with the layout's context."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from . import __version__, filters
from .gateway import Gateway
from .security import csrf_ok
from .sessions import COOKIE, Session, Sessions

HERE = Path(__file__).parent
STATIC = HERE / "static"


def _static_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return f"{__version__}-{digest.hexdigest()[:10]}"


STATIC_VERSION = _static_version()

# autoescape everything, SVG included: agent outputs, errors and names are untrusted text
_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.globals["static"] = lambda path: f"/static/{STATIC_VERSION}/{path}"
filters.install(_env)
templates = Jinja2Templates(env=_env)


class SignInRequired(Exception):
    """The request has no signed-in session (or its key stopped working)."""


class CsrfRefused(Exception):
    """A state change without the session's CSRF token."""


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def sessions(request: Request) -> Sessions:
    store: Sessions = request.app.state.sessions
    return store


async def optional_session(request: Request) -> Session | None:
    cached = getattr(request.state, "session", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    session = await sessions(request).get(request.cookies.get(COOKIE))
    request.state.session = session
    return session


async def signed_in(request: Request) -> Session:
    session = await optional_session(request)
    if session is None or not session.signed_in:
        raise SignInRequired
    return session


async def checked(request: Request) -> Session:
    """A signed-in session whose CSRF token came with the request (form field ``csrf`` or
    the ``X-CSRF-Token`` header htmx sends)."""
    session = await signed_in(request)
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.method != "GET":
        form = await request.form()
        value = form.get("csrf")
        sent = value if isinstance(value, str) else None
    if not csrf_ok(session.csrf, sent):
        raise CsrfRefused
    return session


SessionDep = Annotated[Session, Depends(signed_in)]
CheckedDep = Annotated[Session, Depends(checked)]
GatewayDep = Annotated[Gateway, Depends(gateway)]


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    status: int = 200,
    session: Session | None = None,
) -> HTMLResponse:
    who = session if session is not None else getattr(request.state, "session", None)
    ctx = {"session": who, "path": request.url.path, **(context or {})}
    return templates.TemplateResponse(request, template, ctx, status_code=status)


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"
