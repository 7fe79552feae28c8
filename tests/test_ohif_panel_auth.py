"""The OHIF viewer and the AFLoc panel with authentication on, in a real headless Chromium.

``tests/browser/run_in_netns.sh ... auth`` runs, in a private network namespace, a local token
issuer (``tests/token_issuer.py``, the identity provider), Orthanc, the server with
``MONAI_LABEL_AUTH_ENABLE=true`` and ``tests/browser/ohif_auth_e2e.js``. This module checks what
it saw:

- without a token the viewer's page loads but its study list is refused (401) and the sign-in
  form says so; a wrong password is refused with a message;
- after signing in, every data request of the viewer and the panel carries the bearer token and
  none is refused; open (double-click), type, Enter draws the overlay;
- signed out, Enter shows "sign in" in the panel; a token the server rejects shows "rejected";
- signing in from the panel makes Enter work again.

Screenshots go to ``test-artifacts/ohif-auth/``; ``docs/images/ohif-auth-{signin,401}.png`` are
written when missing or when ``AFLOC_UPDATE_DOCS_IMAGES=1``. Needs root and the system packages of
``scripts/install_system_deps.sh``; without them the test is skipped, except under CI.
"""

from __future__ import annotations

import pytest

from tests.browser_runs import REPO_ROOT, keep_artifacts, read_result, require_stack, run_in_netns, server_log_tail

ARTIFACTS = REPO_ROOT / "test-artifacts" / "ohif-auth"
#: Screenshots copied to docs/images/ as ohif-auth-<name> (when missing or AFLOC_UPDATE_DOCS_IMAGES=1).
DOC_SHOTS = ("signin", "401")
PROMPT = "right pleural effusion"
RUN_TIMEOUT_S = 360

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(afloc_checkpoint, tmp_path_factory) -> dict:
    require_stack("the OHIF sign-in test")
    out = tmp_path_factory.mktemp("ohif-auth")
    launch = run_in_netns(out, [afloc_checkpoint, PROMPT, "CR", "auth"], RUN_TIMEOUT_S)
    keep_artifacts(out, ARTIFACTS, "auth", DOC_SHOTS)
    result = read_result(out / "auth-result.json")
    assert not launch.timed_out, f"the sign-in run took over {RUN_TIMEOUT_S} s\n{server_log_tail(out)}"
    assert launch.returncode == 0 and result.get("ok"), (
        f"auth run failed (exit {launch.returncode}): {result.get('error')}\n{launch.output_tail()}\n{server_log_tail(out)}"
    )
    return result


def test_without_a_token_the_viewer_asks_to_sign_in(run):
    start = run["atStart"]
    assert start["message"] == "The AFLoc server asks you to sign in before it shows studies."
    assert start["rows"] == 0
    assert any(path.startswith("/proxy/dicom/qido/studies") for path in start["refused"]), start
    assert run["wrongPassword"].startswith("Sign-in failed: Sign-in refused (signing in):"), run["wrongPassword"]
    assert "password" in run["wrongPassword"]


def test_signed_in_every_data_request_carries_the_token(run):
    assert run["signedInList"]["rows"] >= 2 and not run["signedInList"]["formShown"]
    marks = run["marks"]
    signed_in = [r for r in run["dataRequests"][marks["signedIn"] : marks["signedOut"]] if not r["path"].startswith("/auth/")]
    paths = {r["path"].split("/")[1] for r in signed_in}
    # The viewer's DICOMweb requests and the panel's own, all with the token, none refused.
    assert {"proxy", "infer", "info", "afloc", "datastore"} <= paths, sorted(paths)
    assert all(r["bearer"] for r in signed_in), [r for r in signed_in if not r["bearer"]]
    assert all(r["status"] < 400 for r in signed_in), [r for r in signed_in if r["status"] >= 400]
    assert run["infer"] == 200 and run["focusAtOpen"] == "afloc-prompt"
    assert run["drawn"]["signedIn"] == "uma" and run["drawn"]["label"]["total"] == 1955 * 1841
    assert run["panelAuthSummary"] == "Server sign-in: uma"


def test_signed_out_the_panel_says_sign_in(run):
    signed_out = run["signedOut"]
    assert signed_out["status"] == 401
    assert signed_out["message"].startswith("The AFLoc server asks you to sign in (localizing)")
    assert signed_out["sectionOpen"] and signed_out["alert"]


def test_a_rejected_token_is_named(run):
    assert run["pastedBad"].startswith("Sign-in failed: Sign-in refused (checking the token): invalid token"), run["pastedBad"]
    assert run["rejected"]["status"] == 401
    assert run["rejected"]["message"].startswith("The AFLoc server rejected your sign-in token (localizing): invalid token")


def test_signing_in_from_the_panel_runs_again(run):
    assert run["panelSignIn"] == "alice"
    assert run["again"]["status"] == 200
    assert run["again"]["label"] == run["drawn"]["label"]
    assert not run["pageErrors"], run["pageErrors"]
