"""Hypothesis strategies for any protobuf message of the contract (testbed/wire/mm.proto),
built from its descriptor: every field may be absent, or any value of its type."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import strategies as st

_INT = {F.TYPE_INT32: (-2**31, 2**31 - 1), F.TYPE_SINT32: (-2**31, 2**31 - 1),
        F.TYPE_SFIXED32: (-2**31, 2**31 - 1), F.TYPE_UINT32: (0, 2**32 - 1),
        F.TYPE_FIXED32: (0, 2**32 - 1), F.TYPE_INT64: (-2**63, 2**63 - 1),
        F.TYPE_SINT64: (-2**63, 2**63 - 1), F.TYPE_SFIXED64: (-2**63, 2**63 - 1),
        F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
        F.TYPE_ENUM: (-2**31, 2**31 - 1)}
# what the lab's users and hosts are called, so that some requests name someone real
NAMES = ["user0001", "user0002", "user0003", "user0004", "nobody", ""]


def _scalar(field, depth: int):
    t = field.type
    if t in _INT:
        lo, hi = _INT[t]
        return st.one_of(st.integers(lo, hi), st.integers(0, 16))   # small ones too
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t == F.TYPE_FLOAT:
        return st.floats(width=32)
    if t == F.TYPE_DOUBLE:
        return st.floats()
    if t == F.TYPE_STRING:
        if field.name in ("username", "to_user", "usernames"):
            return st.one_of(st.sampled_from(NAMES), st.text(max_size=20))
        return st.text(max_size=40)
    if t == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == F.TYPE_MESSAGE:
        return messages(field.message_type._concrete_class, depth + 1)
    raise AssertionError(f"no strategy for field type {t}")


def messages(cls, depth: int = 0):
    """Instances of protobuf message class `cls` (nesting at most 3 deep)."""
    optional = {}
    for field in cls.DESCRIPTOR.fields:
        if field.type == F.TYPE_MESSAGE and depth >= 3:
            continue
        value = _scalar(field, depth)
        if field.is_repeated:
            value = st.lists(value, max_size=3)
        optional[field.name] = value

    def build(values: dict):
        msg = cls()
        for name, value in values.items():
            target = getattr(msg, name)
            if isinstance(value, list):
                target.extend(value)
            elif hasattr(value, "SerializeToString"):
                target.CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg
    return st.fixed_dictionaries({}, optional=optional).map(build)


def bodies(cls):
    """Bytes a client might send for a request of `cls`: a well-formed message, the same
    with bytes changed or cut, or anything at all."""
    def mutate(args):
        data, edits, cut = args
        buf = bytearray(data)
        for pos, val in edits:
            if buf:
                buf[pos % len(buf)] = val
        return bytes(buf[:cut]) if cut is not None else bytes(buf)
    well_formed = messages(cls).map(lambda m: m.SerializeToString())
    return st.one_of(
        well_formed,
        st.tuples(well_formed, st.lists(st.tuples(st.integers(0, 999), st.integers(0, 255)),
                                        max_size=4),
                  st.one_of(st.none(), st.integers(0, 200))).map(mutate),
        st.binary(max_size=200))
