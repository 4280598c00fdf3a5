"""Capture: the in-process tap, the AF_PACKET sniffer, pcapng files, flows and analysis."""
