"""`testbed analyze CAPTURE`: flows, DNS, events and TCP analysis of a capture."""

from __future__ import annotations

from .output import doc_start, open_analysis


def analyze(args) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    radios = []
    for name in args.radio:
        from testbed.radio import load_radio_profile
        try:
            radios.append(load_radio_profile(name))
        except (ValueError, OSError) as exc:
            console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
            return 2
    a = open_analysis(args.capture, console)
    if a is None:
        return 2
    doc = a.summary()
    if args.events:
        doc["events"] = [e.to_dict() for e in a.events]
    if radios:
        from testbed.radio.report import radio_section
        doc["radio"] = radio_section(str(args.capture), a, radios)
    if args.json:
        print(json.dumps(doc, indent=2, ensure_ascii=False, default=str))
    else:
        out = Console()
        out.print(f"{args.capture}: {doc['packets']} packets, {doc['duration_s']:.3f} s"
                  + (f" (time scale {a.time_scale:g})" if a.time_scale != 1 else "")
                  + (f", made by the {doc['made_by']}" if doc["made_by"] else ""))
        if a.truncated:
            out.print(f"[yellow]truncated:[/yellow] {a.error}")
        for iface, n in (a.drops or {}).items():
            if n:
                out.print(f"[yellow]kernel dropped {n} packets on interface {iface}[/yellow]")
        if doc["dns"]:
            t = Table(title="DNS")
            t.add_column("name")
            t.add_column("answers")
            for name, addrs in doc["dns"].items():
                t.add_row(name, " ".join(addrs))
            out.print(t)
        t = Table(title="flows")
        for col in ("client", "server", "host", "app", "kind", "requests", "closed_by",
                    "packets", "bytes c>s", "bytes s>c", "heartbeat_s"):
            t.add_column(col)
        for f in doc["flows"]:
            t.add_row(f["client"], f["server"], f["host"], f["app"], f["kind"],
                      str(f["requests"]), str(f["closed_by"] or ""),
                      f"{f['packets_c2s']}/{f['packets_s2c']}", str(f["bytes_c2s"]),
                      str(f["bytes_s2c"]),
                      "" if f["heartbeat_s"] is None else f"{f['heartbeat_s']:g}")
        out.print(t)
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


