"""Sign in and out.

Signing in with an API key (a user's or the master key) mints a short-lived key for the
session through the keys API, with the calling key's scopes (the master key: an admin key);
the typed key is used for that one call and kept nowhere. The session id rotates; signing
out revokes the session's key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from ..gateway import GatewayError
from ..pages import GatewayDep, checked, optional_session, render, sessions
from ..security import csrf_ok
from ..sessions import COOKIE, Session

router = APIRouter()


def set_cookie(request: Request, response: Response, session: Session, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        session.sid,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.app.state.settings.cookie_secure,
    )


@router.get("/")
async def home(request: Request) -> Response:
    session = await optional_session(request)
    target = "/executions" if session is not None and session.signed_in else "/login"
    return RedirectResponse(target, status_code=303)


async def _login_page(request: Request, error: str | None = None, status: int = 200) -> Response:
    store = sessions(request)
    session = await optional_session(request)
    if session is None or session.signed_in:
        session = await store.anonymous()
    response = render(
        request, "login.html", {"csrf": session.csrf, "error": error}, status, session=None
    )
    set_cookie(request, response, session, request.app.state.settings.login_ttl_s)
    return response


@router.get("/login")
async def login_form(request: Request) -> Response:
    session = await optional_session(request)
    if session is not None and session.signed_in:
        return RedirectResponse("/executions", status_code=303)
    return await _login_page(request)


@router.post("/login")
async def login(
    request: Request,
    gateway: GatewayDep,
    api_key: Annotated[str, Form(max_length=512)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    before = await optional_session(request)
    if before is None or before.signed_in or not csrf_ok(before.csrf, csrf):
        return await _login_page(request, "The sign-in form expired; try again.", 403)
    key = api_key.strip()
    if not key:
        return await _login_page(request, "Enter an API key.", 422)
    store = sessions(request)
    try:
        who = await _mint(gateway, key, store.ttl_s)
    except GatewayError as exc:
        if exc.status in (401, 403):
            return await _login_page(request, "That API key is not valid.", 401)
        if exc.status == 429:
            return await _login_page(request, f"Too many sign-ins: {exc.message}", 429)
        return await _login_page(request, f"Could not sign in: {exc.message}", 503)
    session = await store.sign_in(before, **who)
    response = RedirectResponse("/executions", status_code=303)
    set_cookie(request, response, session, store.ttl_s)
    return response


async def _mint(gateway: GatewayDep, key: str, ttl_s: int) -> dict[str, Any]:
    """The session's own key: the calling key's scopes, expiring with the session (or with
    the calling key, when that expires sooner)."""
    body = {"name": "console session", "expires_in_s": ttl_s}
    try:
        minted = await gateway.call("POST", "/keys", key, json=body)
    except GatewayError as exc:
        if exc.status != 403:
            raise
        minted = await gateway.call("POST", "/keys", key, json={"name": "console session"})
    who: dict[str, Any] = {
        "key": minted["api_key"],
        "key_id": minted["key_id"],
        "role": minted.get("role") or "user",
        "scopes": tuple(minted.get("scopes") or ()),
        "name": "admin",
        "user_id": "",
    }
    if who["role"] != "admin":
        me = await gateway.get("/users/me", who["key"])
        who["user_id"] = me.get("user_id", "")
        who["name"] = me.get("name") or me.get("email") or who["user_id"]
    return who


@router.post("/logout")
async def logout(request: Request, gateway: GatewayDep) -> Response:
    session = await checked(request)
    try:
        await gateway.call("DELETE", f"/keys/{session.key_id}", session.key)
    except GatewayError as exc:
        if exc.status not in (401, 404):  # already gone: nothing left to revoke
            raise
    finally:
        await sessions(request).drop(session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
