"""One router per resource; a route parses, calls its service and answers."""

from __future__ import annotations

from fastapi import Response
from pydantic import BaseModel


def answer(view: BaseModel, status_code: int = 200) -> Response:
    """A response model sent as built (FastAPI would dump and validate it once more)."""
    return Response(view.model_dump_json(), status_code=status_code, media_type="application/json")
