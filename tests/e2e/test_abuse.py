"""Login abuse and memory bounds, as a user of the lab meets them (docs/protocol.md section
11): wrong passwords throttle an account and an address, with -5 and a wait; a profile turns
the throttle off; the count is in the store, so two serving processes share it. Media count
against a per-user and a lab-wide quota, refused with -5."""

from __future__ import annotations

import pytest

from mocks.service import RequestContext, Service
from testbed.client.session import RequestFailed, Session
from testbed.lab.addressing import lab_host_address
from testbed.lab.clock import ManualClock
from testbed.lab.profiles import Limits
from testbed.wire import BY_CGI, Ret, ServiceError, pb

from ..conftest import start_lab
from .helpers import limits_profile, logged_in


async def login(lab, i: int, password: str | None = None, local: str | None = None):
    """manualauth over TLS for user i (with `password` instead of the right one): its
    response, or the RequestFailed it was refused with."""
    u = lab.manifest.users[i]
    s = Session(lab.manifest, u["username"], password or u["password"], local_addr=local)
    try:
        return await s.login()
    except RequestFailed as exc:
        return exc
    finally:
        await s.close()


def ret(outcome) -> int:
    return outcome.ret if isinstance(outcome, RequestFailed) else outcome.base.ret


async def test_wrong_passwords_throttle_the_account_then_it_recovers(tmp_path):
    clock = ManualClock()
    lab = await start_lab(tmp_path, users=3, clock=clock, profile=limits_profile(
        tmp_path, login_max_failures=5, login_lockout_s=300))
    try:
        for _ in range(5):
            assert ret(await login(lab, 0, "guess")) == Ret.WRONG_PASSWORD
        # now even the right password is refused, without saying whether it was right
        for password in ("guess", None):
            refused = await login(lab, 0, password)
            assert ret(refused) == Ret.NOT_ALLOWED
            assert "too many wrong logins for this account: try again in 300 s" in refused.errmsg
        assert ret(await login(lab, 1)) == Ret.OK       # other accounts are not touched
        await clock.advance(299.0)
        assert "try again in 1 s" in (await login(lab, 0)).errmsg
        await clock.advance(1.0)
        assert ret(await login(lab, 0)) == Ret.OK
        # a good login starts the count again: four more wrong ones are not enough
        for _ in range(4):
            await login(lab, 0, "guess")
        assert ret(await login(lab, 0)) == Ret.OK
    finally:
        await lab.stop()


async def test_wrong_passwords_from_one_address_throttle_the_address(tmp_path):
    clock = ManualClock()
    lab = await start_lab(tmp_path, users=6, clock=clock, profile=limits_profile(
        tmp_path, login_max_failures=5, login_max_failures_per_address=8))
    try:
        here, there = (lab_host_address(lab.manifest.dns_address, o) for o in (201, 202))
        if here is None:
            pytest.skip("a one-address lab: no second source address")
        # two wrong passwords on each of four accounts, and a name that does not exist
        for i in range(4):
            for _ in range(2):
                assert ret(await login(lab, i, "guess", here)) == Ret.WRONG_PASSWORD
        refused = await login(lab, 5, None, here)
        assert ret(refused) == Ret.NOT_ALLOWED and "from here" in refused.errmsg
        assert ret(await login(lab, 5, None, there)) == Ret.OK
        assert ret(await login(lab, 0, None, there)) == Ret.OK   # each account had only 2
    finally:
        await lab.stop()


async def test_a_profile_turns_the_throttle_off_for_brute_force_studies(tmp_path):
    lab = await start_lab(tmp_path, users=2, profile=limits_profile(
        tmp_path, login_max_failures=0, login_max_failures_per_address=0))
    try:
        for n in range(60):
            assert ret(await login(lab, 0, f"guess{n:04d}")) == Ret.WRONG_PASSWORD
        assert ret(await login(lab, 0)) == Ret.OK
    finally:
        await lab.stop()


async def test_the_count_is_shared_by_processes_on_one_store(redis_stores):
    """Two services on two connections to one Redis namespace, as two short-link worker
    processes: wrong passwords through either add up to one count."""
    limits = Limits(login_max_failures=5)
    services = [Service(await redis_stores(), ManualClock(), limits=limits) for _ in range(2)]
    await services[0].create_user("alice", "secret")
    manualauth = BY_CGI["manualauth"]

    async def attempt(service, password):
        try:
            await service.handle(manualauth, pb.ManualAuthRequest(
                username="alice", password=password), RequestContext(peer="127.0.0.9"))
            return Ret.OK
        except ServiceError as exc:
            return exc.code
    got = [await attempt(services[i % 2], "guess") for i in range(5)]
    assert got == [Ret.WRONG_PASSWORD] * 5
    assert await attempt(services[0], "secret") == Ret.NOT_ALLOWED
    assert await attempt(services[1], "secret") == Ret.NOT_ALLOWED


async def test_media_count_against_the_user_and_the_lab_quota(tmp_path):
    kib = 1024
    lab = await start_lab(tmp_path, users=4, profile=limits_profile(
        tmp_path, media_quota_user_bytes=300 * kib, media_quota_lab_bytes=700 * kib))
    sessions = [await logged_in(lab, i) for i in range(4)]
    try:
        a, b, c, d = sessions
        blob = bytes(range(256)) * 800    # 200 KiB
        await a.upload(b.username, blob)
        with pytest.raises(RequestFailed) as info:
            await a.upload(b.username, blob)             # 400 KiB > 300 KiB
        assert info.value.ret == Ret.NOT_ALLOWED
        assert "user media quota: 204,800 of 307,200 bytes held" in info.value.errmsg
        await a.upload(b.username, blob[:100 * kib])     # exactly the quota
        await b.upload(a.username, blob)
        await c.upload(a.username, blob)                 # the lab holds 700 KiB now
        with pytest.raises(RequestFailed) as info:
            await d.upload(a.username, b"x" * 10)
        assert info.value.ret == Ret.NOT_ALLOWED and "lab media quota" in info.value.errmsg
        assert await lab.store.media_bytes(1) == (300 * kib, 700 * kib)
        # what was uploaded is still there, byte for byte
        msgs = [m for m in await b.sync() if m.cmd_id == 5]
        assert msgs
    finally:
        for s in sessions:
            await s.close()
        await lab.stop()


async def test_unfinished_uploads_make_room_for_a_new_one(tmp_path):
    """An unfinished upload holds its whole total_len; starting one that would pass the
    user's quota forgets the oldest unfinished ones first (as the count of eight does)."""
    lab = await start_lab(tmp_path, users=2, profile=limits_profile(
        tmp_path, media_quota_user_bytes=250_000))
    a = await logged_in(lab, 0)
    b = lab.manifest.users[1]["username"]
    try:
        first = pb.UploadMediaRequest(base=a.base(), client_media_id="first", to_user=b,
                                      msg_type=3, total_len=200_000, data=b"x" * 1000)
        resp = await a.long_call("UPLOADMSGIMG", first)
        assert resp.start_pos == 1000
        done = await a.upload(b, b"y" * 200_000)         # the first is forgotten for it
        assert done.new_msg_id
        first.start_pos, first.data = 1000, b"x" * 1000
        again = await a.long_call("UPLOADMSGIMG", first, check=False)
        assert again.base.ret == Ret.NOT_ALLOWED          # starting it anew would not fit
        assert await lab.store.media_bytes(1) == (200_000, 200_000)
    finally:
        await a.close()
        await lab.stop()
