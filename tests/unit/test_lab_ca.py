"""The lab CA kept in a directory (`LabCA.in_dir`): made once, whoever starts first, and the
same CA and certificate for every process that loads it."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys

import pytest

from mocks.tls import CA_KEY, CA_PEM, SERVER_PEM, LabCA

LOAD = ("import sys; from mocks.tls import LabCA; "
        "ca = LabCA.in_dir(sys.argv[1]); "
        "print(ca.cert.cert_chain_pems[0].bytes().hex())")


def test_processes_starting_together_share_one_ca(tmp_path):
    d = tmp_path / "ca"
    procs = [subprocess.Popen([sys.executable, "-c", LOAD, str(d)], stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ)) for _ in range(4)]
    certs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(certs) == 1 and all(p.returncode == 0 for p in procs)
    assert oct(os.stat(d / CA_KEY).st_mode & 0o777) == "0o600"
    assert oct(os.stat(d / SERVER_PEM).st_mode & 0o777) == "0o600"
    here = LabCA.in_dir(d)
    assert here.ca_pem_path == d / CA_PEM
    assert here.cert.cert_chain_pems[0].bytes().hex() in certs


def test_a_client_trusting_ca_pem_accepts_the_loaded_certificate(tmp_path):
    """A TLS handshake in memory: the server on the loaded key, the client on ca.pem only."""
    LabCA.in_dir(tmp_path)
    server = LabCA.in_dir(tmp_path).server_context()
    client = ssl.create_default_context(cafile=str(tmp_path / CA_PEM))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cs = client.wrap_bio(c_in, c_out, server_hostname="short.weixin.qq.com")
    ss = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side, out, peer_in in ((cs, c_out, s_in), (ss, s_out, c_in)):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out.read())
    assert cs.version() is not None and ss.version() is not None
    assert cs.getpeercert()["subject"]


def test_a_broken_ca_directory_is_a_clear_error(tmp_path):
    LabCA.in_dir(tmp_path)
    (tmp_path / CA_KEY).write_bytes(b"not a key")
    with pytest.raises(ValueError, match="incomplete or unreadable.*remove the directory"):
        LabCA.in_dir(tmp_path)
