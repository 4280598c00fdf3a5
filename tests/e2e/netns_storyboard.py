"""Run inside a fresh network namespace by test_storyboard_roundtrip.py: sniff `lo` with the
AF_PACKET sniffer while a lab (no tap) serves the storyboard scenario; print a JSON summary.

    python netns_storyboard.py OUT.pcapng
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading

from mocks.runner import Lab, LabConfig
from testbed.capture.pcapng_writer import capture_comment
from testbed.capture.sniffer import sniff
from testbed.client.scenarios import run_scenario
from testbed.lab.addressing import AddressPlan
from testbed.verify.storyboard import scenario_comment

TIME_SCALE = 100.0
PHONES, SEED = 2, 7


async def main(out: str) -> dict:
    plan = AddressPlan("127.0.0")
    lab = Lab(LabConfig(users=2, time_scale=TIME_SCALE, plan=plan))
    manifest = await lab.start()
    stop, ready = threading.Event(), threading.Event()
    box: dict = {}
    comment = capture_comment("sniffer", profile=manifest.profile, time_scale=TIME_SCALE,
                              manifest=manifest, **scenario_comment(PHONES, SEED))

    def run() -> None:
        box["stats"] = sniff("lo", out, f"net {plan.prefix}.0/24", stop=stop, ready=ready,
                             comment=comment)

    t = threading.Thread(target=run)
    t.start()
    ready.wait(10)
    try:
        result = await run_scenario("storyboard", manifest, clients=PHONES, seed=SEED,
                                    local_addr=plan.phone)
    finally:
        await lab.stop()
        await asyncio.sleep(0.2)
        stop.set()
        t.join(10)
    s = box["stats"]
    return {"ok": result.ok, "errors": result.errors, "packets": s.packets,
            "kernel_drops": s.kernel_drops,
            "passwords": [u["password"] for u in manifest.users]}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
