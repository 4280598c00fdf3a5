"""Relay legs: the relay's copy of a connection is paired with the phone's, and nothing else
is."""

from testbed.capture.legs import relay_legs


def _row(i, client, server, start):
    return {"id": i, "client": client, "server": server, "start": start}


def test_a_leg_is_the_same_first_bytes_to_another_port_of_the_same_address_just_after():
    flows = [_row(0, "127.0.0.87:4000", "127.0.0.21:8080", 10.0),
             _row(1, "127.0.0.1:5000", "127.0.0.21:35529", 10.001),
             # the same request again (another CGI call): its own leg, not the first's
             _row(2, "127.0.0.87:4001", "127.0.0.21:8080", 10.002),
             _row(3, "127.0.0.1:5001", "127.0.0.21:35529", 10.003)]
    heads = {i: b"POST /cgi-bin/micromsg-bin/newsync HTTP/1.1\r\n" for i in range(4)}
    assert relay_legs(flows, heads) == {1: 0, 3: 2}


def test_what_is_not_a_leg():
    hello = b"\x16\x03\x01\x00\xc8" + bytes(range(59))
    flows = [_row(0, "127.0.0.87:4000", "127.0.0.21:8443", 10.0),
             _row(1, "127.0.0.88:4000", "127.0.0.21:8443", 10.001),   # same port: a phone
             _row(2, "127.0.0.1:5000", "127.0.0.22:35529", 10.002),   # another address
             _row(3, "127.0.0.1:5001", "127.0.0.21:35529", 13.0),     # too late
             _row(4, "127.0.0.1:5002", "127.0.0.21:35530", 10.003)]   # other bytes
    heads = {0: hello, 1: hello, 2: hello, 3: hello, 4: hello[:-1] + b"!"}
    assert relay_legs(flows, heads) == {}
    # nothing sent: nothing to know a copy by
    assert relay_legs(flows[:1] + [_row(5, "127.0.0.1:5003", "127.0.0.21:35529", 10.001)],
                      {0: b"", 5: b""}) == {}
