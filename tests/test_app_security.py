"""What a hostile or careless client can do to a running server (issue 18), probed over real HTTP.

Two servers: the session's shared one (default configuration: the routes the product does not
need are off) and one started with ``--conf enable_routes all`` for the routes that are off by
default. Every probe here succeeded, or crashed the endpoint with a 500, before the app's
``lib/route_guard.py``, ``lib/session_guard.py`` and ``lib/security.py`` existed.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
import requests

from conftest import APP_DIR, REPO_ROOT, free_port

README = REPO_ROOT / "README.md"


def assert_json_error(reply, status: int, *words: str) -> dict:
    assert reply.status_code == status, f"{reply.status_code}: {reply.text[:400]}"
    assert reply.headers["content-type"].startswith("application/json"), reply.text[:200]
    body = reply.json()
    for word in words:
        assert word.lower() in body["detail"].lower(), body
    return body


def infer(url: str, params: dict | str, timeout: float = 120, files: dict | None = None,
          headers: dict | None = None, **query):
    data = params if isinstance(params, str) else json.dumps(params)
    return requests.post(
        f"{url}/infer/afloc", params={"output": "json", **query},
        files={"params": (None, data), **(files or {})}, headers=headers, timeout=timeout,
    )


@pytest.fixture(scope="module")
def open_server(start_afloc_server):
    """A server with every optional route group on (sessions, logs, dataset, reload, ...)."""
    return start_afloc_server(conf={"enable_routes": "all"})


# ------------------------------------------------------------------ routes that are off
@pytest.mark.parametrize(
    "method, path, group",
    [
        ("GET", "/logs/", "logs"),
        ("GET", "/logs/gpu", "logs"),
        ("GET", "/model/afloc", "model_download"),
        ("GET", "/model/info/afloc", "model_download"),
        ("POST", "/batch/infer/afloc", "batch_infer"),
        ("POST", "/scoring/dice", "scoring"),
        ("PUT", "/session/", "sessions"),
        ("GET", "/datastore/dataset", "dataset"),
        ("POST", "/reload", "reload"),
        ("POST", "/infer/wsi/afloc", "wsi"),
    ],
)
def test_routes_the_product_does_not_need_are_off_by_default(afloc_server_url, method, path, group):
    reply = requests.request(method, afloc_server_url + path, timeout=30)
    assert_json_error(reply, 403, "disabled", f"enable_routes {group}")


def test_model_weights_cannot_be_replaced_or_deleted(afloc_server_url, open_server):
    for url in (afloc_server_url, open_server.url):  # not even with every optional group on
        reply = requests.put(f"{url}/model/afloc", files={"file": ("w.pt", b"not weights")}, timeout=30)
        assert_json_error(reply, 405, "training")
        assert_json_error(requests.put(f"{url}/model/nope", files={"file": ("w.pt", b"x")}, timeout=30), 405)
        assert_json_error(requests.delete(f"{url}/model/afloc", timeout=30), 405, "training")
    assert infer(afloc_server_url, {"prompt": "nodule"}, image="phantom_00000").status_code == 200


# ------------------------------------------------------------------ training requests
def test_bundle_path_never_reaches_the_training_process(afloc_server, tmp_path):
    # MONAI Label appends request['bundle_path'] to the training subprocess's PYTHONPATH.
    payload = tmp_path / "payload"
    payload.mkdir()
    marker = tmp_path / "ran.txt"
    (payload / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\n")
    for path, body in (
        ("/train/afloc_train", {"bundle_path": str(payload), "max_steps": 1}),
        ("/train/", {"afloc_train": {"bundle_path": str(payload), "max_steps": 1}}),
    ):
        reply = requests.post(afloc_server.url + path, json=body, timeout=30)
        assert_json_error(reply, 400, "bundle_path")
    time.sleep(3)
    assert not marker.exists()


@pytest.mark.parametrize(
    "path, body, status, words",
    [
        ("/train/nope", {}, 404, ["nope", "afloc_train"]),
        ("/train/afloc_train", {"max_steps": "many"}, 400, ["max_steps"]),
        ("/train/afloc_train", {"max_minutes": -1}, 400, ["max_minutes"]),
        ("/train/afloc_train", {"init": "yesterday"}, 400, ["init"]),
        ("/train/afloc_train", {"config": "/etc/afloc.yaml"}, 400, ["config", "afloc-train"]),
        ("/train/afloc_train", {"gpus": "0"}, 400, ["gpus"]),
        ("/train/afloc_train", [1, 2], 400, ["object"]),
        ("/train/afloc_train?run_sync=true", {}, 400, ["run_sync"]),
        ("/train/afloc_train?enqueue=true", {}, 400, ["enqueue"]),
    ],
)
def test_bad_training_requests_are_refused_before_a_process_starts(afloc_server_url, path, body, status, words):
    reply = requests.post(afloc_server_url + path, json=body, timeout=30)
    assert_json_error(reply, status, *words)


# ------------------------------------------------------------------ images outside the datastore
def test_infer_reads_only_datastore_images(afloc_server):
    # A file that looks like one of MONAI Label's own temporary uploads but is older than the request.
    source = afloc_server.studies / "phantom_00000.png"
    fd, planted = tempfile.mkstemp(prefix="tmp", suffix=".png")
    os.close(fd)
    try:
        shutil.copy(source, planted)
        os.utime(planted, (time.time() - 60, time.time() - 60))
        assert_json_error(infer(afloc_server.url, {"prompt": "nodule"}, image=planted), 400, "datastore image id")
        reply = infer(afloc_server.url, {"prompt": "nodule", "image": planted}, image="phantom_00000")
        assert_json_error(reply, 400, "datastore image id")
        reply = infer(afloc_server.url, {"prompt": "nodule", "image": planted},
                      files={"file": ("a.png", source.read_bytes())})
        assert_json_error(reply, 400, "datastore image id")
    finally:
        os.unlink(planted)
    # The client's own upload still works.
    reply = infer(afloc_server.url, {"prompt": "nodule"}, files={"file": ("a.png", source.read_bytes())})
    assert reply.status_code == 200, reply.text[:300]


def test_a_session_id_can_never_name_a_folder(afloc_server):
    # MONAI Label deletes <session store>/<session_id> when it holds a meta.info whose image is gone.
    victim = afloc_server.studies / "labels" / "victim_tag"
    victim.mkdir(parents=True, exist_ok=True)
    (victim / "meta.info").write_text(json.dumps({"name": "x", "image": "/nonexistent/image.png"}))
    store = Path.home() / ".cache" / "monailabel" / "sessions"
    for session_id in (os.path.relpath(victim, store), str(victim), "..", "final"):
        reply = infer(afloc_server.url, {"prompt": "nodule"}, image="phantom_00000", session_id=session_id)
        assert_json_error(reply, 400, "session_id")
    assert (victim / "meta.info").exists()
    shutil.rmtree(victim)


# ------------------------------------------------------------------ 5xx that were client mistakes
def test_unknown_strategy_and_missing_dicomweb_are_404(afloc_server_url):
    assert_json_error(requests.post(f"{afloc_server_url}/activelearning/nope", timeout=30), 404, "nope", "random")
    assert_json_error(requests.get(f"{afloc_server_url}/proxy/dicom/studies", timeout=30), 404, "dicomweb")
    assert requests.post(f"{afloc_server_url}/activelearning/random", timeout=30).status_code == 200


@pytest.mark.parametrize("route, query", [
    ("image/info", {"image": "phantom_00001"}),
    ("label/info", {"label": "phantom_00001", "tag": "final"}),
])
@pytest.mark.parametrize("raw, words", [
    ("[1, 2]", ["array"]), ("3", ["number"]), ('"text"', ["string"]), ("null", ["null"]),
    ("[" * 5000 + "]" * 5000, ["nested"]), ('{"a": ' * 40 + "1" + "}" * 40, ["nested"]),
])
def test_info_must_be_a_json_object(afloc_server_url, route, query, raw, words):
    reply = requests.put(f"{afloc_server_url}/datastore/{route}", params=query, data={"info": raw}, timeout=30)
    assert_json_error(reply, 400, *words)


def test_info_size_is_limited(afloc_server_url):
    big = json.dumps({"report": "x" * (300 * 1024)})
    reply = requests.put(f"{afloc_server_url}/datastore/image/info", params={"image": "phantom_00001"},
                         data={"info": big}, timeout=30)
    assert_json_error(reply, 413, "KiB")
    fine = requests.put(f"{afloc_server_url}/datastore/image/info", params={"image": "phantom_00001"},
                        data={"info": json.dumps({"note": "ok"})}, timeout=30)
    assert fine.status_code == 200, fine.text[:300]


def test_deeply_nested_params_and_long_file_names_are_400(afloc_server):
    assert_json_error(infer(afloc_server.url, '{"prompt": ' + "[" * 5000 + "]" * 5000 + "}", image="phantom_00000"),
                      400, "nested")
    png = (afloc_server.studies / "phantom_00000.png").read_bytes()
    name = "a" + ".x" * 200 + ".png"
    assert_json_error(infer(afloc_server.url, {"prompt": "nodule"}, files={"file": (name, png)}), 400, "name")
    reply = requests.put(f"{afloc_server.url}/datastore/image", params={"image": "long_name"},
                         files={"file": (name, png)}, timeout=60)
    assert reply.status_code == 400, reply.text[:300]
    reply = requests.put(f"{afloc_server.url}/datastore/label", params={"image": "phantom_00000", "tag": "afloc_draft"},
                         files={"label": ("l" + ".x" * 200 + ".nrrd", b"NRRD0004\n")}, timeout=60)
    assert reply.status_code == 400, reply.text[:300]


def test_invalid_params_json_names_curls_semicolon_rule(afloc_server_url):
    # What `curl -F 'params={"prompt": "a; b"}'` really sends.
    body = assert_json_error(infer(afloc_server_url, '{"prompt": "right pleural effusion', image="phantom_00000"),
                             400, "not valid json")
    assert "--form-string" in body["detail"] and "';'" in body["detail"]


def test_readme_curl_example_works_as_written(afloc_server_url):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    text = README.read_text(encoding="utf-8")
    match = re.search(r"(curl -s -X POST \"http://127\.0\.0\.1:8000/infer/afloc[^\n]*\\\n[^\n]*)", text)
    assert match, "README lost its /infer curl example"
    command = match.group(1).replace("http://127.0.0.1:8000", afloc_server_url)
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    reply = json.loads(result.stdout)
    assert [p["prompt"] for p in reply["prompts"]] == ["right pleural effusion", "cardiomegaly"], reply


# ------------------------------------------------------------------ exposure
def test_cors_allows_only_the_servers_own_origin(afloc_server_url):
    reply = requests.get(f"{afloc_server_url}/info/", headers={"Origin": "http://evil.example"}, timeout=30)
    assert reply.status_code == 200
    assert "access-control-allow-origin" not in {k.lower() for k in reply.headers}
    preflight = requests.options(
        f"{afloc_server_url}/datastore/label",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "PUT"}, timeout=30,
    )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in {k.lower() for k in preflight.headers}


def test_other_web_pages_cannot_change_anything(afloc_server_url):
    # A form on any web page can POST to 127.0.0.1 without CORS; the browser names the page's origin.
    evil = {"Origin": "http://evil.example"}
    reply = requests.post(f"{afloc_server_url}/train/afloc_train", headers={**evil, "Content-Type": "text/plain"},
                          data="{}", timeout=30)
    assert_json_error(reply, 403, "cross-site")
    assert_json_error(infer(afloc_server_url, {"prompt": "nodule"}, image="phantom_00000", headers=evil), 403)
    own = {"Origin": afloc_server_url}  # the server's own pages (OHIF at /ohif/)
    assert infer(afloc_server_url, {"prompt": "nodule"}, image="phantom_00000", headers=own).status_code == 200


def test_replies_never_show_the_servers_folders(afloc_server):
    root = str(afloc_server.studies.resolve())
    info = requests.get(f"{afloc_server.url}/datastore/image/info", params={"image": "phantom_00000"}, timeout=30)
    assert info.json()["path"] == "<datastore>/phantom_00000.png"
    for reply in (
        info,
        requests.get(f"{afloc_server.url}/datastore/", params={"output": "all"}, timeout=30),
        requests.post(f"{afloc_server.url}/activelearning/random", timeout=30),
        requests.get(f"{afloc_server.url}/info/", timeout=30),
        requests.put(f"{afloc_server.url}/datastore/label", params={"image": "phantom_00000", "tag": "afloc_draft"},
                     files={"label": ("l.nrrd", b"NRRD0004\nbroken")}, timeout=30),
    ):
        assert root not in reply.text and str(Path.home()) not in reply.text, reply.text[:500]


def test_report_text_is_not_logged(afloc_server):
    secret = "Patient Jane Roe-7781, small left apical pneumothorax"
    png = (afloc_server.studies / "phantom_00001.png").read_bytes()
    reply = requests.put(
        f"{afloc_server.url}/datastore/image", params={"image": "reported_upload"},
        files={"file": ("r.png", png), "params": (None, json.dumps({"report": secret}))}, timeout=60,
    )
    assert reply.status_code == 200, reply.text[:300]
    time.sleep(0.5)
    log = afloc_server.log.read_text(errors="replace")
    assert "reported_upload" in log  # the upload was logged, its report was not
    assert secret not in log and "Jane Roe" not in log
    requests.delete(f"{afloc_server.url}/datastore/image", params={"id": "reported_upload"}, timeout=30)


# ------------------------------------------------------------------ optional routes, when on
def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_session_uploads_cannot_write_outside_the_session(open_server, tmp_path):
    target = tmp_path / "slipped.txt"
    relative = "../" * 12 + str(target).lstrip("/")
    for name, data in (("slip.tar", _tar({relative: b"x"})), ("abs.tar", _tar({str(target): b"x"}))):
        reply = requests.put(f"{open_server.url}/session/", params={"uncompress": "true"},
                             files={"files": (name, data)}, timeout=30)
        assert_json_error(reply, 400, "outside")
    assert not target.exists()
    for name in ("..", "."):
        reply = requests.put(f"{open_server.url}/session/", files={"files": (name, b"x")}, timeout=30)
        assert_json_error(reply, 400, "file name")
    reply = requests.put(f"{open_server.url}/session/", params={"uncompress": "true"},
                         files={"files": ("notes.txt", b"x")}, timeout=30)
    assert_json_error(reply, 400, "archive")
    # A proper session still works, and inference runs on it.
    png = (open_server.studies / "phantom_00000.png").read_bytes()
    created = requests.put(f"{open_server.url}/session/", files={"files": ("p.png", png)}, timeout=30)
    assert created.status_code == 200, created.text[:300]
    session = created.json()
    assert str(Path.home()) not in created.text and session["session_info"]["image"].startswith("<sessions>/")
    reply = infer(open_server.url, {"prompt": "nodule"}, session_id=session["session_id"])
    assert reply.status_code == 200, reply.text[:300]


def test_optional_routes_answer_4xx_for_what_they_cannot_do(open_server):
    if shutil.which("nvidia-smi") is None:
        assert_json_error(requests.get(f"{open_server.url}/logs/gpu", timeout=30), 404, "nvidia-smi")
    assert_json_error(requests.get(f"{open_server.url}/datastore/dataset", timeout=30), 404, "final")
    assert_json_error(requests.get(f"{open_server.url}/session/not-a-session", timeout=30), 400, "session_id")
    assert_json_error(requests.delete(f"{open_server.url}/session/..%2F..%2Fx", timeout=30), 400, "session_id")


# ------------------------------------------------------------------ binding
def test_binding_beyond_loopback_needs_an_explicit_opt_in(afloc_server, tmp_path):
    log = tmp_path / "bind.log"
    command = [
        sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR),
        "--studies", str(afloc_server.studies), "--host", "0.0.0.0", "--port", str(free_port()),
        "--conf", "model_dir", str(tmp_path / "model"), "--conf", "preload", "false",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    with log.open("wb") as sink:
        process = subprocess.run(command, cwd=str(REPO_ROOT), env=env, stdout=sink, stderr=subprocess.STDOUT,
                                 timeout=180, start_new_session=True)
    text = log.read_text(errors="replace")
    assert process.returncode != 0, text[-2000:]
    assert "refusing to listen on 0.0.0.0" in text and "allow_remote" in text, text[-2000:]
    assert "Uvicorn running" not in text


# ------------------------------------------------------------------ the pure parts, without a server
@pytest.fixture(scope="module")
def app_lib():
    sys.path.insert(0, str(APP_DIR))
    try:
        import lib.route_guard
        import lib.route_policy
        import lib.security
        import lib.session_guard

        yield lib
    finally:
        sys.path.remove(str(APP_DIR))


def test_route_policy_conf_keys(app_lib):
    from afloc_models.errors import ConfigError

    policy = app_lib.route_policy.RoutePolicy
    assert policy.from_conf({}).refusal("POST", "/infer/afloc") is None
    assert policy.from_conf({"enable_routes": "sessions"}).refusal("PUT", "/session/") is None
    assert policy.from_conf({"disable_routes": "train"}).refusal("POST", "/train/afloc_train")[0] == 403
    assert policy.from_conf({"enable_routes": "all"}).refusal("PUT", "/model/afloc")[0] == 405
    with pytest.raises(ConfigError, match="nonsense"):
        policy.from_conf({"enable_routes": "logs,nonsense"})


def test_report_redaction_and_json_depth(app_lib):
    import logging

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "params: %s", ('{"report": "Jane Roe \\"x\\" 1", "a": 1}',), None)
    app_lib.security.ReportRedactor().filter(record)
    assert "Jane" not in record.getMessage() and '"a": 1' in record.getMessage()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", ({"report": "Jane Roe's note"},), None)
    app_lib.security.ReportRedactor().filter(record)
    assert "Jane" not in record.getMessage()
    assert app_lib.route_guard.json_depth('{"a": "[[[[", "b": [[{}]]}') == 4


def test_zip_members_outside_the_folder_are_refused(app_lib):
    import zipfile

    from lib.errors import BadRequestError

    for member in ("../evil.txt", "/abs.txt", "a/../../b.txt"):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(member, "x")
        with pytest.raises(BadRequestError, match="outside"):
            app_lib.session_guard.check_archive(buffer, "a.zip")
    link = io.BytesIO()
    with tarfile.open(fileobj=link, mode="w") as archive:
        info = tarfile.TarInfo("escape")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(info)
    with pytest.raises(BadRequestError, match="refused"):
        app_lib.session_guard.check_archive(link, "a.tar")


def test_bind_address_is_read_from_the_command_line(app_lib):
    bind = app_lib.security.bind_address
    assert bind(["monailabel", "start_server", "--app", "a"]) == "0.0.0.0"  # MONAI Label's default
    assert bind(["monailabel", "start_server", "-i", "127.0.0.1"]) == "127.0.0.1"
    assert bind(["pytest"]) is None
    with pytest.raises(Exception, match="allow_remote"):
        app_lib.security.check_bind_address({}, ["m", "start_server", "--host", "10.1.2.3"])
    assert app_lib.security.check_bind_address({}, ["m", "start_server", "--host", "::1"]) == "::1"
