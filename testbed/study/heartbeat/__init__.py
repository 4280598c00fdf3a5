"""The heartbeat study (STORYBOARD.md section 5): real phones behind a carrier NAT, per policy.

`testbed study heartbeat` starts one lab with a carrier NAT (`LabConfig.nat_timeout_s`), and
`clients` phones per heartbeat policy (`testbed.client.phone.Phone`, the emulator the other
scenarios use) plus one sender, all lab users; every phone lives `hours` of protocol time
(PROTOCOL.md section 6: at time scale k a protocol day takes 86400/k wall seconds). All
policies share the lab, the NAT and the clock, so one day takes one day of protocol time.
The phones run in the lab's event loop (`processes=0`) or in child processes of their own
(`testbed.fleet.Fleet`, each with a share of the phones and its own sender session),
whose clocks take the lab clock's origin so that protocol times on both sides are one time
line.

How it is measured (docs/heartbeat-study.md explains each choice):

* set-up: every phone logs in over TLS, takes newinit on the short link and resolves the
  long link's name first (`start_concurrency` at a time per process; a request the NAT
  forgot is sent again); only when all are in do phones open their long links
  (`online_per_s` a wall second per process, evenly), so the costly handshakes are over before
  any heartbeat's timing matters. A phone's window opens when its long link is
  identified and synced, and closes `hours` later, at the first moment no heartbeat or
  reconnect is in flight (so every heartbeat counted has its outcome counted); its counters
  are the difference of two snapshots of `PhoneMetrics`;
* wake-ups and bytes are scaled to 24 h per phone; bytes are the long link's application
  bytes, plus an estimate of TCP/IP overhead (`TCPIP_HEADER_BYTES` per frame for its own
  segment and as much again for the ACK it draws, and `TCP_CONN_SEGMENTS` header-only
  segments per TCP connection for handshake and teardown);
* the sender (a lab user on the short link: one HTTP connection per message, as the report
  saw) messages each phone at random times, uniform over the phone's window, on average
  `messages_per_client_per_day`; a message's send time is read on the shared clock just
  before the request goes out, its receive time is the phone's `metrics.received` entry
  (stamped when the newsync that brought it returned); delay = received - sent;
* after its window a phone keeps running (the drain, in no rate) until every message sent
  to it has arrived or `drain_s` has passed, so that a message sent just before the end
  reaches the phone the way it would have (at the next heartbeat of a dead link); then its
  loop stops, its long link is aborted and it takes one last newsync on the short link: a
  message first seen there is counted `caught_up` (delivered, no delay figure), one still
  missing is `lost`;
* NAT expiries are attributed to phones by source address (each phone binds its own
  loopback address, `client_address`; the NAT's `NatEvent`s name it), counting only
  expiries inside the phone's window;
* with radio profiles (`radio`), each phone's long links report what they put on the wire
  (`Phone(link_observer=...)`, a `testbed.radio.link.LinkTimeline`): its IP packets in the
  window, both ways, feed a `RadioMeter` per profile, whose costs are summed per policy and
  scaled to a phone-day and to the operator's `population`;
* an event-loop lag monitor in every process records how late a 5 ms sleep wakes up; lag
  times k is the error, in protocol seconds, of every timer and time stamp in the run
  (heartbeat due times, the NAT's idleness stamps, the NOOP timeout). Stalls longer than the
  slack of the tightest policy under the NAT timeout (`timing_margin`) are counted: each can
  kill a link that should have lived.

The package, by job: `config` (what to run), `results` (what it reports), `measure` (phone
snapshots, loop lag, statistics), `driver` (the phones of one event loop), `orchestrate`
(lab, plan, fleets), `figures` (outcomes to results), `render` (table, plot), `cli`.
"""

from .cli import config_from_args, main_heartbeat, register
from .config import StudyConfig, timing_margin
from .orchestrate import run_study
from .render import render_radio_tables, render_table, timing_summary, write_plot
from .results import PolicyResult, RadioFigures, StudyResult

__all__ = ["PolicyResult", "RadioFigures", "StudyConfig", "StudyResult", "config_from_args",
           "main_heartbeat", "register", "render_radio_tables", "render_table", "run_study",
           "timing_margin", "timing_summary", "write_plot"]
