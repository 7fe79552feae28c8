"""MONAI Label's authentication, end to end, with a local token issuer (no network beyond loopback).

The issuer (``tests/token_issuer.py``) plays the part of a Keycloak realm as MONAI Label 0.8.5
uses it: ``GET <realm>`` returns the realm's RSA ``public_key``,
``<realm>/.well-known/openid-configuration`` names the token endpoint, which grants tokens for a
user name and password. The server runs with
``MONAI_LABEL_AUTH_ENABLE=true`` and every optional route group on, so that authentication (not
the route policy) is what refuses a request. Without ``lib/security.py``, MONAI Label refused
every token (PyJWT 2 needs the algorithms named) and ``POST /reload`` needed none.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from token_issuer import ADMIN, TokenIssuer

SESSION = "0c0ffee0-0000-1000-8000-000000000000"
# Routes hidden from /openapi.json (deprecated or include_in_schema=False) that still change things.
HIDDEN_MUTATING = [
    ("POST", "/reload"), ("PUT", "/datastore/"), ("DELETE", "/datastore/"), ("POST", "/train/"),
    ("POST", "/scoring/"), ("PUT", "/datastore/updatelabelinfo"), ("POST", "/proxy/dicom/studies"),
]


@pytest.fixture(scope="module")
def issuer():
    running = TokenIssuer()
    yield running
    running.close()


@pytest.fixture(scope="module")
def auth_server(start_afloc_server, issuer):
    return start_afloc_server(
        conf={"enable_routes": "all"},
        env={"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": issuer.realm},
    )


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def mutating_routes(url: str) -> list[tuple[str, str]]:
    schema = requests.get(f"{url}/openapi.json", timeout=30).json()
    values = {"model": "afloc", "strategy": "random", "method": "dice", "session_id": SESSION, "path": "studies"}
    routes = list(HIDDEN_MUTATING)
    for path, operations in schema["paths"].items():
        for method in operations:
            if method.upper() in ("POST", "PUT", "DELETE", "PATCH") and not path.startswith("/auth"):
                routes.append((method.upper(), path.format(**values)))
    return sorted(set(routes))


def test_every_mutating_route_is_refused_without_a_token(auth_server):
    routes = mutating_routes(auth_server.url)
    assert ("POST", "/infer/afloc") in routes and ("PUT", "/datastore/label") in routes and len(routes) > 20
    for method, path in routes:
        reply = requests.request(method, auth_server.url + path, timeout=30)
        expected = 405 if path.startswith("/model/") else 401  # weights never change over HTTP
        assert reply.status_code == expected, f"{method} {path}: {reply.status_code} {reply.text[:200]}"
    for path in ("/info/", "/datastore/", "/train/", "/proxy/dicom/qido/studies", "/afloc/findings?image=x"):
        assert requests.get(auth_server.url + path, timeout=30).status_code == 401, path


def test_the_viewers_own_files_load_without_a_token(auth_server):
    """The OHIF page must load before anyone can sign in; it holds no data (its data routes are 401)."""
    page = requests.get(f"{auth_server.url}/ohif/", timeout=30)
    config = requests.get(f"{auth_server.url}/ohif/app-config.js", timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert config.status_code == 200 and "afloc-label-sign-in" in config.text


def test_a_valid_token_opens_the_routes_its_roles_allow(auth_server, issuer):
    admin, user = bearer(issuer.token("alice")), bearer(issuer.token("uma"))
    assert requests.get(f"{auth_server.url}/info/", headers=user, timeout=30).status_code == 200
    reply = requests.post(f"{auth_server.url}/infer/afloc", params={"image": "phantom_00000", "output": "json"},
                          files={"params": (None, json.dumps({"prompt": "nodule"}))}, headers=user, timeout=120)
    assert reply.status_code == 200, reply.text[:300]
    valid = requests.get(f"{auth_server.url}/auth/token/valid", headers=user, timeout=30)
    assert valid.status_code == 200 and valid.json()["username"] == "uma"
    # Role checks: a plain user may not save labels, train or reload.
    refused = [
        requests.put(f"{auth_server.url}/datastore/label", params={"image": "phantom_00000", "tag": "afloc_draft"},
                     files={"label": ("l.nrrd", b"NRRD0004\n")}, headers=user, timeout=30),
        requests.post(f"{auth_server.url}/train/afloc_train", json={"max_steps": 1}, headers=user, timeout=30),
        requests.post(f"{auth_server.url}/reload", headers=user, timeout=30),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403], [r.text[:200] for r in refused]
    # The app's own replacement routes check tokens too.
    png_session = requests.put(f"{auth_server.url}/session/", files={"files": ("p.png", b"x")}, headers=user, timeout=30)
    assert png_session.status_code == 200, png_session.text[:300]
    # Route checks still apply to an admin.
    reply = requests.post(f"{auth_server.url}/train/afloc_train", json={"bundle_path": "/tmp"}, headers=admin, timeout=30)
    assert reply.status_code == 400 and "bundle_path" in reply.json()["detail"]


@pytest.mark.parametrize("case", ["other key", "expired", "alg none", "hs256 with the public key", "garbage", "no user"])
def test_forged_or_stale_tokens_are_401(auth_server, issuer, case):
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    claims = {"preferred_username": "alice", "realm_access": {"roles": [ADMIN]}, "exp": int(time.time() + 600)}
    token = {
        "other key": lambda: issuer.token("alice", key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "expired": lambda: issuer.token("alice", lifetime=-60),
        "alg none": lambda: jwt.encode(claims, None, algorithm="none"),
        "hs256 with the public key": lambda: _hs256(claims, issuer.public_pem),
        "garbage": lambda: "not.a.token",
        "no user": lambda: jwt.encode({k: v for k, v in claims.items() if k != "preferred_username"}, issuer.key,
                                      algorithm="RS256"),
    }[case]()
    reply = requests.post(f"{auth_server.url}/reload", headers=bearer(token), timeout=30)
    assert reply.status_code == 401, reply.text[:200]
    assert requests.get(f"{auth_server.url}/info/", headers=bearer(token), timeout=30).status_code == 401


def _hs256(claims: dict, secret: bytes) -> str:
    """An HS256 token keyed with the public key's PEM (the algorithm-confusion attack)."""
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())


def test_login_through_the_server(auth_server):
    reply = requests.post(f"{auth_server.url}/auth/token", data={"username": "alice", "password": "alice-pw"}, timeout=30)
    assert reply.status_code == 200, reply.text[:300]
    token = reply.json()["access_token"]
    assert requests.post(f"{auth_server.url}/reload", headers=bearer(token), timeout=60).status_code == 200
    wrong = requests.post(f"{auth_server.url}/auth/token", data={"username": "alice", "password": "nope"}, timeout=30)
    assert wrong.status_code == 401, wrong.text[:300]
    assert "password" in wrong.json()["detail"]


# --------------------------------------------------------------------------------------------
# The OHIF AFLoc panel against this server (its JavaScript in Node: real HTTP, no browser)
# --------------------------------------------------------------------------------------------

PANEL_JS = Path(__file__).resolve().parents[1] / "apps" / "afloc_label" / "lib" / "ohif" / "afloc_panel.js"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_ohif_panel_sends_the_token_and_names_401(auth_server, issuer):
    """No token: "sign in"; a bad one: "rejected"; after signing in every request carries it."""
    script = (
        f"global.window = {{}}; require({json.dumps(str(PANEL_JS))}); const panel = window.__aflocPanel;"
        "const base = process.argv[1]; const realFetch = fetch; const sent = [];"
        # The page's requests are relative to its origin; here the server's address is put in front.
        "global.fetch = (url, options) => { sent.push((options && options.headers && new Headers(options.headers).get('Authorization')) || null);"
        "  return realFetch(url.startsWith('/') ? base + url : url, options); };"
        "const info = async () => { try { return (await panel.request('/info/', {}, 'reading the server info')).status; }"
        "  catch (e) { return e.message; } };"
        "(async () => { const out = {};"
        "out.none = await info();"
        "panel.setToken('not.a.token', 'x'); out.bad = await info(); panel.setToken(null);"
        "try { await panel.signInWith({username: 'uma', password: 'wrong'}); } catch (e) { out.wrongPassword = e.message; }"
        "try { await panel.signInWith({token: 'not.a.token'}); } catch (e) { out.badPasted = e.message; }"
        "out.header = panel.authHeader();"
        "out.signedIn = (await panel.signInWith({username: 'uma', password: 'uma-pw'})).user;"
        "sent.length = 0; out.after = await info(); out.sentAfter = sent.slice();"
        "const form = new FormData(); form.append('params', JSON.stringify({prompt: 'nodule'}));"
        "out.infer = (await panel.request('/infer/afloc?image=phantom_00000&output=json', {method: 'POST', body: form}, 'localizing')).status;"
        "out.pasted = (await panel.signInWith({token: 'Bearer ' + process.argv[2]})).user;"
        "console.log(JSON.stringify(out)); })().catch((e) => { console.error(e); process.exit(1); });"
    )
    done = subprocess.run(
        ["node", "-e", script, auth_server.url, issuer.token("alice")], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["none"].startswith("The AFLoc server asks you to sign in (reading the server info)"), out
    assert out["bad"].startswith("The AFLoc server rejected your sign-in token (reading the server info): invalid token"), out
    assert out["wrongPassword"].startswith("Sign-in refused (signing in):") and "password" in out["wrongPassword"], out
    assert out["badPasted"].startswith("Sign-in refused (checking the token): invalid token"), out
    assert out["header"] is None  # failed sign-ins keep no token
    assert out["signedIn"] == "uma"
    assert out["after"] == 200 and out["sentAfter"][0].startswith("Bearer ey"), out
    assert out["infer"] == 200
    assert out["pasted"] == "alice"
