"""A Starlette app recording through ``mp_common`` with the facade's ASGI app mounted at
``/metrics``."""

from __future__ import annotations

from mp_common import handle, m
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route


async def endpoint(request: Request) -> PlainTextResponse:
    status, body = handle(request.url.path, request.url.query)
    return PlainTextResponse(body, status_code=status)


app = Starlette(
    routes=[
        Route("/work", endpoint),
        Route("/bump", endpoint),
        Route("/latest", endpoint),
        Route("/pid", endpoint),
        Mount("/metrics", m.asgi_app()),
    ]
)
