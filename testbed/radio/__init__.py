"""The carriers' side of the argument: what a phone's packets cost its cellular radio.

A `RadioProfile` (data, in `profiles/`, every number with its source) is an RRC state
machine; `simulate(timeline, profile)` runs one phone's packet timeline through it and
returns a `RadioCost`: promotions, seconds per state, tails, signalling messages, energy
and battery share. `testbed.radio.timeline.capture_costs` does it for every client of a
capture file.
"""

from .model import RadioCost, RadioMeter, RadioPacket, simulate
from .profile import RadioProfile, load_radio_profile, radio_profile_names

__all__ = ["RadioCost", "RadioMeter", "RadioPacket", "RadioProfile", "load_radio_profile",
           "radio_profile_names", "simulate"]
