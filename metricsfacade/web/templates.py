"""The route template a request matched (``/items/{item_id}``), never its raw path.

Each framework is asked only when the application has loaded it (found in ``sys.modules``),
so none is ever imported here. Templates are written ``{name}`` whatever the framework's own
syntax: Starlette's ``{id:int}``, Flask's and Django's ``<int:id>`` all become ``{id}``.

- Starlette and FastAPI: the router leaves the matched route in ``scope["route"]``; under a
  ``Mount`` the mount's own template is found again by matching the mounts only.
- Flask: a ``request_started`` receiver copies ``request.url_rule`` into the WSGI environ.
- Django: ``django.urls.resolve(path)`` after the response (its ``route``).
- Anything else: ``scope["metricsfacade.route"]`` / ``environ["metricsfacade.route"]``, set
  by the application, or the caller's own lookup.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any

#: Where an application (or the Flask receiver) puts the template for the middleware.
ROUTE_KEY = "metricsfacade.route"
#: Templates kept normalized; past it they are normalized again each time (memory stays flat).
CACHE_LIMIT = 4096

_STARLETTE_PARAM = re.compile(r"\{([^}:]+):[^}]*\}")
_ANGLE_PARAM = re.compile(r"<(?:[^>:]+:)?([^>]+)>")
_normalized: dict[str, str] = {}
_flask_lock = threading.Lock()
_flask_connected = False


def normalize(template: str) -> str:
    """``/items/{id:int}`` and ``/items/<int:id>`` → ``/items/{id}``; a leading ``/``."""
    cached = _normalized.get(template)
    if cached is not None:
        return cached
    text = _ANGLE_PARAM.sub(r"{\1}", _STARLETTE_PARAM.sub(r"{\1}", template))
    if not text.startswith("/"):
        text = "/" + text
    if len(_normalized) < CACHE_LIMIT:
        _normalized[template] = text
    return text


def asgi_route(scope: Mapping[str, Any], method: str, path: str, root_path: str) -> str | None:
    """The template of an ASGI request once the app has handled it; ``path`` and
    ``root_path`` are as the request arrived (a mount changes them in ``scope``)."""
    given = scope.get(ROUTE_KEY)
    if isinstance(given, str):
        return normalize(given)
    route = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        if scope.get("root_path", "") != root_path:  # the route is inside a Mount
            prefix = _mount_prefix(scope, method, path, root_path) or ""
            # A mounted app that is not a router leaves the Mount itself as the route.
            routing = sys.modules.get("starlette.routing")
            is_mount = routing is not None and isinstance(route, routing.Mount)
            template = prefix if is_mount and prefix else prefix + template
        return normalize(template)
    if "django" in sys.modules:
        return _django_route(path[len(root_path) :] if path.startswith(root_path) else path)
    return None


def wsgi_route(environ: Mapping[str, Any]) -> str | None:
    """The template of a WSGI request once the app has handled it."""
    given = environ.get(ROUTE_KEY)
    if isinstance(given, str):
        return normalize(given)
    if "django" in sys.modules:
        return _django_route(environ.get("PATH_INFO", ""))
    return None


def watch_flask() -> None:
    """If Flask is loaded, have every Flask app leave its matched rule in the environ
    (once per process; a cheap no-op afterwards or without Flask)."""
    global _flask_connected  # noqa: PLW0603 (one receiver per process)
    if _flask_connected or "flask" not in sys.modules:
        return
    flask = sys.modules["flask"]
    with _flask_lock:
        if not _flask_connected:
            flask.request_started.connect(_store_flask_rule, weak=False)
            _flask_connected = True


def _store_flask_rule(_sender: object, **_extra: object) -> None:
    rule = sys.modules["flask"].request.url_rule
    if rule is not None:
        environ: MutableMapping[str, Any] = sys.modules["flask"].request.environ
        environ.setdefault(ROUTE_KEY, rule.rule)


def _mount_prefix(scope: Mapping[str, Any], method: str, path: str, root_path: str) -> str | None:
    """The templates of the Mounts leading to the route (``/tenants/{tenant}``), found by
    matching the top router's mounts against the request as it arrived."""
    router = scope.get("router")
    routing = sys.modules.get("starlette.routing")
    if router is None or routing is None:
        return None

    target = scope.get("root_path", "")
    probe: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": root_path,
        "headers": scope.get("headers", []),
    }

    def descend(routes: Any, probe: dict[str, Any]) -> str | None:
        for candidate in routes:
            if not isinstance(candidate, routing.Mount):
                continue
            match, child = candidate.matches(probe)
            if match is not routing.Match.FULL:
                continue
            inner = {**probe, **child}
            if inner.get("root_path") == target:
                return str(candidate.path)
            deeper = descend(candidate.routes, inner)
            if deeper is not None:
                return str(candidate.path) + deeper
        return None

    return descend(getattr(router, "routes", ()), probe)


def _django_route(path: str) -> str | None:
    """Django's matched route for ``path`` (``items/<int:item_id>``), if it has one."""
    conf, urls = sys.modules.get("django.conf"), sys.modules.get("django.urls")
    if conf is None or urls is None or not conf.settings.configured:
        return None
    try:
        match = urls.resolve(path or "/")
    except urls.Resolver404:
        return None
    route = match.route
    return normalize(route) if isinstance(route, str) and route else None
