"""The console's FastAPI application: pages, static files, security headers, and one
answer per failure (sign in again, 403 for a missing CSRF token, the gateway's own status
for its errors — a 404 page for another tenant's execution)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from redis.asyncio import Redis
from starlette.exceptions import HTTPException as StarletteHTTPException

from .gateway import Gateway, GatewayError
from .pages import STATIC, STATIC_VERSION, CsrfRefused, SignInRequired, is_htmx, render
from .routes import ROUTERS
from .security import SecurityHeaders
from .sessions import COOKIE
from .settings import ConsoleSettings, load


def create_app(settings: ConsoleSettings | None = None) -> FastAPI:
    settings = settings or load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from .sessions import Sessions

        redis = Redis.from_url(settings.redis_url)
        app.state.gateway = Gateway(settings.gateway_url, settings.gateway_timeout_s)
        app.state.sessions = Sessions(
            redis, settings.redis_prefix, settings.session_ttl_s, settings.login_ttl_s
        )
        try:
            yield
        finally:
            await app.state.gateway.aclose()
            await redis.aclose()

    app = FastAPI(
        title="AI Spine console",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.add_middleware(SecurityHeaders)
    app.mount(
        f"/static/{STATIC_VERSION}",
        StaticFiles(directory=STATIC),
        name="static",
    )
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        redis_ok = await request.app.state.sessions.ping()
        gateway_ok = await request.app.state.gateway.healthy()
        ready = redis_ok and gateway_ok
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "redis": redis_ok, "gateway": gateway_ok},
            status_code=200 if ready else 503,
        )

    @app.exception_handler(SignInRequired)
    async def sign_in_again(request: Request, _: Exception) -> Response:
        return _to_login(request)

    @app.exception_handler(CsrfRefused)
    async def csrf_refused(request: Request, _: Exception) -> Response:
        return render(
            request,
            "error.html",
            {
                "status": 403,
                "title": "Refused",
                "message": "The form's security token is "
                "missing or stale. Reload the page and try again.",
            },
            status=403,
        )

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        if exc.status == 401:  # the session's key expired or was revoked
            session = getattr(request.state, "session", None)
            if session is not None:
                await request.app.state.sessions.drop(session)
            return _to_login(request)
        # the gateway's 4xx is the answer to what was asked (403, 404, 409, 422...); its
        # 503 says "try again"; any other failure of its own is a bad gateway to the browser
        status = exc.status if 400 <= exc.status < 500 or exc.status == 503 else 502
        return render(
            request,
            "error.html",
            {"status": status, "title": _TITLES.get(status, "Error"), "message": exc.message},
            status=status,
        )

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}"
            for e in exc.errors()
        )
        return render(
            request,
            "error.html",
            {"status": 422, "title": "Bad request", "message": fields},
            status=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        title = "Not found" if exc.status_code == 404 else "Error"
        return render(
            request,
            "error.html",
            {"status": exc.status_code, "title": title, "message": str(exc.detail)},
            status=exc.status_code,
        )

    return app


_TITLES = {
    400: "Bad request",
    402: "Not enough credits",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    413: "Too large",
    422: "Not valid",
    429: "Slow down",
    502: "The gateway failed",
    503: "Unavailable",
}


def _to_login(request: Request) -> Response:
    if is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": "/login"})
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
