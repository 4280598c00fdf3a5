"""What a long link does on the wire, told as it happens: for whoever needs the times of a
phone's traffic and not only its totals (the heartbeat study's radio figures,
`testbed.radio.link.LinkTimeline`).

`LongLink(observer=...)` calls the methods of a `LinkObserver` synchronously, from the link's
own event loop, at the moment each thing happens; `Session(link_observer=...)` and
`Phone(link_observer=...)` hand their observer to every long link they open, so one observer
sees a phone's links one after another. An observer takes its own time stamps (the link has
no clock of its own to offer), must be quick, and must not raise: it runs inside the link's
I/O callbacks.
"""

from __future__ import annotations


class LinkObserver:
    """The events of a long link's TCP connection. Every method does nothing here: override
    the ones you need."""

    __slots__ = ()   # one per phone: a subclass may stay as small as its own fields

    def connecting(self) -> None:
        """The TCP connect starts: the SYN goes out."""

    def connected(self) -> None:
        """The handshake completed (the server's SYN-ACK came, the phone's ACK went)."""

    def sent(self, nbytes: int) -> None:
        """The link wrote `nbytes` to its socket (one write; TCP may split it)."""

    def received(self, nbytes: int) -> None:
        """`nbytes` arrived (one read; TCP may have carried them in several segments)."""

    def closed(self, by_peer: bool) -> None:
        """The connection ended: `by_peer` when the other end closed or reset it, not when
        this side closed or aborted it."""
