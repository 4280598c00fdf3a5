"""The study's figures for people: the table and the radio table (rich), the timing line,
the plot (matplotlib)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .config import DAY_S
from testbed.radio.model import percent

from .results import PolicyResult, RadioFigures, StudyResult


def _fmt_s(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if v >= 600:
        return f"{v / 60:.1f} min"
    return f"{v:.0f} s" if v >= 10 else f"{v:.1f} s"


def timing_summary(result: StudyResult) -> str:
    started = "" if result.startup_wall_s is None else \
        f"; {result.startup_wall_s + result.setup_wall_s:.1f} s from the command's start"
    return (f"wall {result.wall_s:.1f} s (set-up {result.setup_wall_s:.1f} s, of which "
            f"logins {result.login_wall_s:.1f} s{started}), CPU "
            f"{result.cpu_s:.1f} s, peak RSS {result.max_rss_mb:.0f} MB, on {result.event_loop}; "
            f"event-loop lag while phones ran: p50 {result.p50_loop_lag_s:.1f}, p99 "
            f"{result.p99_loop_lag_s:.1f}, max {result.max_loop_lag_s:.1f} protocol s "
            f"({result.max_loop_lag_wall_ms:.1f} ms wall); stalls over the "
            f"{result.stall_threshold_s or 0:g} s threshold: {result.stalls}{_waiting(result)}")


def _waiting(result: StudyResult) -> str:
    """How much of the lag was the machine's: the loops' wait for a CPU (where known)."""
    if result.cpu_wait_s is None:
        return ""
    of_stalls = (f", {result.stalls_waiting_for_cpu} of them mostly waiting for a CPU"
                 if result.stalls else "")
    return f"{of_stalls}; the loops waited {result.cpu_wait_s:.1f} s for a CPU while phones ran"


TABLE_WIDTH = 150   # what the one-row-per-policy table needs; narrower consoles get it turned


def _rows(p: PolicyResult) -> list[tuple[str, str]]:
    settled = "-"
    if p.settled_clients is not None:
        settled = (f"{p.settled_interval_s:g} s ({p.settled_clients}/{p.clients})"
                   if p.settled_interval_s is not None else f"none (0/{p.clients})")
    msgs = f"{p.messages_sent}/{p.messages_delivered}"
    if p.messages_caught_up:
        msgs += f"(+{p.messages_caught_up} at end)"
    msgs += f"/{p.messages_lost}/{p.duplicates}"
    if p.send_failures:
        msgs += f" ({p.send_failures} not sent)"
    return [("heart-\nbeats", f"{p.heartbeats_per_day:.1f}"),
            ("silent\ndeaths", f"{p.silent_deaths_per_day:.2f}"),
            ("re-\nconnects", f"{p.reconnects_per_day:.2f}"),
            ("NAT\nexpiries", "-" if p.nat_expiries_per_day is None
             else f"{p.nat_expiries_per_day:.2f}"),
            ("wake-\nups", f"{p.wakeups_per_day:.1f}"),
            ("app\nKB", f"{p.app_bytes_per_day / 1000:.1f}"),
            ("KB with\nTCP/IP", f"{p.bytes_per_day / 1000:.1f}"),
            ("messages\nsent/ok/lost/dup", msgs),
            ("delay\np50", _fmt_s(p.delay_p50_s)),
            ("delay\np99", _fmt_s(p.delay_p99_s)),
            ("delay\nmax", _fmt_s(p.delay_max_s)),
            ("settled\ninterval", settled)]


def render_table(result: StudyResult, vertical: bool = False):
    """A rich Table of the figures, one row per policy (rates per phone per 24 h); with
    `vertical`, one row per figure and a column per policy (for narrow terminals)."""
    from rich.table import Table

    c = result.config
    t = Table(title=f"Heartbeat study: {c['clients']} phones per policy behind a "
                    f"{c['nat_timeout_s']:g} s NAT, {c['hours']:g} h at time scale "
                    f"{c['time_scale']:g} (rates per phone per day)",
              caption=f"Messages: totals, sent / delivered / lost / duplicated. Delay: protocol "
                      f"seconds from send to the phone's newsync. KB: long-link application "
                      f"bytes, then with TCP/IP headers estimated ({result.tcpip_estimate}). "
                      f"Wall {result.wall_s:.1f} s; event-loop lag max "
                      f"{result.max_loop_lag_s:.1f} protocol s "
                      f"({result.max_loop_lag_wall_ms:.1f} ms wall).")
    rows = [_rows(p) for p in result.policies]
    if vertical:
        t.add_column("per phone per day")
        for p in result.policies:
            t.add_column(p.policy, justify="right", no_wrap=True)
        for i, (name, _) in enumerate(rows[0] if rows else []):
            label = "wake-ups" if name.startswith("wake") else \
                name.replace("-\n", "").replace("\n", " ")
            t.add_row(label, *[r[i][1] for r in rows])
        return t
    t.add_column("policy", no_wrap=True)
    for name, _ in (rows[0] if rows else []):
        t.add_column(name, justify="right", no_wrap=True)
    for p, r in zip(result.policies, rows):
        t.add_row(p.policy, *[v for _, v in r])
    return t


def si(v: float) -> str:
    """13_333_333 -> '13.3M', 950 -> '950', 0.5 -> '0.5'."""
    for factor, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= factor:
            return f"{v / factor:.3g}{unit}"
    return f"{v:.3g}"


def _radio_rows(f: RadioFigures) -> list[tuple[str, str]]:
    pop = si(f.population)
    return [("wake-\nups", f"{f.wakeups_per_day:.1f}"),
            ("by\nserver", f"{f.server_wakeups_per_day:.1f}"),
            ("promo-\ntions", f"{f.promotions_per_day:.1f}"),
            ("signalling\nmsgs", f"{f.signalling_per_day:,.0f}"),
            ("radio on\nmin", f"{f.radio_on_s_per_day / 60:.1f}"),
            ("of it\ntail min", f"{f.tail_s_per_day / 60:.1f}"),
            ("energy\nJ", f"{f.energy_j_per_day:,.0f}"),
            ("battery", percent(f.battery_share_per_day)),
            ("msgs/s per\nM users", f"{f.signalling_per_s_per_million:,.0f}"),
            (f"msgs/s at\n{pop} users", si(f.signalling_per_s)),
            (f"wake-ups/s\nat {pop}", si(f.wakeups_per_s))]


def render_radio_tables(result: StudyResult, vertical: bool = False) -> list:
    """What the policies' traffic cost each radio profile (`--radio`), per phone per day and
    for the operator: one rich Table (a row per policy and profile), or with `vertical` one
    per profile (a row per figure, a column per policy). Empty without `--radio`."""
    from rich.table import Table

    names = [prof["name"] for prof in result.radio_profiles]
    if not names:
        return []
    c = result.config
    pop = si(c["population"])
    caption = (f"Per phone per day, from each phone's packets in its window (docs/radio.md: "
               f"promotions from idle are wake-ups; signalling counts RRC messages on the air "
               f"interface; energy above idle, battery of the profile). Operator: the daily "
               f"average if {pop} users' phones did the same.")
    title = (f"Radio: what the traffic costs, {c['nat_timeout_s']:g} s NAT, "
             f"{c['hours']:g} h at time scale {c['time_scale']:g}")
    if vertical:
        tables = []
        for name in names:
            t = Table(title=f"{title}: {name}", caption=caption)
            t.add_column("per phone per day")
            for p in result.policies:
                t.add_column(p.policy, justify="right", no_wrap=True)
            rows = [_radio_rows(p.radio[name]) for p in result.policies]
            for i, (label, _) in enumerate(rows[0]):
                t.add_row(label.replace("-\n", "").replace("\n", " "), *[r[i][1] for r in rows])
            tables.append(t)
        return tables
    t = Table(title=title, caption=caption)
    t.add_column("policy", no_wrap=True)
    t.add_column("radio", no_wrap=True)
    for label, _ in _radio_rows(RadioFigures(profile="", population=c["population"])):
        t.add_column(label, justify="right", no_wrap=True)
    for p in result.policies:
        for name in names:
            t.add_row(p.policy, name, *[v for _, v in _radio_rows(p.radio[name])])
    return [t]


@dataclass(frozen=True)
class Panel:
    """One bar chart of the plot: a figure per policy."""

    title: str
    value: Callable[[PolicyResult], float]
    fmt: str                                            # bar labels
    reference: Optional[Callable[[dict], tuple[float, str]]] = None   # (y, label) from config


def _one_per_nat_timeout(config: dict) -> tuple[float, str]:
    per_timeout = DAY_S / config["nat_timeout_s"]
    return per_timeout, f"one per NAT timeout ({per_timeout:.0f}/day)"


# side by side, left to right
PANELS = (
    Panel("wake-ups per phone per day", lambda p: p.wakeups_per_day, "{:.1f}",
          _one_per_nat_timeout),
    Panel("silent link deaths per phone per day", lambda p: p.silent_deaths_per_day, "{:.2f}"),
)


@dataclass(frozen=True)
class RadioPanel:
    """One bar chart of the plot with a bar per radio profile in each policy's group."""

    title: str                                          # may name {population}
    value: Callable[[RadioFigures], float]
    fmt: Callable[[float], str]                         # bar labels


# after PANELS, when the study costed radio profiles (`--radio`)
RADIO_PANELS = (
    RadioPanel("radio energy per phone per day, % of battery",
               lambda f: 100 * f.battery_share_per_day, lambda v: f"{v:.1f}%"),
    RadioPanel("signalling messages per second, {population} users",
               lambda f: f.signalling_per_s, si),
)
COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]


def _radio_panel(ax, panel: RadioPanel, result: StudyResult) -> None:
    from matplotlib.ticker import FuncFormatter

    names = [prof["name"] for prof in result.radio_profiles]
    width = 0.8 / len(names)
    top = 0.0
    for j, name in enumerate(names):
        values = [panel.value(p.radio[name]) for p in result.policies]
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(values))]
        bars = ax.bar(xs, values, width, label=name, color=COLORS[(j + 3) % len(COLORS)])
        ax.bar_label(bars, labels=[panel.fmt(v) for v in values], padding=2, fontsize=7)
        top = max([top] + values)
    ax.set_xticks(range(len(result.policies)), [p.policy for p in result.policies])
    ax.set_title(panel.title.format(population=si(result.config["population"])))
    ax.set_ylim(0, (top or 1.0) * 1.3)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: panel.fmt(v)))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)


def write_plot(result: StudyResult, path) -> Path:
    """Bar charts side by side (`PANELS`, then `RADIO_PANELS` with `--radio`): wake-ups and
    silent deaths per phone-day; battery share and the operator's signalling per radio."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    names = [p.policy for p in result.policies]
    c = result.config
    radio = RADIO_PANELS if result.radio_profiles else ()
    n = len(PANELS) + len(radio)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4.2), squeeze=False)
    for ax, panel in zip(axes[0][len(PANELS):], radio):
        _radio_panel(ax, panel, result)
    for ax, panel in zip(axes[0], PANELS):
        values = [panel.value(p) for p in result.policies]
        bars = ax.bar(names, values, color=[COLORS[i % len(COLORS)] for i in range(len(names))])
        ax.set_title(panel.title)
        ax.bar_label(bars, labels=[panel.fmt.format(v) for v in values], padding=2)
        ax.set_ylim(0, max(values + [1.0]) * 1.3)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        if panel.reference is not None:
            y, label = panel.reference(c)
            ax.axhline(y, color="grey", ls="--", lw=1, label=label)
            ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    fig.suptitle(f"{c['clients']} phones per policy behind a {c['nat_timeout_s']:g} s carrier "
                 f"NAT, {c['hours']:g} h (time scale {c['time_scale']:g})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
