"""mapi.mapabc.com over a real socket: reverse geocoding, cell lookup, strict parameters."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from mocks.mapabc import (ACCURACY_RANGE_M, CELL_SPREAD_M, GAZETTEER, cell_location, make_app,
                          nearest_district)
from mocks.nearby import great_circle_m


@pytest.fixture
async def server():
    app = make_app()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as http:
        yield app, http, f"http://{host}:{port}"
    await runner.cleanup()


async def get(http: aiohttp.ClientSession, base: str, raw: str):
    """GET with the query sent exactly as written (encoded=True), garbage included."""
    async with http.get(URL(base + raw, encoded=True)) as resp:
        body = await resp.read()
        return resp.status, resp.headers, body


async def test_regeo_finds_haidian(server):
    app, http, base = server
    # Peking University, in Haidian, ~4 km from the district centre, ~12 km from Dongcheng.
    status, headers, body = await get(http, base, "/v3/geocode/regeo?location=116.3105,39.9929")
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert "海淀区".encode() in body  # UTF-8, not \u escapes
    doc = json.loads(body)
    assert doc["status"] == "1"
    assert doc["regeocode"] == {"formatted_address": "北京市海淀区", "province": "北京市",
                                "city": "北京市", "district": "海淀区"}
    assert app["stats"]["/v3/geocode/regeo"] == 1


@pytest.mark.parametrize("loc,expected", [
    ("121.5900,31.2050", ("上海市", "浦东新区")),      # Zhangjiang
    ("113.3245,23.1064", ("广州市", "天河区")),        # Zhujiang New Town
    ("113.9345,22.5405", ("深圳市", "南山区")),        # Shenzhen Univ / Tencent area
    ("114.4170,30.5140", ("武汉市", "洪山区")),        # Optics Valley
])
async def test_regeo_other_cities(server, loc, expected):
    _, http, base = server
    status, _, body = await get(http, base, f"/v3/geocode/regeo?location={loc}")
    assert status == 200
    rg = json.loads(body)["regeocode"]
    assert (rg["city"], rg["district"]) == expected
    assert rg["formatted_address"].endswith(expected[1])


async def test_regeo_is_nearest_by_great_circle():
    # Every gazetteer centre maps to itself, and a point between two districts to the closer.
    for d in GAZETTEER:
        assert nearest_district(d.lon, d.lat) is d
    a, b = GAZETTEER[0], GAZETTEER[1]
    lon, lat = a.lon * 0.6 + b.lon * 0.4, a.lat * 0.6 + b.lat * 0.4
    assert nearest_district(lon, lat) is a


async def test_cell_deterministic_and_in_range(server):
    app, http, base = server
    seen = set()
    for lac, cid in [(1, 0), (4123, 26721), (65535, 268435455), (4123, 26722), (9, 77)]:
        q = f"/v3/cell?mcc=460&mnc=0&lac={lac}&cid={cid}"
        s1, h1, b1 = await get(http, base, q)
        s2, _, b2 = await get(http, base, q)
        assert s1 == s2 == 200 and b1 == b2
        assert h1["Content-Type"] == "application/json; charset=utf-8"
        doc = json.loads(b1)
        assert doc["status"] == "1"
        lon, lat = map(float, doc["location"].split(","))
        assert ACCURACY_RANGE_M[0] <= doc["accuracy"] <= ACCURACY_RANGE_M[1]
        assert isinstance(doc["accuracy"], int)
        # Within the spread of some gazetteer district (allow for the 6-decimal rounding).
        assert min(great_circle_m(lon, lat, d.lon, d.lat) for d in GAZETTEER) \
            <= CELL_SPREAD_M + 1
        seen.add(doc["location"])
    assert len(seen) == 5
    assert app["stats"]["/v3/cell"] == 10


def test_cell_same_lac_same_district_and_spread():
    # Cells of one location area gather around one district; different cells differ.
    points = [cell_location(460, 1, 4123, cid) for cid in range(200)]
    common = set(GAZETTEER)
    for lon, lat, _ in points:
        common &= {d for d in GAZETTEER
                   if great_circle_m(lon, lat, d.lon, d.lat) <= CELL_SPREAD_M + 1}
    assert common  # one district whose disc holds every cell of the LAC
    assert len({(lon, lat) for lon, lat, _ in points}) == 200
    accuracies = {acc for _, _, acc in points}
    assert len(accuracies) > 50
    # Many LACs reach most of the gazetteer.
    districts = {nearest_district(*cell_location(460, 0, lac, 1)[:2]) for lac in range(1, 400)}
    assert len(districts) >= len(GAZETTEER) * 2 // 3


BAD_QUERIES = [
    # regeo
    "/v3/geocode/regeo",
    "/v3/geocode/regeo?location=",
    "/v3/geocode/regeo?location=116.3",
    "/v3/geocode/regeo?location=116.3,39.9,10",
    "/v3/geocode/regeo?location=abc,39.9",
    "/v3/geocode/regeo?location=116.3,39.9x",
    "/v3/geocode/regeo?location=nan,39.9",
    "/v3/geocode/regeo?location=116.3,NaN",
    "/v3/geocode/regeo?location=inf,39.9",
    "/v3/geocode/regeo?location=-Infinity,39.9",
    "/v3/geocode/regeo?location=1e2,39.9",
    "/v3/geocode/regeo?location=0x10,39.9",
    "/v3/geocode/regeo?location=%20116.3,39.9",
    "/v3/geocode/regeo?location=116.3,%2039.9",
    "/v3/geocode/regeo?location=180.5,39.9",
    "/v3/geocode/regeo?location=-181,39.9",
    "/v3/geocode/regeo?location=116.3,90.01",
    "/v3/geocode/regeo?location=116.3,-91",
    "/v3/geocode/regeo?location=116.3;39.9",
    "/v3/geocode/regeo?location=116.3,39.9&location=116.3,39.9",
    "/v3/geocode/regeo?location=116.3,39.9&evil=1",
    "/v3/geocode/regeo?location=116.3,39.9&output=xml",
    "/v3/geocode/regeo?location=%E5%8C%97,39.9",
    # cell
    "/v3/cell",
    "/v3/cell?mcc=460&mnc=0&lac=1",
    "/v3/cell?mnc=0&lac=1&cid=1",
    "/v3/cell?mcc=461&mnc=0&lac=1&cid=1",
    "/v3/cell?mcc=310&mnc=0&lac=1&cid=1",
    "/v3/cell?mcc=460&mnc=100&lac=1&cid=1",
    "/v3/cell?mcc=460&mnc=-1&lac=1&cid=1",
    "/v3/cell?mcc=460&mnc=0&lac=0&cid=1",
    "/v3/cell?mcc=460&mnc=0&lac=65536&cid=1",
    "/v3/cell?mcc=460&mnc=0&lac=1&cid=268435456",
    "/v3/cell?mcc=460&mnc=0&lac=1&cid=-1",
    "/v3/cell?mcc=460&mnc=0&lac=1&cid=1.5",
    "/v3/cell?mcc=460&mnc=0&lac=1&cid=nan",
    "/v3/cell?mcc=460&mnc=0&lac=1&cid=inf",
    "/v3/cell?mcc=460&mnc=0&lac=1&cid=1e3",
    "/v3/cell?mcc=460&mnc=0&lac=1&cid=0x10",
    "/v3/cell?mcc=460&mnc=0&lac=1&cid=12abc",
    "/v3/cell?mcc=460&mnc=0&lac=1&cid=",
    "/v3/cell?mcc=460&mnc=0&lac=1&cid=%201",
    "/v3/cell?mcc=460&mnc=0&lac=1&cid=99999999999999999999999",
    "/v3/cell?mcc=460&mnc=0&lac=1&cid=1&cid=2",
    "/v3/cell?mcc=460&mnc=0&lac=1&cid=1&garbage=yes",
]


@pytest.mark.parametrize("raw", BAD_QUERIES)
async def test_bad_parameters_400(server, raw):
    app, http, base = server
    status, headers, body = await get(http, base, raw)
    assert status == 400, raw
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(body) == {"status": "0", "info": "INVALID_PARAMS"}
    assert sum(app["stats"].values()) == 1


async def test_known_optional_parameters_accepted(server):
    _, http, base = server
    status, _, body = await get(http, base,
                                "/v3/geocode/regeo?key=labkey&output=JSON&location=-0.5,51.5")
    assert status == 200 and json.loads(body)["status"] == "1"
    status, _, _ = await get(http, base, "/v3/cell?mcc=460&mnc=00&lac=1&cid=0&key=k")
    assert status == 200


async def test_unknown_path_and_method(server):
    app, http, base = server
    status, headers, body = await get(http, base, "/v3/geocode/geo?address=x")
    assert status == 404 and json.loads(body)["status"] == "0"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    async with http.post(f"{base}/v3/cell", data=b"mcc=460") as resp:
        assert resp.status == 405
        assert "GET" in resp.headers["Allow"]
    assert app["stats"]["/v3/geocode/geo"] == 1 and app["stats"]["/v3/cell"] == 1
