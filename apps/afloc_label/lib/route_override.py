"""Replace one of MONAI Label's routes on its FastAPI app with the app's own version.

Routes are looked up in the app's route list and in the routers it includes (FastAPI >= 0.16x
keeps included routers as entries of their own and caches their routes by a version counter,
which is bumped after the change). The replacement keeps the position, hence the priority.
"""

from __future__ import annotations

from typing import Any, Iterator

__all__ = ["replace_route"]


def _route_lists(router: Any, seen: set[int]) -> Iterator[tuple[Any, list]]:
    if id(router) in seen:
        return
    seen.add(id(router))
    yield router, router.routes
    for route in router.routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _route_lists(inner, seen)


def replace_route(app: Any, path: str, method: str, new_route: Any) -> bool:
    """Put ``new_route`` where the route for ``method path`` is; False when there is none."""
    replaced = False
    for router, routes in _route_lists(app.router, set()):
        for index, route in enumerate(routes):
            if getattr(route, "path", None) == path and method in (getattr(route, "methods", None) or ()):
                routes[index] = new_route
                replaced = True
                mark = getattr(router, "_mark_routes_changed", None)
                if callable(mark):
                    mark()
    if replaced:
        mark = getattr(app.router, "_mark_routes_changed", None)
        if callable(mark):
            mark()
    return replaced
