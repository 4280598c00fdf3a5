"""People nearby: great-circle distance, the 100 m rounding and the distance buckets."""

from __future__ import annotations

import math

EARTH_RADIUS_M = 6_371_008.8
BUCKETS = ((100, "100米以内"), (200, "200米以内"), (500, "500米以内"), (1000, "1公里以内"),
           (2000, "2公里以内"), (5000, "5公里以内"))
FAR_BUCKET = "5公里以外"


def great_circle_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Haversine distance in metres on a sphere of radius 6,371,008.8 m."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def round_distance(d: float) -> int:
    """Up to the next multiple of 100 m, at least 100."""
    return max(100, int(math.ceil(d / 100.0 - 1e-9)) * 100)


def bucket(distance_m: int) -> str:
    for limit, label in BUCKETS:
        if distance_m <= limit:
            return label
    return FAR_BUCKET


def valid_coordinates(lon: float, lat: float) -> bool:
    return (math.isfinite(lon) and math.isfinite(lat) and -180.0 <= lon <= 180.0
            and -90.0 <= lat <= 90.0)
