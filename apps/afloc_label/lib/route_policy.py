"""Which of MONAI Label's stock routes this server answers.

MONAI Label 0.8.5 mounts every one of its routers on the server, whatever the app needs. The
AFLoc Label product (Slicer, OHIF, curl) needs ``/info``, ``/infer``, ``/datastore``,
``/activelearning``, ``/train``, ``/ohif``, ``/proxy/dicom``, ``/auth`` and the API docs. The
other routes are grouped below and answered with 403 unless switched on with
``--conf enable_routes <group>[,<group>...]`` (``all`` for every group); ``--conf disable_routes``
switches needed groups off (e.g. ``train`` on a server that must never train).

Replacing or deleting the served weights (``PUT``/``DELETE /model/<name>``) is never allowed:
the served checkpoint changes only through a finished training run, which is checked before it
is published (``docs/security.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from afloc_models.errors import ConfigError

__all__ = ["GROUPS", "DEFAULT_OFF", "RoutePolicy", "route_group"]

#: Route groups: name -> (methods or "*", path prefixes, what the group does).
GROUPS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "model_download": ("GET", ("/model/",), "download the served model weights (GET /model/...)"),
    "logs": ("*", ("/logs",), "read the server log and nvidia-smi output (/logs/)"),
    "batch_infer": ("*", ("/batch/",), "run inference over the whole datastore (/batch/infer)"),
    "scoring": ("*", ("/scoring",), "run scoring tasks (/scoring/)"),
    "wsi": ("*", ("/infer/wsi",), "whole-slide-image inference (/infer/wsi...)"),
    "sessions": ("*", ("/session",), "upload images into temporary sessions (/session/)"),
    "dataset": ("GET", ("/datastore/dataset",), "download the whole datastore as a ZIP (/datastore/dataset)"),
    "reload": ("POST", ("/reload",), "drop the app instance and rebuild it (POST /reload)"),
    "datastore_delete": ("DELETE", ("/datastore",), "delete images and labels (DELETE /datastore/...)"),
    "train": ("*", ("/train",), "start, watch and stop training (/train/)"),
    "upload": ("PUT", ("/datastore/image", "/datastore/label", "/datastore/updatelabelinfo", "/datastore/"),
               "upload images, labels and infos (PUT /datastore/...)"),
}
#: Groups answered with 403 unless enabled: the product does not need them.
DEFAULT_OFF: frozenset[str] = frozenset(
    {"model_download", "logs", "batch_infer", "scoring", "wsi", "sessions", "dataset", "reload"}
)
_MODEL_WRITE_MESSAGE = (
    "{method} /model/... is disabled on this server: the served AFLoc checkpoint changes only through a "
    "finished training run (POST /train/afloc_train), which is validated before it is published; "
    "uploading or deleting weights over HTTP cannot be enabled"
)


def route_group(method: str, path: str) -> Optional[str]:
    """The group of a request (first match in :data:`GROUPS` order), or None for always-on routes."""
    for name, (methods, prefixes, _) in GROUPS.items():
        if methods != "*" and method != methods:
            continue
        if any(path == p.rstrip("/") or path.startswith(p) for p in prefixes):
            return name
    return None


@dataclass(frozen=True)
class RoutePolicy:
    """The set of enabled groups, from the app's ``--conf`` values."""

    enabled: frozenset[str]

    @classmethod
    def from_conf(cls, conf: Mapping[str, str]) -> "RoutePolicy":
        """Parse ``enable_routes`` / ``disable_routes`` (comma-separated group names, or ``all``)."""
        enable = _groups(conf.get("enable_routes"), "enable_routes")
        disable = _groups(conf.get("disable_routes"), "disable_routes")
        on = (set(GROUPS) - DEFAULT_OFF) | enable
        return cls(frozenset(on - disable))

    def refusal(self, method: str, path: str) -> Optional[tuple[int, str]]:
        """``(status, message)`` when the request's route is off, else None."""
        if path.startswith("/model/") and method in ("PUT", "DELETE", "POST", "PATCH"):
            return 405, _MODEL_WRITE_MESSAGE.format(method=method)
        group = route_group(method, path)
        if group is None or group in self.enabled:
            return None
        what = GROUPS[group][2]
        hint = (
            f"start the server with --conf enable_routes {group}"
            if group in DEFAULT_OFF
            else f"it was switched off with --conf disable_routes {group}"
        )
        return 403, f"this route is disabled on this server (group '{group}': {what}); {hint} (see docs/security.md)"


def _groups(value: Optional[str], key: str) -> set[str]:
    if value is None or not str(value).strip():
        return set()
    names = {n.strip() for n in str(value).split(",") if n.strip()}
    if "all" in names:
        return set(GROUPS)
    unknown = sorted(names - set(GROUPS))
    if unknown:
        raise ConfigError(
            f"--conf {key}: unknown route group(s) {', '.join(unknown)}; known: {', '.join(GROUPS)}, all"
        )
    return names

