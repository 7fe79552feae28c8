"""Run MONAI Label's heavy endpoints in bounded thread pools instead of on the server's event loop.

MONAI Label 0.8.5 declares its endpoints ``async`` but does all their work synchronously:
inference, image decoding on upload, label copies, and readers waiting for a label still being
written all ran on the event loop, so one prompt stalled every other client (``GET /info/``
took as long as the prompt). :func:`install` replaces those routes with wrappers that run the
stock endpoint in a worker thread:

- ``POST /infer/{model}``: the *infer* pool (``--conf infer_workers``, default 1 worker, and
  ``--conf infer_queue``, default 16 requests waiting).
- datastore uploads, info updates, label downloads and removals: the *datastore* pool
  (4 workers, 32 waiting).

A request that finds its pool's workers busy and its queue full is answered at once with
``429 Too Many Requests`` and a ``Retry-After`` header (seconds, estimated from recent request
times). When a wrapped endpoint fails, the clean-ups it had queued as background tasks (MONAI
Label deletes an upload's temporary file only after a successful reply) are run before the error
reply, so a refused upload leaves no file behind.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

from afloc_models.errors import ConfigError

from lib.route_override import replace_route

__all__ = [
    "DATASTORE_QUEUE",
    "DATASTORE_WORKERS",
    "INFER_QUEUE",
    "INFER_WORKERS",
    "BoundedPool",
    "ServerBusy",
    "install",
]

#: Defaults of ``--conf infer_workers`` / ``--conf infer_queue``.
INFER_WORKERS = 1
INFER_QUEUE = 16
#: Datastore work is short (copies, small JSON writes) but may wait for a label being written.
DATASTORE_WORKERS = 4
DATASTORE_QUEUE = 32
#: Bounds of the ``Retry-After`` estimate, seconds.
RETRY_AFTER_RANGE = (1, 120)

logger = logging.getLogger(__name__)

# (method, path) -> pool name. Paths as FastAPI holds them (router prefix included).
_ROUTES: Dict[Tuple[str, str], str] = {
    ("POST", "/infer/{model}"): "infer",
    ("PUT", "/datastore/"): "datastore",
    ("PUT", "/datastore/image"): "datastore",
    ("PUT", "/datastore/image/info"): "datastore",
    ("PUT", "/datastore/label"): "datastore",
    ("PUT", "/datastore/label/info"): "datastore",
    ("GET", "/datastore/label"): "datastore",
    ("GET", "/datastore/label/info"): "datastore",
    ("GET", "/datastore/image"): "datastore",
    ("DELETE", "/datastore/"): "datastore",
    ("DELETE", "/datastore/image"): "datastore",
    ("DELETE", "/datastore/label"): "datastore",
}
_INSTALLED_FLAG = "_afloc_offload_installed"


class ServerBusy(Exception):
    """A pool's workers and queue are all taken (HTTP 429 with ``Retry-After``)."""

    def __init__(self, pool: str, retry_after: int):
        super().__init__(f"the server is busy with other {pool} requests; retry in {retry_after} s")
        self.pool = pool
        self.retry_after = retry_after


class BoundedPool:
    """A thread pool that takes at most ``workers + queue`` requests at a time.

    ``run`` refuses (raises :class:`ServerBusy`) instead of queueing without bound, so memory
    and waiting time stay bounded under a flood of requests.
    """

    def __init__(self, name: str, workers: int, queue: int):
        if workers < 1 or queue < 0:
            raise ValueError(f"pool {name!r}: workers must be >= 1 and queue >= 0, got {workers}, {queue}")
        self.name = name
        self.workers = workers
        self.capacity = workers + queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"afloc-{name}")
        self._lock = threading.Lock()
        self._taken = 0
        self._durations: deque[float] = deque(maxlen=20)

    @property
    def taken(self) -> int:
        """Requests running or waiting right now."""
        return self._taken

    def retry_after(self) -> int:
        """Seconds after which a refused request will likely find room (recent mean duration x queue)."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        rounds = max(1, math.ceil(self._taken / self.workers))
        low, high = RETRY_AFTER_RANGE
        return int(min(high, max(low, math.ceil(mean * rounds))))

    async def run(self, function: Callable[[], Any]) -> Any:
        """Run ``function()`` in a worker thread and return its result (or raise its error)."""
        with self._lock:
            if self._taken >= self.capacity:
                raise ServerBusy(self.name, self.retry_after())
            self._taken += 1

        def timed() -> Any:
            started = time.perf_counter()
            try:
                return function()
            finally:
                self._durations.append(time.perf_counter() - started)

        # The request's context variables (e.g. lib.route_guard's facts) follow it into the thread.
        future: Future = self._executor.submit(contextvars.copy_context().run, timed)
        # Released when the work really ends (also if the client went away and this await was
        # cancelled while the thread kept running), never earlier.
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: Future) -> None:
        with self._lock:
            self._taken -= 1


def pools_from_conf(conf: Optional[Mapping[str, str]]) -> Dict[str, BoundedPool]:
    """The infer and datastore pools, sized from ``--conf infer_workers`` / ``infer_queue``."""
    conf = conf or {}
    workers = _count(conf.get("infer_workers"), "infer_workers", INFER_WORKERS, minimum=1)
    queue = _count(conf.get("infer_queue"), "infer_queue", INFER_QUEUE, minimum=0)
    return {
        "infer": BoundedPool("infer", workers, queue),
        "datastore": BoundedPool("datastore", DATASTORE_WORKERS, DATASTORE_QUEUE),
    }


def offloaded(endpoint: Callable[..., Any], pool: BoundedPool) -> Callable[..., Any]:
    """An ``async`` endpoint with ``endpoint``'s signature that runs it in ``pool``."""

    @functools.wraps(endpoint)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        background = kwargs.get("background_tasks")
        try:
            return await pool.run(lambda: _drive(endpoint(*args, **kwargs)))
        except ServerBusy as busy:
            from fastapi import HTTPException

            raise HTTPException(
                status_code=429, detail=str(busy), headers={"Retry-After": str(busy.retry_after)}
            ) from None
        except BaseException:
            if background is not None:  # MONAI Label's clean-ups (temporary upload files)
                await _run_cleanups(background)
            raise

    return wrapper


def install(app: Any, conf: Optional[Mapping[str, str]] = None, routes: Iterable[Tuple[str, str]] = ()) -> Dict[str, BoundedPool]:
    """Replace the heavy routes of the FastAPI ``app`` with pooled wrappers (idempotent).

    ``conf``: the app's ``--conf`` values (pool sizes). ``routes``: extra ``(method, path)``
    pairs for the infer pool. Returns the pools (tests and ``/info`` may read their state).
    """
    from fastapi.routing import APIRoute

    existing = getattr(app.state, "afloc_pools", None)
    if getattr(app, _INSTALLED_FLAG, False) and existing is not None:
        return existing
    pools = pools_from_conf(conf)
    table = dict(_ROUTES)
    table.update({key: "infer" for key in routes})
    replaced = 0
    for route in _api_routes(app.router, set()):
        names = {table.get((method, route.path)) for method in route.methods} - {None}
        if not names:
            continue
        pool = pools[sorted(names)[0]]
        wrapped = APIRoute(
            route.path,
            offloaded(route.endpoint, pool),
            methods=sorted(route.methods),
            name=route.name,
            summary=route.summary,
            description=route.description,
            tags=route.tags,
            dependencies=route.dependencies,
            responses=route.responses,
            response_class=route.response_class,
            include_in_schema=route.include_in_schema,
            deprecated=route.deprecated,
            dependency_overrides_provider=route.dependency_overrides_provider,
        )
        for method in route.methods:
            replaced += replace_route(app, route.path, method, wrapped)
    app.state.afloc_pools = pools
    setattr(app, _INSTALLED_FLAG, True)
    logger.info(
        "heavy routes run in thread pools (%d routes; infer: %d workers + %d waiting)",
        replaced, pools["infer"].workers, pools["infer"].capacity - pools["infer"].workers,
    )
    return pools


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _api_routes(router: Any, seen: set[int]) -> list[Any]:
    """Every ``APIRoute`` of ``router`` and of the routers it includes (FastAPI >= 0.16x nests them)."""
    from fastapi.routing import APIRoute

    if id(router) in seen:
        return []
    seen.add(id(router))
    found = []
    for route in list(router.routes):
        if isinstance(route, APIRoute):
            found.append(route)
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found.extend(_api_routes(inner, seen))
    return found


def _drive(coroutine: Any) -> Any:
    """Run a stock ``async`` endpoint body (which never awaits) in this worker thread."""
    if not asyncio.iscoroutine(coroutine):
        return coroutine
    return asyncio.run(coroutine)


async def _run_cleanups(background: Any) -> None:
    try:
        await background()
    except Exception:  # a failed clean-up must not hide the request's own error
        logger.exception("clean-up after a failed request failed")


def _count(value: Optional[str], name: str, default: int, minimum: int) -> int:
    if value is None or str(value).strip() == "":
        return default
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(f"--conf {name} must be a whole number, got {value!r}") from None
    if count < minimum:
        raise ConfigError(f"--conf {name} must be at least {minimum}, got {count}")
    return count
