"""`testbed analyze CAPTURE`: flows, DNS, events and TCP analysis of a capture."""

from __future__ import annotations

from .output import LazyConsole, doc_start, error, open_analysis, out_console, print_json


def flow_table(flows: list[dict]):
    """The flows as a table that fits 100 columns: each connection on two lines (client,
    then server), host names elided when they must be (`--json` has them whole)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="flows", box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("client > server", no_wrap=True, overflow="ellipsis", max_width=24)
    t.add_column("host", overflow="ellipsis", min_width=10)
    t.add_column("app", no_wrap=True)
    t.add_column("kind", no_wrap=True)
    t.add_column("req", justify="right", no_wrap=True)
    t.add_column("end", no_wrap=True)
    t.add_column("packets", justify="right", no_wrap=True)
    t.add_column("bytes", justify="right", no_wrap=True)
    t.add_column("beat s", justify="right", no_wrap=True)
    for f in flows:
        t.add_row(f"{f['client']}\n> {f['server']}", escape(f["host"]), f["app"], f["kind"],
                  str(f["requests"]), str(f["closed_by"] or ""),
                  f"{f['packets_c2s']}>\n{f['packets_s2c']}<",
                  f"{f['bytes_c2s']}>\n{f['bytes_s2c']}<",
                  "" if f["heartbeat_s"] is None else f"{f['heartbeat_s']:g}")
    return t


def warn_incomplete(console, a) -> None:
    """On stderr: the capture is truncated, or the kernel dropped packets."""
    if a.truncated:
        from rich.markup import escape

        console.print(f"[yellow]warning:[/yellow] {escape(a.path)} is truncated: "
                      f"{escape(str(a.error))}; what "
                      f"follows covers the packets before that point", highlight=False,
                      soft_wrap=True)
    for iface, n in (a.drops or {}).items():
        if n:
            console.print(f"[yellow]warning:[/yellow] the kernel dropped {n} packets on "
                          f"interface {iface} while capturing", highlight=False)


def analyze(args) -> int:
    """The analysis of a capture: tables on stdout (or `--json`), problems on stderr."""
    console = LazyConsole()      # rich is imported only if there is something to say
    radios = []
    for name in args.radio:
        from testbed.radio import load_radio_profile
        try:
            radios.append(load_radio_profile(name))
        except (ValueError, OSError) as exc:
            error(console, str(exc))
            return 2
    a = open_analysis(args.capture, console, time_scale=args.time_scale,
                      all_legs=args.all_legs, keep_events=args.events, jobs=args.jobs)
    if a is None:
        return 2
    doc = a.summary()
    if args.events:
        doc["events"] = [e.to_dict() for e in a.events]
    if radios:
        from testbed.radio.report import radio_section
        doc["radio"] = radio_section(str(args.capture), a, radios)
    warn_incomplete(console, a)
    if args.json:
        print_json(doc)
    else:
        import json

        from rich.markup import escape
        from rich.table import Table

        out = out_console()
        scale = ""
        if a.time_scale != 1 or a.time_scale_source == "assumed":
            scale = f" (time scale {a.time_scale:g}" + (
                ", from --time-scale)" if a.time_scale_source == "assumed" else ")")
        out.print(f"{escape(str(args.capture))}: {doc['packets']} packets, "
                  f"{doc['duration_s']:.3f} s"
                  + scale + (f", made by the {doc['made_by']}" if doc["made_by"] else ""),
                  highlight=False)
        if doc["dns"]:
            t = Table(title="DNS")
            t.add_column("name")
            t.add_column("answers")
            for name, addrs in doc["dns"].items():
                t.add_row(name, " ".join(addrs))
            out.print(t)
        out.print(flow_table(doc["flows"]))
        if args.events:
            for e in doc["events"]:
                msg = e["fields"].get("message")
                t = (e["ts"] - doc_start(a)) * a.time_scale   # protocol seconds
                out.print(f"{t:10.3f} {e['src']:>21} -> {e['dst']:<21} "
                          f"{e['label']}" + (f"  {json.dumps(msg, ensure_ascii=False)[:200]}"
                                             if msg else ""), markup=False, highlight=False)
        out.print("tcp: " + (", ".join(f"{k} {v}" for k, v in doc["tcp"].items() if v)
                             or "no retransmissions, duplicate ACKs or other analysis flags"))
        if radios:
            from testbed.radio.report import print_radio
            print_radio(out, doc["radio"])
    return 0


