"""`testbed lab up` (`-v`: a line per request; what it served when it stops) and `testbed lab
status` (`lab seed`, `lab manifest` and `serve` are in `testbed.serve_cli`)."""

from __future__ import annotations

import asyncio
import json
import os

from rich.markup import escape

from .output import err_console, error, note, os_error_text, out_console, print_json


def host_rows(manifest, pids: dict[str, str] | None = None) -> list[tuple[str, ...]]:
    """(host, addresses, port[, processes]) for every lab host and the resolver; `pids`:
    the processes of each host of a lab of processes, by host name ("dns" for the
    resolver)."""
    rows = []
    for name, h in manifest.hosts.items():
        port = str(h.port) + (f", TLS {h.tls_port}" if h.tls_port else "")
        rows.append((name, " ".join(h.addresses), port, *([pids[name]] if pids else [])))
    rows.append(("lab resolver (DNS)", manifest.dns_address, str(manifest.dns_port),
                 *([pids["dns"]] if pids else [])))
    return rows


def host_pids(lab) -> dict[str, str]:
    """The processes of each host of a lab of processes ("PID PID ..."), by host name
    ("dns" for the resolver), as `host_rows` and `lab_doc` take them."""
    from mocks.hostspec import HOST_OF_ROLE
    return {HOST_OF_ROLE.get(c.role, c.role): " ".join(map(str, c.pids)) for c in lab.children}


def lab_doc(lab, users: int, store=None, pids: dict[str, str] | None = None) -> dict:
    """`lab up --json`: what the host table shows, in full (no passwords: the manifest
    file has those)."""
    from mocks.state import redact_url

    m = lab.manifest
    namespace = getattr(store, "namespace", None)
    record = getattr(lab, "record_path", None)
    return {"profile": m.profile, "time_scale": m.time_scale, "users": users,
            "hosts": {name: h.to_dict() for name, h in m.hosts.items()},
            "dns": {"address": m.dns_address, "port": m.dns_port},
            "manifest": str(lab.manifest_path.resolve()) if lab.manifest_path else None,
            "record": str(record) if record is not None else None,
            "nat": m.extra.get("nat"),
            "store": ({"url": redact_url(store.url), "namespace": namespace}
                      if namespace else None),
            "processes": ({host: [int(p) for p in pid.split()] for host, pid in pids.items()}
                          if pids else None),
            "replay": ({"capture": str(lab.config.replay), "unmatched": lab.config.unmatched}
                       if getattr(lab, "script", None) is not None else None),
            "faults": ({"plan": lab.faults.plan.describe(), "seed": lab.faults.plan.seed}
                       if getattr(lab, "faults", None) is not None else None)}


def after_stop(lab, report_path, console) -> None:
    """What a one-process lab says when it has stopped: each fault it applied, and server
    replay's report (on stderr; as JSON in `report_path` if given)."""
    faults = getattr(lab, "faults", None)
    for a in faults.applied if faults is not None else ():
        note(console, f"fault applied: {a['fault']} at {a['t']:.1f} s ({a['what']} #{a['n']})")
    script = getattr(lab, "script", None)
    if script is None:
        return
    from testbed.replay.result import render_server_report

    report = script.report()
    render_server_report(report, console)
    if report_path is not None:
        report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        note(console, f"replay report: {report_path}")


def served_rows(counts, lab) -> list[dict]:
    """What a one-process lab served, a row per host (`ServedCounts.rows`), with the long
    link's heartbeats (answered on its fast path, not logged one by one) as a row of their
    own."""
    rows = counts.rows()
    long = getattr(lab, "long", None)
    if long is not None:
        from testbed.lab.addressing import LONG
        logged = counts.by_host.get(LONG, 0)
        beats = max(0, long.frames_in - logged)
        if beats:
            rows.append({"host": f"{LONG} heartbeats", "requests": beats, "failed": 0,
                         "most": {"NOOP": beats}})
    return rows


def print_served(rows: list[dict], as_json: bool, console) -> None:
    """The stop summary: a table on stdout (100 columns); with --json, whose stdout is the
    host document alone, a line on `console` (stderr)."""
    if as_json:
        note(console, "served: " + (", ".join(f"{r['host']} {r['requests']}" for r in rows)
                                    or "nothing"))
        return
    from rich.table import Table

    t = Table(title="served")
    t.add_column("host", overflow="fold")
    t.add_column("requests", justify="right")
    t.add_column("not ok", justify="right")
    t.add_column("most asked", overflow="fold")
    for r in rows:
        t.add_row(escape(r["host"]), str(r["requests"]), str(r["failed"]),
                  escape(", ".join(f"{w} {n}" for w, n in r["most"].items())))
    if not rows:
        t.add_row("(nothing)", "0", "0", "")
    out_console().print(t)


def lab_up(args) -> int:
    """Start the lab, print its hosts (stdout), run until SIGINT/SIGTERM (or, for a lab of
    processes, until one of its hosts ends)."""
    from rich.table import Table

    from mocks.runner import Lab, LabConfig
    from mocks.state import redact_url
    from testbed import interrupt
    from testbed.eventloop import from_flag
    from testbed.eventloop import run as run_on
    from testbed.lab.addressing import AddressPlan
    from testbed.lab.profiles import load_profile
    from testbed.serve_cli import open_store

    from .netns import lab_up_netns, not_netns_error

    console = err_console()
    # a Redis store makes every host a `testbed serve` process of its own
    processes = args.store.startswith(("redis", "unix"))
    if args.nat_upstream == "memory" and (args.netns or processes):
        error(console, "--nat-upstream memory needs the one-process lab (memory: store, not "
                       "--netns): elsewhere the NAT is a process of its own")
        return 2
    if args.nat_upstream == "memory" and args.nat_timeout is None and not args.fault:
        error(console, "--nat-upstream memory is how the NAT reaches the hosts: give "
                       "--nat-timeout S (or a --fault, whose relay it is too)")
        return 2
    if args.netns and (args.replay is not None or args.fault):
        error(console, f"{'--replay' if args.replay is not None else '--fault'} needs the "
                       f"one-process lab (not --netns: every host is a process there)")
        return 2
    if args.netns:
        return lab_up_netns(args)
    if (problem := not_netns_error(args)) is not None:
        error(console, problem)
        return 2
    try:
        load_profile(args.profile)
        plan = AddressPlan(args.subnet)
    except ValueError as exc:
        error(console, str(exc))
        return 2
    if args.workers is not None and not processes:
        error(console, "--workers needs a store the workers share: --store "
                       "redis://HOST:PORT/DB")
        return 2
    if args.record is not None and processes:
        error(console, "--record needs the one-process lab (the in-process tap); on Redis "
                       "every host is a process: record with `testbed record --iface lo`")
        return 2
    if args.replay is None and (args.unmatched or args.report or args.mask):
        error(console, "--unmatched, --mask and --report go with --replay CAPTURE")
        return 2
    from testbed.replay.masks import REQUEST, MaskSet, load_mask_file
    try:
        replay_masks = MaskSet([load_mask_file(p, REQUEST) for p in args.mask])
    except ValueError as exc:
        error(console, f"--mask {exc}")
        return 2
    if args.replay is not None and processes:
        error(console, "--replay needs the one-process lab (memory: store)")
        return 2
    from testbed.lab.faults import LAB, FaultError, FaultPlan
    try:
        faults = FaultPlan.parse(args.fault, LAB) or None    # a seed alone faults nothing
    except FaultError as exc:
        error(console, f"--fault {exc}")
        return 2
    if faults is not None and processes:
        error(console, "--fault needs the one-process lab (memory: store), where the relay "
                       "and the servers share the plan")
        return 2
    cfg = LabConfig(users=args.users, friends=args.friends, profile=args.profile,
                    time_scale=args.time_scale, plan=plan,
                    privileged_ports=args.privileged_ports, manifest_path=args.manifest,
                    nat_timeout_s=args.nat_timeout, nat_latency_s=args.nat_latency,
                    nat_upstream=args.nat_upstream, record=args.record, replay=args.replay,
                    unmatched=args.unmatched or "fail", replay_masks=replay_masks,
                    faults=faults)

    async def run() -> int:
        store, failed = await open_store(args.store, console)
        if store is None:
            return failed
        try:
            if args.reset_store:
                await store.clear()
            elif (held := await store.user_count()) > 0:
                error(console, f"the store {args.store} already holds a lab ({held} users): "
                               f"another lab uses that namespace, or one was killed before "
                               f"it could empty it. Choose another with ?namespace=NAME, or "
                               f"pass --reset-store")
                return 1
            try:
                return await serve(store)
            finally:
                with interrupt.cleaning_up():
                    await store.clear()     # a lab leaves nothing behind in a shared Redis
        finally:
            with interrupt.cleaning_up():
                await store.close()

    async def serve(store) -> int:
        from mocks.process_lab import HostFailed, ProcessLab
        from mocks.served import ServedCounts, line

        processes = getattr(store, "namespace", None) is not None
        counts = ServedCounts()

        def observe(served) -> None:
            counts.add(served)
            if args.log_requests:
                console.print(line(served), markup=False, highlight=False, soft_wrap=True)

        if processes:
            if args.log_requests:
                note(console, "-v logs the requests of the one-process lab; a lab of "
                              "processes logs none (each `testbed serve` host is apart)")
            lab = ProcessLab(cfg, store, args.store, workers=args.workers or 2,
                             uvloop=args.uvloop)
        else:
            from testbed.capture.packets import CaptureError
            try:
                lab = Lab(cfg, store=store, observer=observe)
            except (CaptureError, OSError) as exc:
                error(console, f"--replay {exc}" if str(cfg.replay) in str(exc)
                      else f"--replay {cfg.replay}: {exc}")
                return 2
        script = getattr(lab, "script", None)
        try:
            try:
                manifest = await lab.start()
            except OSError as exc:
                if exc.filename is not None:    # the manifest, the CA or the capture
                    error(console, f"cannot start the lab: {os_error_text(exc)}")
                    return 1
                error(console, f"cannot bind the lab: {exc}. Is another lab running on "
                               f"{plan.prefix}.x? Try --subnet 127.0.1")
                return 1
            except HostFailed as exc:
                error(console, str(exc))
                return 1
            pids = host_pids(lab) if processes else None
            if args.json:
                print_json(lab_doc(lab, args.users, store, pids))
            else:
                table = Table(title=f"lab up: profile {manifest.profile}, time scale "
                                    f"{manifest.time_scale:g}, {args.users} users")
                for col in ("host", "addresses", "port", *(["processes"] if pids else [])):
                    table.add_column(col)
                for row in host_rows(manifest, pids):
                    table.add_row(*row)
                out = out_console()
                out.print(table)
                out.file.flush()
            if getattr(lab, "record_path", None) is not None:
                console.print(f"recording to {escape(str(lab.record_path))} (closed when the "
                              f"lab stops)")
            if faults is not None:
                note(console, f"faults on what the lab sends: {', '.join(faults.describe())} "
                              f"(seed {faults.seed})")
            if script is not None:
                note(console, f"server replay of {cfg.replay}: {len(script.s.exchanges)} "
                              f"recorded exchanges, users {', '.join(script.usernames) or 'none'}"
                              f"; unmatched requests: {script.unmatched}")
            if args.nat_timeout is not None:
                console.print(f"carrier NAT in front of every TCP host: idle timeout "
                              f"{args.nat_timeout:g} s, latency {args.nat_latency:g} s"
                              + (f" (pid {pids['nat']})" if pids else "")
                              + (", hosts reached in memory"
                                 if args.nat_upstream == "memory" else ""))
            if processes:
                console.print(f"state: Redis {redact_url(store.url)}, namespace "
                              f"{store.namespace}; every host a `testbed serve` process, "
                              f"{args.workers or 2} workers each for the long and short links")
            console.print(f"event loop: {on}")
            console.print(f"manifest: {escape(str(lab.manifest_path.resolve()))}   "
                          f"(Ctrl-C to stop)", soft_wrap=True)
            if processes:     # until a host ends, or a signal cancels this task
                error(console, f"{await lab.wait()}: stopping the lab")
                return 1
            await asyncio.Event().wait()    # until a signal cancels this task
            return 0
        finally:
            started = lab.manifest is not None
            if started:
                console.print("stopping")
            with interrupt.cleaning_up():
                await lab.stop()
            if lab.manifest is not None:
                after_stop(lab, args.report, console)
            if started and not processes:
                print_served(served_rows(counts, lab), args.json, console)

    on = from_flag(args.uvloop, lambda text: console.print(f"[yellow]{text}[/yellow]"))
    return interrupt.run(run(), lambda main: run_on(main, on))


async def probe_lab(manifest, timeout: float) -> list[dict]:
    """Each host's endpoints (a row per address and port: TCP connect; the resolver: a DNS
    query for the long host over UDP) and whether each answered within `timeout`."""
    from testbed.client.resolver import Resolver, ResolveError
    from testbed.lab.addressing import LONG

    async def tcp(host: str, addr: str, port: int, what: str) -> dict:
        row = {"host": host, "address": addr, "port": port, "what": what}
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(addr, port), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            if isinstance(exc, asyncio.TimeoutError) or not getattr(exc, "errno", None):
                return {**row, "up": False, "detail": f"no answer in {timeout:g} s"}
            return {**row, "up": False, "detail": os.strerror(exc.errno)}
        writer.close()
        return {**row, "up": True, "detail": "accepts connections"}

    async def dns() -> dict:
        row = {"host": "lab resolver (DNS)", "address": manifest.dns_address,
               "port": manifest.dns_port, "what": "udp"}
        try:
            found = await asyncio.wait_for(
                Resolver(manifest.dns_address, manifest.dns_port).resolve(LONG), timeout)
        except (OSError, ResolveError, asyncio.TimeoutError) as exc:
            return {**row, "up": False, "detail": str(exc) or f"no answer in {timeout:g} s"}
        return {**row, "up": True, "detail": f"{LONG}: {' '.join(found)}"}

    probes = []
    for name, h in manifest.hosts.items():
        for addr in h.addresses:
            probes.append(tcp(name, addr, h.port, "tcp"))
            if h.tls_port:
                probes.append(tcp(name, addr, h.tls_port, "tls"))
    probes.append(dns())
    return list(await asyncio.gather(*probes))


def lab_status(args) -> int:
    """`testbed lab status`: the manifest's lab, each host probed (table or --json); 0 when
    everything answers, 1 when something does not, 2 without a readable manifest."""
    import time

    from rich.table import Table

    from .output import open_manifest

    console = err_console()
    manifest = open_manifest(args.manifest, console)
    if manifest is None:
        return 2
    rows = asyncio.run(probe_lab(manifest, args.timeout))
    up = all(r["up"] for r in rows)
    written = args.manifest.stat().st_mtime if args.manifest.exists() else None
    if args.json:
        print_json({"manifest": str(args.manifest.resolve()), "up": up,
                    "profile": manifest.profile, "time_scale": manifest.time_scale,
                    "users": len(manifest.users),
                    "written_s_ago": None if written is None else round(time.time() - written, 1),
                    "nat": manifest.extra.get("nat"), "endpoints": rows})
    else:
        t = Table(title=f"lab status: profile {manifest.profile}, time scale "
                        f"{manifest.time_scale:g}, {len(manifest.users)} users")
        for col in ("host", "address", "port", "state", "detail"):
            t.add_column(col, overflow="fold")
        for r in rows:
            t.add_row(r["host"], r["address"], f"{r['port']}" + (" (TLS)" if r["what"] == "tls"
                                                                  else ""),
                      "[green]up[/green]" if r["up"] else "[red]DOWN[/red]", escape(r["detail"]))
        out_console().print(t)
    if not up:
        down = sum(not r["up"] for r in rows)
        error(console, f"{down} of {len(rows)} endpoints of the lab in {args.manifest} do not "
                       f"answer" + ("" if down < len(rows) else ": is the lab still up? (a lab "
                                    "removes its manifest when it stops; this one was left by "
                                    "a lab that was killed)"))
    return 0 if up else 1
