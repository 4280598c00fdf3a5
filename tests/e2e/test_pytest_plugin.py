"""The pytest plugin, tested the way a user meets it: in a fresh pytest run (pytester)."""

from __future__ import annotations

from pathlib import Path


pytest_plugins = ["pytester"]
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def _run(pytester, *args, mode="auto"):
    pytester.makeini(f"[pytest]\nasyncio_mode = {mode}\n")
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=240)


def test_documented_example_runs(pytester):
    pytester.makepyfile(test_example=(EXAMPLES / "test_new_scenario.py").read_text())
    result = _run(pytester)
    result.assert_outcomes(passed=1)


def test_documented_example_runs_in_strict_mode_too(pytester):
    """pytest-asyncio's default (strict) mode: the example's `pytestmark` is enough."""
    pytester.makepyfile(test_example=(EXAMPLES / "test_new_scenario.py").read_text())
    result = _run(pytester, mode="strict")
    result.assert_outcomes(passed=1)


def test_wait_helpers_and_specs_of_any_event_field(pytester):
    pytester.makepyfile(test_waits="""
        import asyncio
        import pytest

        async def test_waits(lab, wx_client, recorder):
            alice, bob = await wx_client(0), await wx_client(1)
            await alice.send_text(bob.username, "one")
            assert await bob.wait_for_push(timeout=60) >= 1
            first = await bob.wait_for_message(text="one", sender=alice.username)
            assert first.content == "one" and first.to_user == bob.username
            # a message already received is found at once: no race with a fast push
            assert (await bob.wait_for_message(text="one", timeout=1)).new_msg_id \
                == first.new_msg_id
            await alice.send_text(bob.username, "two")
            assert (await bob.wait_for_message(text="two")).content == "two"
            with pytest.raises(asyncio.TimeoutError, match="no message .text 'never'"):
                await bob.wait_for_message(text="never", timeout=100)
            # a dict spec matches any event field: flow, packet, src, dst among them
            wire = recorder.capture()
            send = wire.first({"kind": "frame", "name": "NEWSENDMSG", "reply": False})
            same = {"flow": send.flow, "packet": send.index, "src": send.src,
                    "dst": f"{send.dst[0]}:{send.dst[1]}"}
            assert wire.select({"kind": "frame", **same}) == [send]
            assert send in wire.select({"src": send.src[0], "name": "NEWSENDMSG"})
            wire.expect_count({"kind": "frame", "flow": send.flow}, at_least=2, at_most=1000)

        async def test_no_push(lab, wx_client):
            alice = await wx_client(0)
            with pytest.raises(asyncio.TimeoutError, match="no push"):
                await alice.wait_for_push(timeout=100)
    """)
    result = _run(pytester)
    result.assert_outcomes(passed=2)


def test_a_failed_test_shows_its_capture_and_ladder(pytester):
    pytester.makepyfile(test_fails="""
        async def test_fails(lab, wx_client, recorder):
            alice, bob = await wx_client(0), await wx_client(1)
            await alice.send_text(bob.username, "hi")
            await bob.wait_for_message(text="hi")
            recorder.capture().expect_count({"kind": "frame", "name": "NOTIFY"}, at_least=9)
    """)
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*testbed capture*", "capture: *lab.pcapng (open it in "
                                                     "Wireshark, or `testbed report` it)"])
    # the phone's column named by its user, its uin and address beside
    result.stdout.fnmatch_lines(["* s *user0001 uin * · 127.* --> long.weixin.qq.com  "
                                 "NEWSENDMSG seq *(packet *)"])
    result.stdout.fnmatch_lines(["*long.weixin.qq.com*NOTIFY*"])


def test_wire_assertion_failure_is_reported(pytester):
    pytester.makepyfile(test_fail="""
        async def test_wrong_order(lab, wx_client, recorder):
            a, b = await wx_client(0), await wx_client(1)
            await a.send_text(b.username, "hi")
            recorder.capture().expect_sequence(
                {"kind": "frame", "name": "NOTIFY"}, {"kind": "dns_query"})
    """)
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*sequence stopped at step 2*"])


def test_misspelled_names_are_errors_naming_the_valid_ones(pytester):
    pytester.makepyfile(test_typos="""
        async def test_command_typo(lab, wx_client, recorder):
            a, b = await wx_client(0), await wx_client(1)
            await a.send_text(b.username, "hi")
            wire = recorder.capture()
            wire.expect_sequence({"kind": "frame", "name": "NOTIFY", "push": True})
            wire.expect_sequence({"kind": "frame", "name": "NOTIFYY"})

        async def test_field_typo(lab, recorder):
            recorder.capture().count({"kind": "frame", "pussh": True})

        async def test_door_typo(lab, wx_client):
            await wx_client(0, sync_door="shrot")
    """)
    result = _run(pytester)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*SpecError: unknown command name 'NOTIFYY' (did you mean "
                                 "'NOTIFY'?); valid: NOOP, IDENTIFY, NEWSENDMSG, *"])
    result.stdout.fnmatch_lines(["*SpecError: unknown frame field 'pussh' (did you mean "
                                 "'push'?); valid: kind, host, direction, door, *"])
    result.stdout.fnmatch_lines(["*ValueError: unknown door 'shrot' (did you mean 'short'?); "
                                 "valid: long, short, tls*"])


def test_server_errors_surface_in_the_test(pytester):
    pytester.makepyfile(test_boom="""
        import asyncio
        from testbed.wire import pb

        async def test_handler_raises(lab, wx_client):
            a = await wx_client(0)
            def explode(*args, **kw):
                raise RuntimeError("boom inside the server")
            lab.run(setattr, lab.lab.service, "getprofile", explode)
            resp = await a.session.cgi("getprofile", pb.GetProfileRequest(
                base=a.session.base()), check=False)
            assert resp.base.ret == -1      # the client sees a server fault...
    """)
    result = _run(pytester)
    result.assert_outcomes(errors=1, passed=1)   # ...and the test is told why
    result.stdout.fnmatch_lines(["*RuntimeError: boom inside the server*"])


def test_session_scope_and_options(pytester):
    pytester.makepyfile(test_scope="""
        def test_one(lab):
            assert len(lab.users) == 3
            pytest_lab = lab
            globals()["first"] = lab.manifest.dns_address

        def test_two(lab):
            assert lab.manifest.dns_address == globals()["first"]   # the same lab
            assert lab.manifest.time_scale == 50
    """)
    result = _run(pytester, "--testbed-scope", "session", "--testbed-users", "3",
                  "--testbed-time-scale", "50")
    result.assert_outcomes(passed=2)


def test_a_capture_as_a_regression_test(pytester, tmp_path):
    """The recipe of docs/replay.md: a golden capture replayed against the test's lab; a
    copy with one reply changed fails with the diff table and the frame."""
    from tests.replay.pcap_edit import alter_reply

    golden = Path(__file__).resolve().parents[2] / "captures" / "golden" / "chat.pcapng"
    altered = tmp_path / "altered.pcapng"
    frame = alter_reply(golden, altered, "from user0001".encode(), b"frum user0001")
    pytester.makepyfile(test_replays=f"""
        import pytest

        @pytest.mark.testbed_lab(users=2, time_scale=100)
        def test_chat_still_answers_as_recorded(replay_capture):
            result = replay_capture({str(golden)!r})
            assert result.replayed == len(result.rows)

        @pytest.mark.testbed_lab(users=2, time_scale=100)
        async def test_altered(replay_capture):
            replay_capture({str(altered)!r})
    """)
    result = _run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*diverged*", f"*first divergence: exchange *, frame {frame}, "
                                 f"NEWSYNC on long.weixin.qq.com: cmd_list[[]*[]].cmd_buf.content: "
                                 f"recorded 你好 user0002, frum user0001, replayed*"])
