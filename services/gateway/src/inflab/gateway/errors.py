"""Error responses that never fail themselves.

FastAPI's default 422 echoes each invalid ``input``: a body holding a lone surrogate then
cannot be encoded as UTF-8 and the error turns into a 500, and an echoed body may hold a
password. Here the input is left out and the rest is encoded ASCII-safe.
"""

from __future__ import annotations

import json

from fastapi import Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    errors = [{k: v for k, v in err.items() if k != "input"} for err in exc.errors()]
    body = json.dumps({"detail": jsonable_encoder(errors)}, ensure_ascii=True, default=str)
    return Response(body, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, media_type="application/json")


#: What FastAPI answers (400) for a body it cannot even decode, e.g. invalid UTF-8.
_UNPARSABLE_BODY = "There was an error parsing the body"


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's own handling, except that an undecodable body is a 422 like any other
    malformed JSON (and so keeps 400 free for what routes document it as)."""
    if exc.status_code == status.HTTP_400_BAD_REQUEST and exc.detail == _UNPARSABLE_BODY:
        return await validation_error(
            request, RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "body is not UTF-8 JSON"}])
        )
    return await http_exception_handler(request, exc)
