"""`mapi.mapabc.com`, the location service behind "people nearby" (PROTOCOL.md section 5).

The 2013 client turned a GPS fix into an address (reverse geocoding) and, without GPS, a
serving cell into a position. Both are mocked offline and deterministically:

- `GET /v3/geocode/regeo?location=<lon>,<lat>` names the nearest district of a small built-in
  gazetteer of real Chinese districts (great-circle distance, as the nearby service uses);
- `GET /v3/cell?mcc=&mnc=&lac=&cid=` places a cell a few km from one gazetteer district,
  chosen by hashing the operator and location area, so cells of one LAC stay in one place
  and the same cell is always at the same spot with the same accuracy.

Parameters are checked strictly: anything that is not plainly a number in range (NaN, inf,
exponents, hex, spaces, trailing garbage, repeated or unknown parameters) is HTTP 400 with
`{"status": "0", "info": "INVALID_PARAMS"}`, so a fuzzer finds a clear contract rather than
Python's float() leniency.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from aiohttp import web
from multidict import MultiMapping

from .nearby import EARTH_RADIUS_M, great_circle_m


@dataclass(frozen=True)
class District:
    province: str
    city: str
    district: str
    lon: float
    lat: float

    @property
    def formatted_address(self) -> str:
        # Municipalities (北京市, 上海市...) are their own city: AMap does not repeat the name.
        city = "" if self.city == self.province else self.city
        return f"{self.province}{city}{self.district}"


# Approximate centres of real districts (WGS-84, ~0.01 degree). Enough to spread a lab's users
# over several cities; not a geographic reference.
GAZETTEER: tuple[District, ...] = (
    District("北京市", "北京市", "海淀区", 116.298, 39.959),
    District("北京市", "北京市", "朝阳区", 116.443, 39.921),
    District("北京市", "北京市", "东城区", 116.416, 39.928),
    District("上海市", "上海市", "浦东新区", 121.544, 31.221),
    District("上海市", "上海市", "徐汇区", 121.437, 31.188),
    District("上海市", "上海市", "黄浦区", 121.490, 31.231),
    District("天津市", "天津市", "和平区", 117.195, 39.118),
    District("重庆市", "重庆市", "渝中区", 106.569, 29.553),
    District("广东省", "广州市", "天河区", 113.361, 23.125),
    District("广东省", "广州市", "越秀区", 113.267, 23.129),
    District("广东省", "深圳市", "南山区", 113.930, 22.533),
    District("广东省", "深圳市", "福田区", 114.055, 22.522),
    District("湖北省", "武汉市", "洪山区", 114.344, 30.500),
    District("湖北省", "武汉市", "武昌区", 114.316, 30.554),
    District("四川省", "成都市", "武侯区", 104.043, 30.642),
    District("四川省", "成都市", "锦江区", 104.083, 30.657),
    District("江苏省", "南京市", "鼓楼区", 118.770, 32.066),
    District("江苏省", "南京市", "玄武区", 118.797, 32.049),
    District("浙江省", "杭州市", "西湖区", 120.130, 30.260),
    District("陕西省", "西安市", "雁塔区", 108.948, 34.222),
    District("湖南省", "长沙市", "岳麓区", 112.931, 28.235),
)

CHINA_MCC = 460
MNC_RANGE = (0, 99)
LAC_RANGE = (1, 65535)
CID_RANGE = (0, 268_435_455)          # 28-bit UMTS/LTE cell identity
CELL_SPREAD_M = 3000.0                # cells lie within this distance of their district
ACCURACY_RANGE_M = (100, 1500)

# AMap's own optional parameters, accepted and ignored so a client that sends its API key or
# asks for JSON explicitly still works; anything else is a client bug and gets 400.
IGNORED_PARAMS = frozenset({"key", "sig", "output", "extensions", "radius", "roadlevel",
                            "batch", "homeorcorp", "network", "imei", "callback"})

# Plain decimals only: no exponent, no nan/inf, no hex, no surrounding space.
_DECIMAL = re.compile(r"[+-]?\d{1,3}(?:\.\d{1,12})?\Z")
_INTEGER = re.compile(r"\d{1,10}\Z")
MAX_STATS_PATHS = 4096                # distinct paths counted before lumping into "<other>"
OTHER_PATH = "<other>"


class InvalidParams(ValueError):
    """A request parameter is missing or malformed."""


def json_response(payload: Mapping[str, Any], status: int = 200,
                  headers: Optional[Mapping[str, str]] = None) -> web.Response:
    """JSON with the Chinese place names as UTF-8, not \\u escapes, as AMap sends them."""
    return web.Response(status=status, headers=headers,
                        body=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
                        content_type="application/json", charset="utf-8")


def _invalid() -> web.Response:
    return json_response({"status": "0", "info": "INVALID_PARAMS"}, status=400)


def nearest_district(lon: float, lat: float) -> District:
    return min(GAZETTEER, key=lambda d: great_circle_m(lon, lat, d.lon, d.lat))


def _digest(*parts: int) -> bytes:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()


def cell_location(mcc: int, mnc: int, lac: int, cid: int) -> tuple[float, float, int]:
    """(lon, lat, accuracy_m) of a cell; the same four numbers always give the same answer."""
    # The district depends on the location area only (a LAC covers one region of one
    # operator); the offset within it and the accuracy depend on the cell as well.
    area = _digest(mcc, mnc, lac)
    home = GAZETTEER[int.from_bytes(area[:8], "big") % len(GAZETTEER)]
    cell = _digest(mcc, mnc, lac, cid)
    bearing = int.from_bytes(cell[0:8], "big") / 2.0 ** 64 * 2.0 * math.pi
    # sqrt makes the points uniform over the disc rather than bunched at its centre.
    dist = CELL_SPREAD_M * math.sqrt(int.from_bytes(cell[8:16], "big") / 2.0 ** 64)
    lat = home.lat + math.degrees(dist * math.cos(bearing) / EARTH_RADIUS_M)
    lon = home.lon + math.degrees(dist * math.sin(bearing)
                                  / (EARTH_RADIUS_M * math.cos(math.radians(home.lat))))
    lo, hi = ACCURACY_RANGE_M
    accuracy = lo + int.from_bytes(cell[16:20], "big") % (hi - lo + 1)
    return lon, lat, accuracy


def _params(query: MultiMapping[str], required: tuple[str, ...]) -> dict[str, str]:
    """Each required parameter exactly once; only known optional ones besides."""
    out = {}
    for name in required:
        values = query.getall(name, [])
        if len(values) != 1:
            raise InvalidParams(f"{name} given {len(values)} times")
        out[name] = values[0]
    extra = set(query.keys()) - set(required) - IGNORED_PARAMS
    if extra:
        raise InvalidParams(f"unknown parameters {sorted(extra)}")
    output = query.get("output")
    if output is not None and output.lower() != "json":
        raise InvalidParams("only output=json is served")
    return out


def parse_location(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2 or not all(_DECIMAL.match(p) for p in parts):
        raise InvalidParams(f"location {text!r}")
    lon, lat = float(parts[0]), float(parts[1])
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise InvalidParams(f"location {text!r} out of range")
    return lon, lat


def _parse_int(name: str, text: str, lo: int, hi: int) -> int:
    if not _INTEGER.match(text):
        raise InvalidParams(f"{name} {text!r}")
    value = int(text)
    if not lo <= value <= hi:
        raise InvalidParams(f"{name} {value} outside {lo}..{hi}")
    return value


async def regeo(request: web.Request) -> web.Response:
    try:
        lon, lat = parse_location(_params(request.query, ("location",))["location"])
    except InvalidParams:
        return _invalid()
    d = nearest_district(lon, lat)
    return json_response({"status": "1", "info": "OK", "regeocode": {
        "formatted_address": d.formatted_address, "province": d.province, "city": d.city,
        "district": d.district}})


async def cell(request: web.Request) -> web.Response:
    try:
        p = _params(request.query, ("mcc", "mnc", "lac", "cid"))
        mcc = _parse_int("mcc", p["mcc"], CHINA_MCC, CHINA_MCC)
        mnc = _parse_int("mnc", p["mnc"], *MNC_RANGE)
        lac = _parse_int("lac", p["lac"], *LAC_RANGE)
        cid = _parse_int("cid", p["cid"], *CID_RANGE)
    except InvalidParams:
        return _invalid()
    lon, lat, accuracy = cell_location(mcc, mnc, lac, cid)
    # Six decimals (~0.1 m), as AMap formats coordinates.
    return json_response({"status": "1", "info": "OK", "location": f"{lon:.6f},{lat:.6f}",
                          "accuracy": accuracy})


def counting_middleware(stats: Counter):
    """Count every request by path, including 404s and 405s, so tests see what arrived.

    Distinct paths are capped: a fuzzer hitting random URLs must not grow the counter without
    bound, so paths beyond the first MAX_STATS_PATHS are counted under "<other>".
    """
    @web.middleware
    async def count(request: web.Request, handler):
        path = request.path
        if path not in stats and len(stats) >= MAX_STATS_PATHS:
            path = OTHER_PATH
        stats[path] += 1
        return await handler(request)
    return count


@web.middleware
async def json_errors(request: web.Request, handler):
    """Unknown paths and wrong methods answer in the service's JSON dialect, not HTML."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return json_response({"status": "0", "info": "NOT_FOUND"}, status=404)
    except web.HTTPMethodNotAllowed as exc:
        return json_response({"status": "0", "info": "METHOD_NOT_ALLOWED"}, status=405,
                             headers={"Allow": ",".join(sorted(exc.allowed_methods))})


def set_stats(app: web.Application, stats: Counter) -> None:
    """`app["stats"]`: the contract the tests use; a plain string key is deliberate here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["stats"] = stats


def make_app() -> web.Application:
    stats: Counter = Counter()
    app = web.Application(middlewares=[counting_middleware(stats), json_errors])
    set_stats(app, stats)
    app.router.add_get("/v3/geocode/regeo", regeo)
    app.router.add_get("/v3/cell", cell)
    return app
