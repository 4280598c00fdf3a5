"""The real captures the capture tests read: the repo's copies (tests/data/real, see its
README for sources and licences), plus, as an extra, any other capture found in
../shared/captures/real beside a checkout."""

from __future__ import annotations

from pathlib import Path

REAL = Path(__file__).resolve().parents[1] / "data" / "real"
SHARED_REAL = Path(__file__).resolve().parents[3] / "shared" / "captures" / "real"

REPO_FILES = sorted(REAL.glob("*.pcap*"))
_EXTRA = sorted(p for p in SHARED_REAL.glob("*.pcap*")
                if p.name not in {f.name for f in REPO_FILES}) if SHARED_REAL.is_dir() else []
REAL_FILES = REPO_FILES + _EXTRA
CITIZENLAB = REAL / "citizenlab-wechat-android-2023.pcap"
NDPI = REAL / "ndpi-wechat-web-2017.pcap"
DNS_MULTIPLE_A = REAL / "dns-multiple-a.pcapng"
HTTP_GET = REAL / "http-get.pcapng"
