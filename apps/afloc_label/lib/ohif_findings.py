"""``GET /afloc/findings?image=<id>``: the findings an image's report states, as prompts.

The OHIF panel offers them as one-click prompts. The report is the datastore's (``report`` of the
image info: a report set with ``PUT /datastore/image/info``, a sidecar file, or a DICOM SR in the
PACS); the findings come from :func:`afloc_training.findings.report_findings`, the same
negation- and uncertainty-aware reader that drafts labels from reports, so the viewer and the
drafts agree on what a report says ("No pneumothorax." offers nothing).

Reply: ``{"image", "report", "report_source", "findings": [{"prompt", "finding", "sentence",
"certainty", "cue"}]}``; ``report`` is null when the image has none. A bad image id is a 400.
"""

from typing import Any, Dict

from lib.ids import check_image_id

__all__ = ["ROUTE", "findings_reply", "install"]

ROUTE = "/afloc/findings"
_INSTALLED_FLAG = "_afloc_ohif_findings"


def findings_reply(datastore: Any, image_id: str) -> Dict[str, Any]:
    """The reply for ``image_id`` (see the module docstring)."""
    from afloc_training.findings import report_findings

    check_image_id(image_id)
    info = datastore.get_image_info(image_id) or {}
    report = info.get("report")
    if not isinstance(report, str) or not report.strip():
        report = None
    return {
        "image": image_id,
        "report": report,
        "report_source": info.get("report_source"),
        "findings": [finding.to_dict() for finding in report_findings(report)],
    }


def install(fastapi_app: Any) -> None:
    """Register ``GET /afloc/findings`` on the server's FastAPI app (idempotent)."""
    if getattr(fastapi_app.state, _INSTALLED_FLAG, False):
        return
    from fastapi import Depends
    from fastapi.concurrency import run_in_threadpool
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import RBAC, User
    from monailabel.interfaces.utils.app import app_instance

    async def get_findings(image: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))) -> Dict[str, Any]:
        return await run_in_threadpool(findings_reply, app_instance().datastore(), image)

    fastapi_app.add_api_route(
        ROUTE,
        get_findings,
        methods=["GET"],
        summary="Findings stated in an image's report, as localization prompts (AFLoc panel)",
        tags=["AFLoc"],
    )
    setattr(fastapi_app.state, _INSTALLED_FLAG, True)
