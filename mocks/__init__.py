"""The lab's servers: long link, short link, location service, CDNs, DNS and the carrier NAT."""
