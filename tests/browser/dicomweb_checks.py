"""Datastore calls against the DICOMweb-backed server, run inside the e2e network namespace.

Usage: python dicomweb_checks.py SERVER_URL ORTHANC_DICOMWEB_URL STUDY_UID LABEL_NRRD OUT_JSON

On the study's first series: an infer call that stores a draft and a heatmap (both then read
back), and ``PUT /datastore/label`` with tag ``final`` (a DICOM-SEG must appear in Orthanc).
Every reply's status and a short body go to OUT_JSON; tests/test_ohif_e2e.py asserts on them.
"""

from __future__ import annotations

import json
import sys

import requests


def main(server: str, dicomweb: str, study: str, label_file: str, out: str) -> int:
    def seg_series() -> list[str]:
        reply = requests.get(f"{dicomweb}/studies/{study}/series", timeout=30)
        reply.raise_for_status()
        return [s["0020000E"]["Value"][0] for s in reply.json() if s.get("00080060", {}).get("Value") == ["SEG"]]

    series = requests.get(f"{dicomweb}/studies/{study}/series", timeout=30).json()
    image = next(s["0020000E"]["Value"][0] for s in series if s.get("00080060", {}).get("Value") in (["CR"], ["DX"]))
    results: dict = {"image": image, "seg_before": seg_series()}

    params = {"prompt": "right pleural effusion", "save_draft": True, "save_heatmap": True}
    reply = requests.post(
        f"{server}/infer/afloc", params={"image": image, "output": "json"},
        files={"params": (None, json.dumps(params))}, timeout=300,
    )
    results["infer"] = {"status": reply.status_code, "body": reply.text[:2000]}
    if reply.ok:
        body = reply.json()
        for key, entry in (("draft", body.get("draft")), ("heatmap", body.get("heatmap"))):
            if entry:
                fetched = requests.get(f"{server}{entry['url']}", timeout=60)
                results[f"{key}_fetch"] = {"status": fetched.status_code, "bytes": len(fetched.content)}

    with open(label_file, "rb") as handle:
        reply = requests.put(
            f"{server}/datastore/label", params={"image": image, "tag": "final"},
            files={"label": ("label.nrrd", handle), "params": (None, json.dumps({"label_info": [{"name": "effusion"}]}))},
            timeout=300,
        )
    results["save_final"] = {"status": reply.status_code, "body": reply.text[:2000]}
    results["seg_after"] = seg_series()
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
