"""Client for the AFLoc Label server (MONAI Label 0.8.5's REST API plus the ``afloc`` model).

Every method is a blocking call meant for a worker thread; each takes an optional
:class:`CancelToken` that ends it promptly, and every request has a timeout. Nothing here
imports Slicer: the module's widget calls these methods and shows the results.

Endpoints used::

    GET    /auth/                               is authentication enabled?
    POST   /auth/token                          log in (form: username, password) -> access token
    GET    /info/                               server check, models, trainers
    HEAD   /datastore/image?image=ID            does the server have this image?
    PUT    /datastore/image?image=ID            upload (form: file, params)
    GET    /datastore/?output=all               datastore listing
    POST   /infer/<model>?image=ID&output=all   inference (form: params) -> multipart params + image
    GET    /datastore/label?label=ID&tag=TAG    download a label (e.g. a heatmap)
    PUT    /datastore/label?image=ID&tag=TAG    save a label (form: label, params)
    POST   /train/<trainer>                     start training (JSON body)
    GET    /train/?check_if_running=false       latest training task
    DELETE /train/                              stop training
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import multipart
from .cancel import CancelToken
from .errors import (
    AFLocClientError,
    AuthenticationRequiredError,
    ConsentRequiredError,
    NotAFLocServerError,
    ResultFormatError,
    ServerError,
)
from .prompts import join_prompts, split_prompts
from .transport import ProgressCallback, Response, Transport

DEFAULT_MODEL = "afloc"
DEFAULT_TRAINER = "afloc_train"
FINAL_TAG = "final"
DRAFT_TAG = "afloc_draft"
HEATMAP_TAG = "afloc_heatmap"
#: The label format asked for: a ``.seg.nrrd`` opens in Slicer with one segment per prompt.
RESULT_EXTENSION = ".seg.nrrd"

_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ServerInfo:
    """What ``GET /info/`` says about the server, checked to be AFLoc Label."""

    url: str
    name: str
    version: str
    model: str
    models: dict[str, Any]
    trainers: dict[str, Any]
    labels: list[str]

    @property
    def model_config(self) -> dict[str, Any]:
        """Default options of the segmentation model (``prompt``, ``threshold``, ...)."""
        config = self.models.get(self.model, {}).get("config", {})
        return config if isinstance(config, dict) else {}

    @property
    def default_threshold(self) -> float | None:
        value = self.model_config.get("threshold")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def trained_on(self) -> str | None:
        """What the served model was trained on, from its checkpoint (e.g. "demo: synthetic phantoms, ...")."""
        value = self.models.get(self.model, {}).get("trained_on")
        return str(value) if value else None


@dataclass(frozen=True)
class FindingResult:
    """The server's answer for one prompt.

    Attributes:
        label_value: the prompt's value in the server's label file (``i + 1`` for prompt ``i``).
        score: heat score of the finding (higher is more salient), as the server reports it.
        probability: zero-shot probability that the finding is present, when reported.
        boxes: one dict per connected region, pixel coordinates ``x0, y0, x1, y1`` (exclusive).
        heatmap_label, heatmap_tag: where the server stored this prompt's float heatmap.
    """

    prompt: str
    label_value: int
    score: float | None = None
    probability: float | None = None
    boxes: list[dict[str, Any]] = field(default_factory=list)
    heatmap_label: str | None = None
    heatmap_tag: str | None = None


@dataclass(frozen=True)
class InferResult:
    """One inference: the label file (saved locally) and per-prompt results."""

    image_id: str
    prompts: list[str]
    threshold: float | None
    label_path: Path | None
    findings: list[FindingResult]
    params: dict[str, Any]
    seconds: float

    @property
    def has_heatmaps(self) -> bool:
        return bool(self.findings) and all(f.heatmap_label for f in self.findings)

    @property
    def reading_note(self) -> str:
        """How the server read the maps, in a sentence or two for the status line (from the
        reply's ``reading``: ``mirror`` ``on`` / ``sides`` / ``off``, ``refine`` ``guided`` /
        ``off``); empty when the server says nothing (servers before ``reading``)."""
        reading = self.params.get("reading")
        if not isinstance(reading, dict):
            return ""
        mirror = READING_MIRROR_NOTES.get(str(reading.get("mirror")), "")
        refine = READING_REFINE_NOTES.get(str(reading.get("refine")), "")
        return " ".join(note for note in (mirror, refine) if note)


#: Status-line notes for the reply's ``reading`` (the OHIF panel shows the same sentences).
READING_MIRROR_NOTES = {
    "on": "Maps: mean of the image and its mirror.",
    "sides": "Maps: a prompt that names a side is the mean of the image and its mirror.",
}
READING_REFINE_NOTES = {"guided": "Heat follows the image's edges (guided filter)."}


@dataclass(frozen=True)
class TrainingStatus:
    """A MONAI Label training task as ``GET /train/`` reports it."""

    id: str
    status: str
    start: str = ""
    end: str = ""
    details: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.status in ("SUBMITTED", "RUNNING")

    @property
    def finished(self) -> bool:
        return self.status in ("DONE", "ERROR", "STOPPED")

    @classmethod
    def from_json(cls, payload: Any) -> "TrainingStatus":
        if not isinstance(payload, dict) or "status" not in payload:
            raise ResultFormatError(f"unexpected training status reply: {str(payload)[:200]}")
        details = payload.get("details") or []
        return cls(
            id=str(payload.get("id", "")),
            status=str(payload["status"]),
            start=str(payload.get("start_ts", "")),
            end=str(payload.get("end_ts", "")),
            details=[str(d) for d in details] if isinstance(details, list) else [str(details)],
        )


def image_id_for(name: str, content: bytes) -> str:
    """A datastore id for an image: its name made file-safe plus a digest of its content.

    The digest makes the id name one exact image: the same pixels re-opened in Slicer find the
    copy already on the server (no second upload), a different image with the same name does not.
    """
    slug = _ID_CHARS.sub("_", name).strip("._-")[:60] or "image"
    return f"{slug}-{hashlib.sha256(content).hexdigest()[:12]}"


class AFLocClient:
    """Blocking client for one AFLoc Label server; safe to share between threads."""

    def __init__(
        self,
        server_url: str,
        model: str = DEFAULT_MODEL,
        timeout: float = 30.0,
        infer_timeout: float = 600.0,
        token: str | None = None,
    ):
        """
        Args:
            server_url: ``http://host:port`` (the scheme may be left out).
            model: the segmentation model's name in ``/info/``.
            timeout: seconds any socket operation may wait for ordinary requests.
            infer_timeout: seconds to wait for an inference reply (a first run loads the model).
            token: access token of a server with authentication (see :meth:`login`).
        """
        self.transport = Transport(server_url, timeout=timeout, token=token)
        self.model = model
        self.infer_timeout = float(infer_timeout)

    @property
    def url(self) -> str:
        return self.transport.base_url

    @property
    def token(self) -> str | None:
        return self.transport.token

    # ------------------------------------------------------------------ authentication
    def auth_enabled(self, cancel: CancelToken | None = None) -> bool:
        """Whether the server has MONAI Label's authentication on (``GET /auth/``).

        A server without the ``/auth/`` route (404) has none.
        """
        response = self.transport.request("GET", "/auth/", cancel=cancel, ok_statuses=(404,))
        if response.status == 404:
            return False
        reply = response.json()
        return bool(reply.get("enabled")) if isinstance(reply, dict) else False

    def login(self, username: str, password: str, cancel: CancelToken | None = None) -> str:
        """Exchange a user name and password for an access token (``POST /auth/token``).

        The token is kept by this client (sent with every later request) and returned, so that
        the caller can hand it to other clients. Raises :class:`AuthenticationRequiredError` when
        the server refuses the credentials.
        """
        if not username:
            raise AuthenticationRequiredError(self.url, "no user name was given")
        body = urllib.parse.urlencode({"username": username, "password": password, "grant_type": "password"})
        try:
            response = self.transport.request(
                "POST", "/auth/token", body=body.encode("utf-8"),
                content_type="application/x-www-form-urlencoded", cancel=cancel, ok_statuses=(400, 401, 403),
            )
        except ServerError as exc:
            # Stock MONAI Label passes the identity provider's refusal on as a bare HTTP 500.
            raise AuthenticationRequiredError(
                self.url, f"the server refused the user name or password (HTTP {exc.status})"
            ) from None
        if response.status in (400, 401, 403):
            raise AuthenticationRequiredError(
                self.url, f"the server refused the user name or password (HTTP {response.status})"
            )
        reply = response.json()
        token = reply.get("access_token") if isinstance(reply, dict) else None
        if not token:
            raise AuthenticationRequiredError(self.url, "the server has authentication off or sent no token")
        self.transport.token = str(token)
        return str(token)

    # ------------------------------------------------------------------ server
    def check_connection(self, cancel: CancelToken | None = None) -> ServerInfo:
        """Ask ``/info/`` and check that this is a MONAI Label server offering the AFLoc model.

        Raises:
            ServerUnreachableError: nothing answers (server down, wrong host or port).
            NotAFLocServerError: something answers, but not MONAI Label with ``self.model``.
        """
        try:
            response = self.transport.request("GET", "/info/", cancel=cancel)
        except ServerError as exc:
            raise NotAFLocServerError(self.url, f"GET /info/ answered HTTP {exc.status} (is the URL right?)") from None
        try:
            info = response.json()
        except ResultFormatError:
            raise NotAFLocServerError(self.url, "GET /info/ did not answer JSON") from None
        if not isinstance(info, dict) or not isinstance(info.get("models"), dict):
            raise NotAFLocServerError(self.url, "its /info/ reply has no model list (not MONAI Label?)")
        models = info["models"]
        if self.model not in models:
            offered = ", ".join(sorted(models)) or "none"
            raise NotAFLocServerError(self.url, f"it offers no '{self.model}' model (models: {offered})")
        labels = models[self.model].get("labels", []) if isinstance(models[self.model], dict) else []
        return ServerInfo(
            url=self.url,
            name=str(info.get("name", "")),
            version=str(info.get("version", "")),
            model=self.model,
            models=models,
            trainers=info.get("trainers", {}) if isinstance(info.get("trainers"), dict) else {},
            labels=list(labels) if isinstance(labels, (list, dict)) else [],
        )

    # ------------------------------------------------------------------ images
    def has_image(self, image_id: str, cancel: CancelToken | None = None) -> bool:
        response = self.transport.request(
            "HEAD", "/datastore/image", {"image": image_id}, cancel=cancel, ok_statuses=(404,)
        )
        return response.status < 400

    def upload_image(
        self,
        path: str | Path,
        image_id: str,
        consent: bool,
        info: dict[str, Any] | None = None,
        cancel: CancelToken | None = None,
    ) -> str:
        """Send an image file to the server's datastore; returns the id the server stored.

        Args:
            consent: the user agreed that this image may leave the computer. Without it nothing
                is sent and :class:`ConsentRequiredError` is raised.
            info: image info to store with it (e.g. ``{"report": "..."}`` for training).
        """
        if not consent:
            raise ConsentRequiredError(
                f"image '{image_id}' is not on the server {self.url}; uploading it needs your consent "
                "(the image leaves this computer)"
            )
        path = Path(path)
        body, content_type = multipart.encode(
            {"params": json.dumps(info or {})}, [multipart.FilePart.from_path("file", path)]
        )
        response = self.transport.request(
            "PUT", "/datastore/image", {"image": image_id}, body, content_type, cancel=cancel
        )
        reply = response.json()
        return str(reply.get("image", image_id)) if isinstance(reply, dict) else image_id

    def ensure_image(
        self,
        path: str | Path,
        image_id: str,
        consent: bool,
        info: dict[str, Any] | None = None,
        cancel: CancelToken | None = None,
    ) -> tuple[str, bool]:
        """Make sure the server has the image: ``(image id, whether it was uploaded now)``."""
        if self.has_image(image_id, cancel=cancel):
            return image_id, False
        return self.upload_image(path, image_id, consent, info, cancel=cancel), True

    def datastore(self, cancel: CancelToken | None = None) -> dict[str, Any]:
        """The full datastore listing (``GET /datastore/?output=all``)."""
        reply = self.transport.request("GET", "/datastore/", {"output": "all"}, cancel=cancel).json()
        if not isinstance(reply, dict):
            raise ResultFormatError("datastore listing is not a JSON object")
        return reply

    def download_image(self, image_id: str, dest: str | Path, cancel: CancelToken | None = None) -> Path:
        response = self.transport.request("GET", "/datastore/image", {"image": image_id}, cancel=cancel)
        return _write(dest, response)

    # ------------------------------------------------------------------ inference
    def infer(
        self,
        image_id: str,
        prompts: str | Sequence[str],
        threshold: float | None = None,
        options: dict[str, Any] | None = None,
        dest_dir: str | Path | None = None,
        cancel: CancelToken | None = None,
        progress: ProgressCallback | None = None,
    ) -> InferResult:
        """Localise the prompts on a datastore image.

        Args:
            prompts: ``"a; b"`` or ``["a", "b"]``; each prompt becomes one segment.
            threshold: mask threshold on the ``[-1, 1]`` heatmap; None keeps the server default.
            options: further model options sent in ``params``.
            dest_dir: folder for the label file (a new temporary folder if None).
        """
        prompt_list = split_prompts(prompts) if isinstance(prompts, str) else split_prompts(join_prompts(prompts))
        params: dict[str, Any] = dict(options or {})
        params.update(
            {
                "prompt": join_prompts(prompt_list),
                "result_extension": RESULT_EXTENSION,
                "result_dtype": "uint8",
                "save_heatmap": True,
            }
        )
        if threshold is not None:
            params["threshold"] = float(threshold)
        body, content_type = multipart.encode({"params": json.dumps(params)})
        started = time.monotonic()
        response = self.transport.request(
            "POST",
            f"/infer/{self.model}",
            {"image": image_id, "output": "all"},
            body,
            content_type,
            timeout=self.infer_timeout,
            cancel=cancel,
            progress=progress,
        )
        seconds = time.monotonic() - started
        reply_params, label_part = _split_infer_reply(response)
        label_path = None
        if label_part is not None:
            folder = Path(dest_dir) if dest_dir else Path(tempfile.mkdtemp(prefix="afloc-"))
            folder.mkdir(parents=True, exist_ok=True)
            label_path = folder / _safe_filename(label_part.filename or f"{image_id}{RESULT_EXTENSION}")
            label_path.write_bytes(label_part.data)
        return _infer_result(image_id, prompt_list, threshold, label_path, reply_params, seconds)

    def download_label(
        self, label_id: str, tag: str, dest: str | Path, cancel: CancelToken | None = None
    ) -> Path:
        """Save the label ``label_id`` of tag ``tag`` to ``dest`` (a file, or a folder to put it in)."""
        response = self.transport.request("GET", "/datastore/label", {"label": label_id, "tag": tag}, cancel=cancel)
        return _write(dest, response)

    def fetch_heatmaps(
        self, result: InferResult, dest_dir: str | Path, cancel: CancelToken | None = None
    ) -> list[Path]:
        """Download each prompt's float heatmap (``[-1, 1]``) that the server stored; in prompt order."""
        if not result.has_heatmaps:
            raise ResultFormatError(
                "the server stored no heatmaps for this result (it needs a datastore image and save_heatmap)"
            )
        folder = Path(dest_dir)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, finding in enumerate(result.findings):
            if cancel:
                cancel.raise_if_cancelled("downloading heatmaps")
            response = self.transport.request(
                "GET", "/datastore/label", {"label": finding.heatmap_label, "tag": finding.heatmap_tag}, cancel=cancel
            )
            suffix = _suffix_of(response) or ".nii"
            paths.append(_write(folder / f"heatmap_{index}{suffix}", response))
        return paths

    # ------------------------------------------------------------------ labels
    def save_label(
        self,
        image_id: str,
        path: str | Path,
        tag: str = FINAL_TAG,
        info: dict[str, Any] | None = None,
        cancel: CancelToken | None = None,
    ) -> dict[str, Any]:
        """Store a label file (e.g. the edited ``.seg.nrrd``) for ``image_id`` under ``tag``."""
        body, content_type = multipart.encode(
            {"params": json.dumps(info or {})}, [multipart.FilePart.from_path("label", path)]
        )
        reply = self.transport.request(
            "PUT", "/datastore/label", {"image": image_id, "tag": tag}, body, content_type, cancel=cancel
        ).json()
        return reply if isinstance(reply, dict) else {"reply": reply}

    def save_final(
        self, image_id: str, path: str | Path, info: dict[str, Any] | None = None, cancel: CancelToken | None = None
    ) -> dict[str, Any]:
        """Accept: the reviewed segmentation becomes the image's ``final`` label."""
        return self.save_label(image_id, path, FINAL_TAG, info, cancel)

    def save_draft(
        self, image_id: str, path: str | Path, info: dict[str, Any] | None = None, cancel: CancelToken | None = None
    ) -> dict[str, Any]:
        """Keep draft: stored under ``afloc_draft``, not used as ground truth."""
        return self.save_label(image_id, path, DRAFT_TAG, info, cancel)

    # ------------------------------------------------------------------ training
    def start_training(
        self, params: dict[str, Any] | None = None, trainer: str = DEFAULT_TRAINER, cancel: CancelToken | None = None
    ) -> TrainingStatus:
        """Start training on the server's images with reports; refused (HTTP 429) while one runs."""
        body = json.dumps(params or {}).encode("utf-8")
        reply = self.transport.request(
            "POST", f"/train/{trainer}", body=body, content_type="application/json", cancel=cancel
        ).json()
        return TrainingStatus.from_json(reply)

    def training_status(self, cancel: CancelToken | None = None) -> TrainingStatus | None:
        """The latest training task, or None when the server has run none since it started."""
        response = self.transport.request(
            "GET", "/train/", {"check_if_running": False}, cancel=cancel, ok_statuses=(404,)
        )
        if response.status == 404:
            return None
        return TrainingStatus.from_json(response.json())

    def stop_training(self, cancel: CancelToken | None = None) -> TrainingStatus | None:
        """Stop the running training task; None when nothing was running."""
        reply = self.transport.request("DELETE", "/train/", cancel=cancel).json()
        return TrainingStatus.from_json(reply) if reply else None

    def wait_for_training(
        self,
        poll_seconds: float = 2.0,
        timeout: float | None = None,
        cancel: CancelToken | None = None,
        on_status: Callable[[TrainingStatus], None] | None = None,
    ) -> TrainingStatus:
        """Poll until the latest training task has finished; returns its final status.

        A cancel stops the waiting (and raises), not the training: use :meth:`stop_training`.
        """
        cancel = cancel or CancelToken()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.training_status(cancel=cancel)
            if status is None:
                raise AFLocClientError("the server reports no training task")
            if on_status:
                on_status(status)
            if status.finished:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise AFLocClientError(f"training still {status.status} after {timeout:g} s")
            if cancel.wait(poll_seconds):
                cancel.raise_if_cancelled("waiting for training")


# ---------------------------------------------------------------------- reply parsing
def _split_infer_reply(response: Response) -> tuple[dict[str, Any], multipart.Part | None]:
    """``(params, label part)`` from an infer reply; MONAI Label answers JSON when there is no label."""
    if response.content_type.startswith("multipart/"):
        parts = multipart.decode(response.body, response.content_type)
        if "params" not in parts:
            raise ResultFormatError("inference reply has no 'params' part")
        try:
            params = json.loads(parts["params"].text() or "{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ResultFormatError(f"inference 'params' part is not JSON ({exc})") from None
        return (params if isinstance(params, dict) else {}), parts.get("image")
    payload = response.json()
    return (payload if isinstance(payload, dict) else {}), None


def _infer_result(
    image_id: str,
    prompts: list[str],
    threshold: float | None,
    label_path: Path | None,
    params: dict[str, Any],
    seconds: float,
) -> InferResult:
    used = params.get("threshold", threshold)
    return InferResult(
        image_id=image_id,
        prompts=prompts,
        threshold=float(used) if isinstance(used, (int, float)) and not isinstance(used, bool) else threshold,
        label_path=label_path,
        findings=_findings(prompts, params),
        params=params,
        seconds=seconds,
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _findings(prompts: list[str], params: dict[str, Any]) -> list[FindingResult]:
    """Per-prompt results from the reply's ``prompts`` entries (the server keeps the request order)."""
    entries = params.get("prompts")
    if not isinstance(entries, list) or len(entries) != len(prompts):
        raise ResultFormatError(
            f"inference reply describes {len(entries) if isinstance(entries, list) else 'no'} prompts, "
            f"{len(prompts)} were sent"
        )
    results = []
    for index, (prompt, entry) in enumerate(zip(prompts, entries)):
        entry = entry if isinstance(entry, dict) else {}
        heatmap = entry.get("heatmap") if isinstance(entry.get("heatmap"), dict) else {}
        value = entry.get("label_value")
        boxes = entry.get("boxes")
        results.append(
            FindingResult(
                prompt=prompt,
                label_value=int(value) if isinstance(value, int) else index + 1,
                score=_number(entry.get("score")),
                probability=_number(entry.get("probability")),
                boxes=[b for b in boxes if isinstance(b, dict)] if isinstance(boxes, list) else [],
                heatmap_label=str(heatmap["label"]) if heatmap.get("label") else None,
                heatmap_tag=str(heatmap["tag"]) if heatmap.get("tag") else None,
            )
        )
    return results


def _safe_filename(name: str) -> str:
    # The server names the file; keep only its last component so it cannot escape dest_dir.
    return Path(name.replace("\\", "/")).name or "result"


def _suffix_of(response: Response) -> str:
    """File suffix from the reply's Content-Disposition (``.nii``, ``.nii.gz``, ``.nrrd``), or ''."""
    name = _disposition_filename(response)
    if not name:
        return ""
    lower = name.lower()
    for suffix in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd"):
        if lower.endswith(suffix):
            return suffix
    return Path(name).suffix


def _disposition_filename(response: Response) -> str | None:
    disposition = response.headers.get("content-disposition", "")
    match = re.search(r"filename\*=(?:UTF-8|utf-8)''([^;]+)", disposition) or re.search(
        r'filename="?([^";]+)"?', disposition
    )
    return _safe_filename(urllib.parse.unquote(match.group(1))) if match else None


def _write(dest: str | Path, response: Response) -> Path:
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / (_disposition_filename(response) or "download")
    dest.write_bytes(response.body)
    return dest
