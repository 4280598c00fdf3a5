"""The heartbeat study on a lab that runs elsewhere (the container lab, or any lab of
processes sharing a Redis store): phone hosts run its phones, the store gathers the figures.

- `run_share(config, manifest, store_url)`: one phone host's share. It claims `clients`
  phones per policy and one sender among the lab's users (one atomic step in the store, as
  `testbed emulate --claim-users` does, so hosts started together never share an account),
  runs them (`PhoneFleet`, as a phone process of the one-process study does) against the
  lab of `manifest`, and posts what they did into the store under its phone name: a phone
  result that `testbed lab results` reads like any other (delivery counts), holding the
  share's `FleetReport` and study config.
- `collect(runs)`: every posted share, put on one time line (each host's clock started at
  its own moment; `FleetReport.shifted` moves its stamps by the difference of the hosts'
  start times, as Unix time says, so hosts of one machine agree exactly and hosts of several
  to their clocks' sync), merged into the `StudyResult` the one-process study makes.

What a shared lab cannot give: NAT expiries per phone (the NAT is a host of its own, and the
phones of one host share its address) and the lab's own event-loop lag; those figures are
left empty. The lab's time scale, NAT timeout and server idle timeout are the manifest's.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any, Callable, Optional

from .config import StudyConfig
from .driver import FleetReport, PhoneFleet, PhonePlan
from .figures import study_result
from .results import StudyResult

SCENARIO = "heartbeat study"   # the phone results' scenario name (`testbed lab results`)


def share_config(config: StudyConfig, manifest) -> StudyConfig:
    """`config` with what the running lab decides (its time scale, its NAT's timeout, its
    server idle timeout); `ValueError` if the lab has no carrier NAT."""
    nat = (manifest.extra.get("nat") or {}).get("idle_timeout_s")
    if not nat:
        raise ValueError("the lab has no carrier NAT (its manifest names none): the study "
                         "needs one (testbed lab manifest --nat-timeout S)")
    return dataclasses.replace(config, time_scale=float(manifest.time_scale),
                               nat_timeout_s=float(nat), server_idle_s=manifest.server_idle_s,
                               processes=0)


def users_needed(config: StudyConfig) -> int:
    """Users one share claims: its phones and the sender."""
    return config.clients * len(config.policies) + 1


def plan_share(config: StudyConfig, manifest, names: list[str]
               ) -> tuple[list[PhonePlan], tuple[str, str, Optional[str]]]:
    """The claimed users' phones, policies interleaved, and the sender (the last name). A
    phone's index is its user's place in the manifest (unique over every host), its message
    times drawn from the study's seed and that index."""
    from mocks.lab_phones import claimed_users

    entries = claimed_users(manifest.users, names)
    where = {u["username"]: i for i, u in enumerate(manifest.users)}
    P = len(config.policies)
    plans = []
    for i, u in enumerate(entries[:-1]):
        g = where[u["username"]]
        seed = config.seed * 1_000_003 + g
        plans.append(PhonePlan(index=g, policy_index=i % P, policy=config.policies[i % P],
                               username=u["username"], password=u["password"], source=None,
                               offsets=config.message_offsets(random.Random(seed)),
                               seed=seed))
    sender = entries[-1]
    return plans, (sender["username"], sender["password"], None)


def phone_result(config: StudyConfig, names: list[str], report: FleetReport,
                 epoch0: float, wall_s: float) -> dict[str, Any]:
    """What a share posts: a phone result (`testbed lab results`: steps, delivery counts)
    with the share under "study"."""
    from mocks.lab_phones import posted
    from testbed.client.scenarios import ScenarioResult, Step

    sent = delivered = caught = lost = dups = 0
    for o in report.outcomes:
        dups += o.duplicates
        for _sent_at, _acked, msg_id, _err in o.sends:
            if not msg_id:
                continue
            sent += 1
            if msg_id in o.received:
                delivered += 1
            elif msg_id in o.caught_up:
                caught += 1
            else:
                lost += 1
    result = ScenarioResult(SCENARIO, len(report.outcomes), wall_s=wall_s, steps=[
        Step(f"{len(report.outcomes)} phones logged in and online", True, "",
             report.online_done),
        Step("every message accepted was delivered exactly once", lost == 0 and dups == 0,
             f"{sent} sent, {delivered} delivered, {caught} at the final newsync, {lost} "
             f"lost, {dups} twice", max(o.t_end for o in report.outcomes))],
        metrics={"messages_sent": sent, "messages_received": delivered + caught,
                 "duplicates": dups})
    return {**posted(result, names),
            "study": {"config": config.to_dict(), "fleet": report.to_dict(),
                      "epoch0": epoch0, "wall_s": wall_s}}


async def run_share(config: StudyConfig, manifest, store_url: str,
                    progress: Optional[Callable[[float, float, str], None]] = None,
                    on_claim: Optional[Callable[[str, list[str]], None]] = None
                    ) -> tuple[str, StudyResult]:
    """Run this host's share of the study (`config` from `share_config`) and post it; this
    host's phone name and the figures of its share alone. A share that fails after claiming
    posts a failed result, so that nothing waits for it."""
    from mocks.lab_phones import claim, phone_name, post_result, posted
    from testbed.client.scenarios import ScenarioResult
    from testbed.lab.clock import Clock

    owner = phone_name()
    names = await claim(store_url, owner, users_needed(config))
    if on_claim is not None:
        on_claim(owner, names)
    wall0 = time.perf_counter()
    try:
        plans, sender = plan_share(config, manifest, names)
        clock = Clock(config.time_scale)
        epoch0 = clock.epoch() - clock.now()
        report = lambda kind, *args: progress(*args) if progress and kind == "progress" \
            else None  # noqa: E731
        fleet = await PhoneFleet(manifest, clock, config, plans, sender, report=report).run()
    except BaseException as exc:
        # a failed share's result, as `testbed emulate` posts one: nothing waits for it
        failed = ScenarioResult(SCENARIO, len(names), errors=[f"{type(exc).__name__}: {exc}"])
        await post_result(store_url, owner, posted(failed, names))
        raise
    wall = time.perf_counter() - wall0
    await post_result(store_url, owner, phone_result(config, names, fleet, epoch0, wall))
    return owner, study_result(config, [fleet], None, wall, fleet.cpu_s, {}, None,
                               hosts=[owner])


# the settings every share of one study must agree on (clients add up; loop is each host's)
_SAME = ("nat_timeout_s", "policies", "hours", "time_scale", "messages_per_client_per_day",
         "seed", "server_idle_s", "profile", "drain_s", "radio", "population", "pause_gc")


def collect(runs) -> StudyResult:
    """Every share among the phones' results (`mocks.lab_phones.read_runs`) merged into one
    `StudyResult`; `ValueError` if there is none, a study phone failed, or the shares ran
    different studies."""
    failed = sorted(o for o, r in runs.results.items()
                    if r.get("scenario") == SCENARIO and "study" not in r)
    if failed:
        why = "; ".join(f"{o}: {' '.join(runs.results[o].get('errors', []))}" for o in failed)
        raise ValueError(f"{len(failed)} study phone(s) failed: {why}")
    shares = {o: r["study"] for o, r in sorted(runs.results.items()) if "study" in r}
    if not shares:
        raise ValueError("no study phone has posted its figures to this store")
    configs = {o: StudyConfig.from_dict(s["config"]) for o, s in shares.items()}
    first = next(iter(configs.values()))
    for owner, cfg in configs.items():
        differ = [k for k in _SAME if getattr(cfg, k) != getattr(first, k)]
        if differ:
            raise ValueError(f"{owner} ran another study ({', '.join(differ)} differ)")
    cfg = dataclasses.replace(first, clients=sum(c.clients for c in configs.values()))
    start = min(s["epoch0"] for s in shares.values())
    fleets = [FleetReport.from_dict(s["fleet"]).shifted((s["epoch0"] - start) * cfg.time_scale)
              for s in shares.values()]
    wall = max(s["epoch0"] + s["wall_s"] for s in shares.values()) - start
    return study_result(cfg, fleets, None, wall, sum(f.cpu_s for f in fleets), {}, None,
                        hosts=list(shares))
