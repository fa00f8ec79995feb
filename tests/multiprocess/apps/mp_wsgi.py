"""A plain WSGI app recording through ``mp_common`` with the facade's WSGI app mounted at
``/metrics`` (werkzeug's DispatcherMiddleware, as docs/web.md shows)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mp_common import handle, m
from werkzeug.middleware.dispatcher import DispatcherMiddleware

REASONS = {200: "200 OK", 404: "404 Not Found"}


def work_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    status, body = handle(environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""))
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    start_response(REASONS[status], headers)
    return [body]


app = DispatcherMiddleware(work_app, {"/metrics": m.wsgi_app()})
