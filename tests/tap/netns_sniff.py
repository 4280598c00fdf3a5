"""Run inside a fresh network namespace by test_sniffer.py: sniff `lo` while a tiny TCP echo
exchange runs on 127.0.0.1, plus traffic the filter must exclude; print a JSON summary.

    python netns_sniff.py api OUT       sniff() in a thread
    python netns_sniff.py cli OUT       record_main() in a child process, stopped by SIGINT
"""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import subprocess
import sys
import threading
import time

MESSAGES = [b"ping-1", b"ping-22", b"ping-333"]


def listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def echo(srv: socket.socket) -> None:
    conn, _ = srv.accept()
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def traffic(echo_srv: socket.socket, other_srv: socket.socket) -> None:
    port = echo_srv.getsockname()[1]
    other = other_srv.getsockname()[1]
    threading.Thread(target=echo, args=(echo_srv,), daemon=True).start()
    threading.Thread(target=echo, args=(other_srv,), daemon=True).start()
    with socket.create_connection(("127.0.0.1", port)) as c:
        for m in MESSAGES:
            c.sendall(m)
            got = b""
            while len(got) < len(m):
                got += c.recv(65536)
            assert got == m
            time.sleep(0.02)
    with socket.create_connection(("127.0.0.1", other)) as c:   # excluded by the filter
        c.sendall(b"not-this-one")
        c.recv(100)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"nor-this", ("127.0.0.1", other))
    u.close()
    time.sleep(0.3)


def main() -> int:
    mode, out = sys.argv[1], sys.argv[2]
    echo_srv, other_srv = listener(), listener()
    port = echo_srv.getsockname()[1]
    bpf = f"tcp port {port}"
    result = {"port": port, "other": other_srv.getsockname()[1]}
    if mode == "api":
        from testbed.capture.sniffer import sniff
        stop, ready = threading.Event(), threading.Event()
        box = {}

        def run() -> None:
            box["stats"] = sniff("lo", out, bpf, stop=stop, ready=ready,
                                 comment={"scenario": "netns echo"})
        t = threading.Thread(target=run)
        t.start()
        assert ready.wait(10), "sniffer did not start"
        traffic(echo_srv, other_srv)
        stop.set()
        t.join(10)
        result["stats"] = dataclasses.asdict(box["stats"])
    else:
        code = ("import sys; from testbed.capture.sniffer import record_main; "
                f"sys.exit(record_main('lo', {out!r}, {bpf!r}, None))")
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        line = p.stderr.readline()
        assert line.startswith("listening on lo"), line
        traffic(echo_srv, other_srv)
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=10)
        result.update(rc=p.returncode, stdout=stdout, stderr=line + stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
