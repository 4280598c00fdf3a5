"""The lab CA: made at start-up with trustme, signs the short link's TLS certificate."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

from testbed.lab.addressing import HOST_NAMES


class LabCA:
    """A throw-away CA and one server certificate for every lab host name."""

    def __init__(self, extra_names: tuple[str, ...] = ()) -> None:
        self.ca = trustme.CA(organization_name="WeChat testbed lab CA")
        self.cert = self.ca.issue_cert(*HOST_NAMES, *extra_names)

    def write_ca_pem(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.ca.cert_pem.write_to_path(str(path))
        return path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(ctx)
        return ctx
