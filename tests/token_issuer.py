"""A local token issuer playing a Keycloak realm as MONAI Label 0.8.5 uses one (tests only).

``GET <realm>`` returns the realm's RSA ``public_key``; ``<realm>/.well-known/openid-configuration``
names the token endpoint, which grants tokens for a user name and password (``USERS``). Used by
``tests/test_app_auth.py`` in process, and by ``tests/browser/run_in_netns.sh`` (``auth`` suite)
as a program inside the private network namespace:

    python tests/token_issuer.py --port PORT    # prints the realm URL, serves until killed
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

ADMIN, ANNOTATOR, USER = "monailabel-admin", "monailabel-annotator", "monailabel-user"
#: user name -> (password, realm roles)
USERS = {"alice": ("alice-pw", [ADMIN, ANNOTATOR, USER]), "uma": ("uma-pw", [USER])}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TokenIssuer:
    """An RSA-signing token issuer served over HTTP on 127.0.0.1."""

    def __init__(self, port: int = 0) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_b64 = base64.b64encode(der).decode()
        self.port = port or _free_port()
        self.realm = f"http://127.0.0.1:{self.port}/realms/afloc"
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _json(self, status: int, body: dict) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                if self.path == "/realms/afloc":
                    self._json(200, {"realm": "afloc", "public_key": issuer.public_b64})
                elif self.path == "/realms/afloc/.well-known/openid-configuration":
                    self._json(200, {"token_endpoint": issuer.realm + "/protocol/openid-connect/token"})
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                user = form.get("username", [""])[0]
                if form.get("grant_type") == ["password"] and USERS.get(user, ("",))[0] == form.get("password", [None])[0]:
                    self._json(200, {"access_token": issuer.token(user), "token_type": "bearer"})
                else:
                    self._json(401, {"error": "invalid_grant"})

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, user: str, roles: list | None = None, lifetime: float = 600, key=None, algorithm: str = "RS256") -> str:
        import jwt

        claims = {
            "preferred_username": user, "email": f"{user}@example.org", "name": user.title(),
            "realm_access": {"roles": USERS[user][1] if roles is None else roles},
            "exp": int(time.time() + lifetime), "iat": int(time.time()),
        }
        return jwt.encode(claims, key if key is not None else self.key, algorithm=algorithm)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    issuer = TokenIssuer(args.port)
    print(issuer.realm, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        issuer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
