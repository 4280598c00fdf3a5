"""`testbed demo`: the lab report's session on a plain loopback lab, recorded and verified.

Starts every host with the in-process tap recording, runs the `storyboard` scenario with two
phones, stops the lab, verifies every storyboard statement on the capture and writes
`demo.pcapng` and `report.html`. No privileges needed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from mocks.runner import LabConfig, start_lab
from testbed.client.scenarios import ScenarioResult, run_scenario
from testbed.interrupt import cleaning_up
from testbed.lab.addressing import AddressPlan
from testbed.verify.storyboard import scenario_comment

ProgressFn = Callable[[float, str], None]
PHONES = 2
SEED = 2013


@dataclass
class DemoResult:
    out_dir: Path
    capture: Path
    report: Optional[Path]
    scenario: ScenarioResult
    verdicts: list = field(default_factory=list)
    analysis: object = None
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        lab_ok = all(v.ok is True for v in self.verdicts if v.scope == "lab")
        return self.scenario.ok and lab_ok and all(v.ok is not False for v in self.verdicts)


async def run_demo(out_dir: Path, time_scale: float = 100.0,
                   progress: Optional[ProgressFn] = None) -> DemoResult:
    from testbed.capture.analyze import analyze
    from testbed.verify import verify_storyboard

    progress = progress or (lambda f, t: None)
    t0 = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress(0.02, "starting the lab")
    # the report's addresses (127.0.0.x) when free, else any free block
    # strangers at first, as the report's phones: the storyboard adds them as friends; the
    # capture says what it was made for, and the verifier checks its counts against that
    lab = await start_lab(LabConfig(users=PHONES, time_scale=time_scale, friends="none",
                                    record=out / "demo.pcapng",
                                    manifest_path=out / "manifest.json",
                                    record_comment_extra=scenario_comment(PHONES, SEED)),
                          first=AddressPlan("127.0.0"))
    passwords = [u["password"].encode() for u in lab.manifest.users]
    try:
        phone_addr = lab.config.plan.phone
        result = await run_scenario("storyboard", lab.manifest, clients=PHONES, seed=SEED,
                                    local_addr=phone_addr,
                                    progress=lambda f, t: progress(0.05 + 0.8 * f, t))
    finally:
        progress(0.86, "stopping the lab")
        with cleaning_up():
            await lab.stop()
    progress(0.9, "analysing the capture")
    capture = out / "demo.pcapng"
    analysis = await asyncio.to_thread(analyze, str(capture), needles=passwords)
    verdicts = verify_storyboard(analysis, secrets=passwords)
    report = None
    try:
        from testbed.report.html import write_report
    except ImportError:
        write_report = None
    if write_report is not None:
        progress(0.95, "writing the report")
        report = write_report(out / "report.html", analysis, verdicts,
                              title="testbed demo: the 2013 lab report's session",
                              secrets_checked=len(passwords))
    progress(1.0, "done")
    return DemoResult(out, capture, report, result, verdicts, analysis,
                      round(time.monotonic() - t0, 2))
