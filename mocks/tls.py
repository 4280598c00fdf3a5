"""The lab CA: made with trustme, signs the short link's TLS certificate.

`LabCA()` is a throw-away CA in memory (the one-process lab). `LabCA.in_dir(DIR)` creates the
CA and the server certificate in DIR the first time and loads them after that, so every
process of a lab (the short link's workers, the `lab manifest` writer, a restarted worker)
uses one CA and one certificate; a lock on DIR makes "the first time" happen once when
several processes start together. DIR holds `ca.pem` (what clients trust: the manifest's
`ca_cert`), `ca-key.pem` and `server.pem` (the server's key and chain), the keys mode 0600.
"""

from __future__ import annotations

import fcntl
import os
import ssl
import tempfile
from pathlib import Path
from typing import Optional

import trustme

from testbed.lab.addressing import HOST_NAMES

CA_PEM, CA_KEY, SERVER_PEM = "ca.pem", "ca-key.pem", "server.pem"
_PEM_END = b"-----\n"


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write atomically (a reader never sees half a file), private files mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _pem_blocks(data: bytes) -> list[bytes]:
    blocks, start = [], data.find(b"-----BEGIN")
    while start != -1:
        end = data.find(b"-----END", start)
        end = data.find(_PEM_END, end + 8) + len(_PEM_END)
        blocks.append(data[start:end])
        start = data.find(b"-----BEGIN", end)
    return blocks


class LabCA:
    """A CA and one server certificate for every lab host name."""

    def __init__(self, extra_names: tuple[str, ...] = ()) -> None:
        self.ca = trustme.CA(organization_name="WeChat testbed lab CA")
        self.cert = self.ca.issue_cert(*HOST_NAMES, *extra_names)
        self.directory: Optional[Path] = None

    @classmethod
    def in_dir(cls, directory: str | os.PathLike,
               extra_names: tuple[str, ...] = ()) -> "LabCA":
        """The CA kept in `directory`: made there if it holds none yet, else loaded.
        `ValueError` if the directory holds a partial or unreadable CA."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)   # released when the file closes
            if (d / CA_PEM).exists():
                ca = cls._load(d)
            else:
                ca = cls(extra_names)
                _write(d / CA_KEY, ca.ca.private_key_pem.bytes(), private=True)
                _write(d / SERVER_PEM, ca.cert.private_key_and_cert_chain_pem.bytes(),
                       private=True)
                _write(d / CA_PEM, ca.ca.cert_pem.bytes(), private=False)   # last: the mark
        ca.directory = d
        return ca

    @classmethod
    def _load(cls, d: Path) -> "LabCA":
        try:
            server = _pem_blocks((d / SERVER_PEM).read_bytes())
            if len(server) < 2:
                raise ValueError(f"{d / SERVER_PEM} holds no key and certificate")
            ca = cls.__new__(cls)
            ca.ca = trustme.CA.from_pem((d / CA_PEM).read_bytes(), (d / CA_KEY).read_bytes())
            ca.cert = trustme.LeafCert(server[0], server[1], server[2:])
        except (OSError, ValueError) as exc:
            raise ValueError(f"the lab CA in {d} is incomplete or unreadable ({exc}); "
                             f"remove the directory to make a new one") from None
        return ca

    @property
    def ca_pem_path(self) -> Optional[Path]:
        """Where the CA certificate clients should trust is (`in_dir` CAs only)."""
        return None if self.directory is None else self.directory / CA_PEM

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
