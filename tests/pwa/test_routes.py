"""The PWA's HTTP routes on the real server: shell, assets, service worker, manifest."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import struct
import xml.etree.ElementTree as ET

import pytest
import trio
from hypothesis import example, given
from hypothesis import strategies as st

from botcall.errors import ConfigError
from botcall.signaling.static import (
    CONTENT_SECURITY_POLICY,
    MAX_ASSETS,
    PWA_DIR,
    VERSION_PLACEHOLDER,
    load_pwa,
)
from tests.kit.server import http_request, running_server

PAGE_HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; "
        "img-src 'self' data:; style-src 'self'; script-src 'self'"
    ),
    "referrer-policy": "no-referrer",
    "permissions-policy": "microphone=(self)",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
}
ASSET_TYPES = {
    "app.js": "text/javascript",
    "audio.js": "text/javascript",
    "session.js": "text/javascript",
    "peer.js": "text/javascript",
    "view.js": "text/javascript",
    "people.js": "text/javascript",
    "style.css": "text/css",
    "manifest.webmanifest": "application/manifest+json",
    "icons/icon.svg": "image/svg+xml",
    "icons/icon-192.png": "image/png",
    "icons/icon-512.png": "image/png",
    "icons/icon-maskable-512.png": "image/png",
}
SIZE_BUDGET = 50 * 1024


def media_type(response) -> str:
    return response.headers["content-type"].split(";")[0].strip()


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR (PNG spec §11.2.2)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def bundle():
    return load_pwa()


async def test_join_page_is_the_shell_with_strict_headers(tmp_path, bundle):
    async with running_server(tmp_path, media_port=0) as srv:
        first = await srv.get("/join/abcd-efgh-ijkl")
        other = await srv.get("/join/zzzz-0000-9999")
        home = await srv.get("/")
    assert PAGE_HEADERS["content-security-policy"] == CONTENT_SECURITY_POLICY
    for response in (first, other, home):
        assert response.status == 200
        assert media_type(response) == "text/html"
        for name, value in PAGE_HEADERS.items():
            assert response.headers[name] == value, name
        assert response.body == first.body  # one shell for every room
    html = first.body.decode()
    assert '<link rel="manifest" href="/pwa/manifest.webmanifest">' in html
    assert f'<script type="module" src="/pwa/app.js?v={bundle.version}"></script>' in html
    assert VERSION_PLACEHOLDER.decode() not in html
    # Nothing inline: the CSP allows only same-origin scripts and styles.
    assert re.search(r"<script(?![^>]*\bsrc=)", html) is None
    assert "<style" not in html and " style=" not in html
    assert re.search(r"\son[a-z]+=", html) is None
    # A real <button> whose accessible name contains "Join".
    assert re.search(r'<button id="join" type="submit"[^>]*>Join call</button>', html)


async def test_join_path_with_more_segments_is_not_the_shell(tmp_path):
    async with running_server(tmp_path, media_port=0) as srv:
        nested = await srv.get("/join/a/b")
        empty = await srv.get("/join/")
    assert nested.status == 404 and empty.status == 404


@pytest.mark.parametrize("name", sorted(ASSET_TYPES))
async def test_assets_have_their_mime_types(tmp_path, bundle, name):
    async with running_server(tmp_path, media_port=0) as srv:
        response = await srv.get(f"/pwa/{name}")
    assert response.status == 200
    assert media_type(response) == ASSET_TYPES[name]
    assert response.headers["x-content-type-options"] == "nosniff"
    on_disk = (PWA_DIR / name).read_bytes()
    if name.endswith(".png"):
        assert response.body == on_disk
    else:
        assert response.body == on_disk.replace(VERSION_PLACEHOLDER, bundle.version.encode())


async def test_versioned_urls_are_cached_for_a_year_others_briefly(tmp_path, bundle):
    async with running_server(tmp_path, media_port=0) as srv:
        versioned = await srv.get(f"/pwa/app.js?v={bundle.version}")
        bare = await srv.get("/pwa/app.js")
        stale = await srv.get("/pwa/app.js?v=000000000000")
    assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert bare.headers["cache-control"] == "public, max-age=300"
    assert stale.headers["cache-control"] == "public, max-age=300"
    assert versioned.body == bare.body == stale.body


async def test_etag_revalidation_answers_304(tmp_path):
    async with running_server(tmp_path, media_port=0) as srv:
        first = await srv.get("/pwa/style.css")
        etag = first.headers["etag"]
        again = await srv.get("/pwa/style.css", headers={"If-None-Match": etag})
        weak = await srv.get("/pwa/style.css", headers={"If-None-Match": "W/" + etag})
        other = await srv.get("/pwa/style.css", headers={"If-None-Match": '"not-this-one"'})
        shell = await srv.get("/join/room-1")
        shell_again = await srv.get("/join/room-2", headers={"If-None-Match": shell.headers["etag"]})
    assert re.fullmatch(r'"[0-9a-f]{20}"', etag)
    assert again.status == 304 and again.body == b""
    assert weak.status == 304
    assert other.status == 200 and other.body == first.body
    assert shell_again.status == 304
    assert shell_again.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


async def test_text_is_gzipped_when_accepted(tmp_path):
    async with running_server(tmp_path, media_port=0) as srv:
        plain = await srv.get("/pwa/app.js")
        packed = await srv.get("/pwa/app.js", headers={"Accept-Encoding": "gzip, deflate"})
        refused = await srv.get("/pwa/app.js", headers={"Accept-Encoding": "gzip;q=0"})
        png = await srv.get("/pwa/icons/icon-512.png", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in plain.headers
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(packed.body) == plain.body
    assert len(packed.body) < len(plain.body) / 2
    assert "content-encoding" not in refused.headers and refused.body == plain.body
    assert "content-encoding" not in png.headers


async def test_service_worker_is_served_from_the_root(tmp_path, bundle):
    async with running_server(tmp_path, media_port=0) as srv:
        worker = await srv.get("/sw.js")
        under_pwa = await srv.get("/pwa/sw.js")
        source = worker.body.decode()
        precached = re.findall(r"'(/pwa/[^'`]+)'|`(/pwa/[^`$]+)\$\{VERSION\}`", source)
        precached_urls = [a or b + bundle.version for a, b in precached]
        fetched = {url: await srv.get(url) for url in precached_urls}
    assert worker.status == 200
    assert media_type(worker) == "text/javascript"
    assert worker.headers["service-worker-allowed"] == "/"
    assert worker.headers["cache-control"] == "no-cache"
    assert f"const VERSION = '{bundle.version}';" in source
    assert under_pwa.status == 404
    # Everything the worker precaches exists, or its install would fail.
    assert "/pwa/index.html" in precached_urls and f"/pwa/app.js?v={bundle.version}" in precached_urls
    assert len(precached_urls) >= 8
    # Every script module the page loads is there for offline starts.
    modules = {f"/pwa/{name}?v={bundle.version}" for name in bundle.assets if name.endswith(".js") and name != "sw.js"}
    assert modules <= set(precached_urls)
    for url, response in fetched.items():
        assert response.status == 200, url


async def test_manifest_fields_and_icons(tmp_path):
    async with running_server(tmp_path, media_port=0) as srv:
        response = await srv.get("/pwa/manifest.webmanifest")
        manifest = json.loads(response.body)
        icons = {icon["src"]: await srv.get(icon["src"]) for icon in manifest["icons"]}
    assert manifest["name"] == "BotCall"
    assert manifest["short_name"]
    assert manifest["start_url"] == "/"
    assert manifest["scope"] == "/"
    assert manifest["display"] == "standalone"
    for colour in ("theme_color", "background_color"):
        assert re.fullmatch(r"#[0-9a-f]{6}", manifest[colour]), colour
    declared = {(icon["sizes"], icon.get("purpose", "any")) for icon in manifest["icons"]}
    assert {("192x192", "any"), ("512x512", "any"), ("512x512", "maskable")} <= declared
    for icon in manifest["icons"]:
        got = icons[icon["src"]]
        assert got.status == 200, icon["src"]
        assert media_type(got) == icon["type"]
        if icon["type"] == "image/png":
            width, height = png_size(got.body)
            assert icon["sizes"] == f"{width}x{height}"
        else:
            root = ET.fromstring(got.body)
            assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("viewBox") == "0 0 512 512"
            assert icon["sizes"] == "any"


async def get_asset(base: str, path: str):
    """GET ``path``; Werkzeug answers ``//`` with a 308 to the merged path, which is followed once."""
    response = await http_request(base + path)
    if response.status == 308:
        location = response.headers["location"]
        assert location.startswith(f"{base}/pwa/"), (path, location)
        response = await http_request(location)
    return response


TRAVERSALS = [
    "/pwa/../botcall/errors.py",
    "/pwa/../pyproject.toml",
    "/pwa/%2e%2e/pyproject.toml",
    "/pwa/%2e%2e%2fpyproject.toml",
    "/pwa/..%2f..%2fetc%2fpasswd",
    "/pwa/icons/../../botcall/errors.py",
    "/pwa//etc/passwd",
    "/pwa/%2fetc%2fpasswd",
    "/pwa/tools/make_icons.py",
    "/pwa/./app.js",
    "/pwa/icons/./icon.svg",
    "/pwa/app.js%00.png",
    "/pwa/..\\pyproject.toml",
    "/pwa/APP.JS",
    "/pwa/",
    "/pwa/icons",
    "/pwa/icons/",
]


async def test_path_traversal_is_refused(tmp_path):
    secret = (PWA_DIR.parent / "pyproject.toml").read_bytes()[:40]
    async with running_server(tmp_path, media_port=0) as srv:
        responses = {path: await get_asset(srv.url, path) for path in TRAVERSALS}
    for path, response in responses.items():
        assert response.status == 404, (path, response.status)
        assert response.error_code == "not_found", path
        assert secret not in response.body and b"root:" not in response.body


_NAME_PARTS = st.sampled_from(
    list("abcdefghijklmnopqrstuvwxyz0123456789./\\-_%~:;") + ["..", "%2e", "%2f", "%5c", "%00", "icons/", "app.js"]
)


async def test_any_asset_name_is_a_file_of_the_bundle_or_404(tmp_path):
    """Hypothesis drives real requests: the examples run in a worker thread and
    call back into the Trio loop, so one server answers them all."""
    bundle = load_pwa()
    servable = {name: asset.body for name, asset in bundle.assets.items() if name != "sw.js"}

    async with running_server(tmp_path, media_port=0) as srv:

        @given(name=st.lists(_NAME_PARTS, min_size=1, max_size=12).map("".join))
        @example(name="../../../../etc/passwd")
        @example(name="icons/../../README.md")
        @example(name="%2e%2e/botcall/signaling/static.py")
        @example(name="sw.js")
        @example(name="icons/icon-192.png")
        def check(name: str) -> None:
            response = trio.from_thread.run(get_asset, srv.url, f"/pwa/{name}")
            if response.status == 200:
                assert response.body in servable.values(), name
            else:
                assert response.status in (400, 404), (name, response.status)
            if name in servable:
                assert response.status == 200 and response.body == servable[name]

        await trio.to_thread.run_sync(check)


def test_only_known_file_types_are_loaded(tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html>v=__BOTCALL_VERSION__")
    (tmp_path / "sw.js").write_text("const VERSION = '__BOTCALL_VERSION__';")
    (tmp_path / "notes.py").write_text("secret = 1")
    (tmp_path / ".env").write_text("TOKEN=x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config.js").write_text("x")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"\x89PNG__BOTCALL_VERSION__")
    bundle = load_pwa(tmp_path)
    assert set(bundle.assets) == {"index.html", "sw.js", "img/a.png"}
    assert bundle.shell.body == f"<!doctype html>v={bundle.version}".encode()
    assert bundle.assets["img/a.png"].body == b"\x89PNG__BOTCALL_VERSION__"  # binaries untouched
    assert re.fullmatch(r"[0-9a-f]{12}", bundle.version)

    (tmp_path / "sw.js").write_text("const VERSION = '__BOTCALL_VERSION__'; // changed")
    assert load_pwa(tmp_path).version != bundle.version


def test_the_pwa_unit_tests_are_not_served():
    """pwa/tests/*.mjs and pwa/package.json are for `node --test` only."""
    bundle = load_pwa(PWA_DIR)
    assert (PWA_DIR / "package.json").is_file() and list((PWA_DIR / "tests").glob("*.test.mjs"))
    assert not [name for name in bundle.assets if name.startswith("tests/") or name.endswith((".json", ".mjs"))]


def test_loading_refuses_an_incomplete_or_oversized_directory(tmp_path):
    with pytest.raises(ConfigError, match="sw.js"):
        (tmp_path / "index.html").write_text("x")
        load_pwa(tmp_path)
    (tmp_path / "sw.js").write_text("x")
    for i in range(MAX_ASSETS):
        (tmp_path / f"f{i}.css").write_text("x")
    with pytest.raises(ConfigError, match="more than"):
        load_pwa(tmp_path)
    with pytest.raises(ConfigError, match="lacks"):
        load_pwa(tmp_path / "missing")


def test_page_size_budget():
    """index.html, its scripts and style.css under 50 KB gzipped."""
    page = ("index.html", "app.js", "session.js", "peer.js", "view.js", "audio.js", "style.css")
    sizes = {name: len(gzip.compress((PWA_DIR / name).read_bytes(), 9)) for name in page}
    total = sum(sizes.values())
    print(f"gzipped sizes: {sizes}, total {total} bytes of {SIZE_BUDGET}")
    assert total < SIZE_BUDGET


def test_icons_are_what_the_generator_draws(tmp_path):
    spec = importlib.util.spec_from_file_location("make_icons", PWA_DIR / "tools" / "make_icons.py")
    make_icons = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_icons)
    written = make_icons.write_icons(tmp_path)
    assert {p.name for p in written} == {"icon-192.png", "icon-512.png", "icon-maskable-512.png", "icon.svg"}
    for path in written:
        assert path.read_bytes() == (PWA_DIR / "icons" / path.name).read_bytes(), path.name
    assert png_size((tmp_path / "icon-192.png").read_bytes()) == (192, 192)
    # The plain icon has transparent rounded corners; the maskable one is full-bleed.
    rows_plain = make_icons.render_rgba(192, maskable=False)
    rows_mask = make_icons.render_rgba(192, maskable=True)
    assert rows_plain[0][3] == 0 and rows_mask[0][3] == 255
    assert rows_plain[96][96 * 4 + 3] == 255
