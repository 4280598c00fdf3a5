# One image for every role of the container lab (docker-compose.yml): the testbed installed
# into python:3.11-slim. It runs as the unprivileged user `testbed`; the compose file makes
# root only the roles that need it: the NAT gateway (adds the hosts' public addresses,
# NET_ADMIN), the recorder (captures, NET_RAW) and the report (writes into ./captures).
FROM python:3.11-slim

# iproute2: the NAT gateway adds addresses and the recorder finds its interface by route;
# tcpdump: compiles the recorder's capture filter into BPF
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 tcpdump \
 && rm -rf /var/lib/apt/lists/*

# the sources in /src only for the install (no WORKDIR there: it is removed after)
COPY pyproject.toml README.md LICENSE /src/
COPY testbed /src/testbed
COPY mocks /src/mocks
RUN pip install --no-cache-dir '/src[fast]' && rm -rf /src

# /lab is the `lab` volume (the CA, the manifest): a new volume takes this owner
RUN useradd --system --uid 10001 --create-home --home-dir /home/testbed testbed \
 && mkdir -p /lab /captures && chown testbed:testbed /lab
USER testbed
WORKDIR /home/testbed
CMD ["testbed", "--help"]
