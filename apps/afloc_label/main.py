"""AFLoc Label: annotation-free, text-prompted localization on chest X-rays as a MONAI Label app.

Start it with::

    monailabel start_server --app apps/afloc_label --studies demo/datastore \\
        --conf checkpoint demo/checkpoint --host 127.0.0.1 --port 8000

Models: ``afloc`` (segmentation: prompt -> named label + float heatmaps) and ``afloc_classify``
(classification: findings -> probabilities). Trainer: ``afloc_train`` (contrastive training on
every datastore image with a report). Report-driven drafts of the whole datastore:
``POST/GET/DELETE /afloc/draft`` (``lib.drafting``); the next draft to review: strategy
``afloc_review``. See ``docs/app.md``.

``--conf`` keys:

- ``checkpoint``: base AFLoc checkpoint folder served until a training run is published
  (default: ``$AFLOC_CHECKPOINT``, else ``<repo>/demo/checkpoint`` when it exists), or the
  published AFLoc ``.ckpt`` file (converted once into ``<model_dir>/imported``).
- ``text_model``: local folder of the published checkpoint's text model (with a ``.ckpt``).
- ``model_dir``: where training runs and the ``current`` link live (default ``<app>/model``).
- ``device``: ``auto`` (default), ``cpu`` or ``cuda[:N]``.
- ``preload``: load the model when the server starts (default ``true``).
- ``threads``: PyTorch CPU threads of the server process (default: a quarter of the cores, 1-4).
  Requests are small; with as many threads as cores, every other busy process stalls PyTorch's
  thread barriers (measured on 2 cores under load: 1 thread 0.13 s a prompt, 2 threads 0.2-2 s).
- ``enable_routes`` / ``disable_routes``: route groups switched on or off (``lib/route_policy.py``).
- ``cors_origins``: web origins allowed to call the server from a browser (default: none but its own).
- ``allow_remote``: ``true`` to listen on an address other than loopback (refused otherwise).
- ``infer_workers`` / ``infer_queue``: inference requests run at once (default 1) and waiting
  (default 16) in the worker pool; more get 429 with ``Retry-After`` (``lib.offload``).
- ``auth_algorithms``: token signature algorithms with ``MONAI_LABEL_AUTH_ENABLE`` (default ``RS256``).

Importing this module inside the server also installs JSON error replies on MONAI Label's
FastAPI app (``lib.http_errors``), a check that ``params`` is a JSON object (``lib.params_guard``),
worker pools for the heavy routes (``lib.offload``), the route checks (``lib.route_guard``, ``lib.session_guard``), CORS, authentication, bind and log
settings (``lib.security``; see ``docs/security.md``) and, when the ``lib/ohif_*.py`` modules exist,
the OHIF static-file fix and the AFLoc panel's endpoints.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

_APP_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _APP_DIR.parents[1]


def _use_repo_packages() -> None:
    """Import ``afloc_models``/``afloc_training`` from this checkout, also in training subprocesses.

    The checkout comes first on the path, here and in the subprocesses MONAI Label starts (they
    inherit ``PYTHONPATH``), so the app always runs the code next to it.
    """
    if not (_REPO_ROOT / "afloc_models").is_dir():
        return  # app copied elsewhere: rely on the installed packages
    root = str(_REPO_ROOT)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])


_use_repo_packages()

import afloc_models  # noqa: E402
from afloc_models.errors import ConfigError  # noqa: E402
from monailabel.config import settings  # noqa: E402
from monailabel.datastore.dicom import DICOMWebDatastore  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.datastore import Datastore  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: E402
from monailabel.interfaces.tasks.strategy import Strategy  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402

from lib import drafting, http_errors, offload, params_guard, route_guard, security, session_guard  # noqa: E402
from lib.checkpoints import ModelStore  # noqa: E402
from lib.datastore import AFLocDatastore, datastore_extensions  # noqa: E402
from lib.dicomweb_datastore import adopt  # noqa: E402
from lib.errors import BadRequestError, NotFoundError  # noqa: E402
from lib.ids import check_image_id  # noqa: E402
from lib.infers import AFLocClassifyTask, AFLocLocalizeTask  # noqa: E402
from lib.params import parse_bool  # noqa: E402
from lib.route_policy import RoutePolicy  # noqa: E402
from lib.served_model import ServedModel, describe_trained_on  # noqa: E402
from lib.strategies import AFLocReview  # noqa: E402
from lib.trainers import AFLocTrainTask  # noqa: E402

logger = logging.getLogger(__name__)

LOCALIZE_MODEL = "afloc"
CLASSIFY_MODEL = "afloc_classify"
TRAINER = "afloc_train"
REVIEW_STRATEGY = "afloc_review"


class AFLocLabelApp(MONAILabelApp):
    """MONAI Label app serving AFLoc (models are loaded lazily, on first use or at server start)."""

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]):
        conf = conf or {}
        self.model_dir = _path(conf.get("model_dir")) or Path(app_dir) / "model"
        self.store = ModelStore(
            self.model_dir, _base_checkpoint(conf.get("checkpoint")), text_model=_path(conf.get("text_model"))
        )
        self.served = ServedModel(self.store, device=conf.get("device", "auto"))
        self._preload = parse_bool(conf.get("preload"), "preload", True)
        self._threads = _thread_count(conf.get("threads"))
        self.draft_job = drafting.DraftJob(self.served, lambda: self.datastore(), self.model_dir / "draft_stats.json")
        self.route_policy = RoutePolicy.from_conf(conf)  # read by lib.route_guard on every request
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="AFLoc Label",
            description="Annotation-free localization of findings named in free text on chest X-rays (AFLoc)",
            version=afloc_models.__version__,
        )

    # ----------------------------------------------------------------- MONAI Label hooks
    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            remote = super().init_datastore()
            return adopt(remote) if isinstance(remote, DICOMWebDatastore) else remote
        return AFLocDatastore(
            self.studies,
            extensions=datastore_extensions(settings.MONAI_LABEL_DATASTORE_FILE_EXT),
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> Dict[str, InferTask]:
        return {
            LOCALIZE_MODEL: AFLocLocalizeTask(self.served, self.datastore),
            CLASSIFY_MODEL: AFLocClassifyTask(self.served),
        }

    def init_trainers(self) -> Dict[str, TrainTask]:
        return {TRAINER: AFLocTrainTask(self.store)}

    def init_strategies(self) -> Dict[str, Strategy]:
        return {**super().init_strategies(), REVIEW_STRATEGY: AFLocReview()}

    def info(self) -> Dict[str, Any]:
        """MONAI Label's ``/info`` plus ``trained_on``: what the served model was trained on."""
        info = super().info()
        info["trained_on"] = describe_trained_on(self.store.served())
        return info

    def on_init_complete(self) -> None:
        # Only the server calls this: training subprocesses keep PyTorch's own thread count.
        import torch

        torch.set_num_threads(self._threads)
        super().on_init_complete()
        if self._preload and self.store.served() is not None:
            threading.Thread(target=self._load_quietly, name="afloc-preload", daemon=True).start()

    def infer(self, request: Dict[str, Any], datastore: Optional[Datastore] = None) -> Dict[str, Any]:
        """Check the request before MONAI Label runs it.

        Unknown models get a 404 (MONAI Label's own reply is a bare 500). An image must be a
        datastore id, never a server path: MONAI Label would otherwise read any existing file
        it is given. The resolved path is passed on, so MONAI Label does not look the id up
        again. ``save_label`` (MONAI Label's own flag) saves a draft, never a ``final`` label.
        """
        model = request.get("model")
        if model not in self._infers:
            offered = ", ".join(sorted(self._infers))
            raise NotFoundError(f"unknown model {model!r}: this server offers {offered}")
        request = dict(request)
        image = request.get("image")
        if isinstance(image, str):
            if self._is_server_upload(image):
                request["image_id"] = None
            else:
                check_image_id(image)
                uri = (datastore or self.datastore()).get_image_uri(image)
                if not uri:
                    raise NotFoundError(f"image {image!r} is not in the datastore")
                request["image_id"] = image
                request["image"] = uri
        if parse_bool(request.pop("save_label", None), "save_label", False):
            request["save_draft"] = True  # the task refuses to store it under 'final'
        return super().infer(request, datastore)

    def batch_infer(self, request: Dict[str, Any]) -> Any:
        _refuse_in_server("batch inference", "POST /batch/infer/<model> without run_sync")
        return super().batch_infer(request)

    def scoring(self, request: Dict[str, Any]) -> Any:
        _refuse_in_server("scoring", "POST /scoring/<method> without run_sync")
        return super().scoring(request)

    # ----------------------------------------------------------------- helpers
    def _is_server_upload(self, path: str) -> bool:
        """Whether ``path`` is a file MONAI Label itself saved for this request (upload or session).

        ``params`` may override the image with any string, so a server path counts only when the
        request's own query names the session holding it, or when it is a temporary upload file
        written during this request (see ``lib.route_guard.current_request``).
        """
        if not os.path.isabs(path) or not os.path.exists(path):
            return False
        facts = route_guard.current_request()
        if facts is None:  # the request's context was lost (e.g. a thread pool that does not copy it)
            logger.warning("no request context for an uploaded image: accepting only a temp file from the last minute")
            facts = route_guard.RequestFacts(image=None, session_id=None, started=time.time() - 60.0)
        real = Path(path).resolve()
        if facts.session_id:
            sessions = self.sessions()
            session = sessions.get_session(facts.session_id, update_ts=False) if sessions is not None else None
            return session is not None and Path(session.image).resolve() == real
        tmp = Path(tempfile.gettempdir()).resolve()
        return real.parent == tmp and real.name.startswith("tmp") and real.stat().st_mtime >= facts.started - 1.0

    def _load_quietly(self) -> None:
        try:
            self.served.get()
        except Exception as exc:  # the first request will report it with a proper status
            logger.warning("could not preload the AFLoc model: %s", exc)


def _refuse_in_server(work: str, instead: str) -> None:
    """Refuse ``run_sync=true``: long work inside the server process blocks every client.

    MONAI Label runs a ``run_sync`` request on the server's event loop, where it stalls all other
    requests and keeps the server from acting on SIGTERM until it ends. Without ``run_sync``
    the same work runs in a subprocess that can be stopped (``DELETE /train/``).
    """
    if "monailabel.app" in sys.modules:  # the HTTP server; subprocesses never load it
        raise BadRequestError(f"run_sync is not supported for {work}: it would block the server; use {instead}")


def _path(value: Optional[str]) -> Optional[Path]:
    return Path(value).expanduser().resolve() if value else None


def _thread_count(value: Optional[str]) -> int:
    if value is None or str(value).strip() == "":
        return max(1, min(4, (os.cpu_count() or 1) // 4))
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(f"--conf threads must be a whole number, got {value!r}") from None
    if count < 1:
        raise ConfigError(f"--conf threads must be at least 1, got {count}")
    return count


def _base_checkpoint(conf_value: Optional[str]) -> Optional[Path]:
    explicit = conf_value or os.environ.get("AFLOC_CHECKPOINT")
    if explicit:
        return _path(explicit)
    demo = _REPO_ROOT / "demo" / "checkpoint"
    return demo if demo.is_dir() else None


def _app_instance() -> "AFLocLabelApp":
    from monailabel.interfaces.utils.app import app_instance

    return app_instance()


def _install_server_hooks() -> None:
    """Inside the server (``monailabel.app`` loaded): JSON errors and the OHIF static fix."""
    server = sys.modules.get("monailabel.app")
    fastapi_app = getattr(server, "app", None)
    if fastapi_app is None:
        return  # a training subprocess or a script: no HTTP server here
    http_errors.install(fastapi_app)
    params_guard.install(fastapi_app)
    offload.install(fastapi_app, settings.MONAI_LABEL_APP_CONF)
    drafting.install(fastapi_app, lambda: _app_instance().draft_job)
    # The OHIF viewer's static-file fix and the AFLoc panel's endpoints (POST /afloc/segments,
    # GET /afloc/findings).
    for module in ("ohif_static", "ohif_segments", "ohif_findings"):
        if (_APP_DIR / "lib" / f"{module}.py").is_file():
            try:
                importlib.import_module(f"lib.{module}").install(fastapi_app)
            except Exception:
                logger.exception("lib/%s.py failed to install; the OHIF viewer may not work fully", module)
    route_guard.install(fastapi_app)  # outermost: refuses disabled routes before anything reads a body
    session_guard.install(fastapi_app)
    security.install(fastapi_app, dict(settings.MONAI_LABEL_APP_CONF or {}))


_install_server_hooks()
