"""Store events cross processes: they name long links by id and encode to bytes."""

from __future__ import annotations

import multiprocessing

import pytest

from mocks.state import PushEvent, SessionEnded, decode_event, encode_event, new_link_id


def test_events_round_trip_through_bytes():
    for event in (PushEvent(7, 0x1, new_link_id()), PushEvent(8, 0x7, None),
                  SessionEnded(bytes(range(16)), 9)):
        data = encode_event(event)
        assert isinstance(data, bytes)
        assert decode_event(data) == event


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"{}", b'{"push": 1}',
                                  b'{"push": 1, "selector": 1, "origin": 5}',
                                  b'{"ended": 1, "session_key": "zz"}', b"\xff\xfe"])
def test_decode_event_rejects_what_is_not_an_event(data):
    with pytest.raises(ValueError):
        decode_event(data)


def test_encode_event_rejects_other_objects():
    with pytest.raises(TypeError):
        encode_event(object())


def _child_ids(queue):
    queue.put([new_link_id() for _ in range(3)])


def test_link_ids_are_unique_within_and_across_processes():
    mine = [new_link_id() for _ in range(1000)]
    assert len(set(mine)) == 1000 and all(isinstance(i, str) for i in mine)
    # a forked worker continues from the parent's state yet draws its own ids
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_child_ids, args=(queue,)) for _ in range(2)]
    for c in children:
        c.start()
    theirs = [queue.get(timeout=10) for _ in children]
    for c in children:
        c.join(10)
    mine.append(new_link_id())
    every = mine + theirs[0] + theirs[1]
    assert len(set(every)) == len(every)
    tokens = {i.split("-")[0] for i in every}
    assert len(tokens) == 3          # one per process
