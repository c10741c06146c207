"""The human side's PWA: the join page, its assets and the service worker.

Routes (added to the quart-trio app by :func:`register_pwa_routes`):

* ``GET /join/<room_id>`` and ``GET /``: the page shell, the same bytes for
  every room. The page reads the room id from its path and the invite secret
  from the fragment (``#invite=...``), which browsers never send, so the secret
  stays out of access logs. Served ``no-cache`` with a strict CSP.
* ``GET /pwa/<name>``: the page's assets (scripts, styles, icons, manifest).
  Only files that were in ``pwa/`` when the server started are served: the
  route looks the name up in a table built at start-up, so no request path —
  ``..``, percent-encoded or not — can reach anything else.
* ``GET /sw.js``: the service worker, at the site root because a worker's
  default scope is its own directory and it must control ``/join/...``.

The files are read once at start-up. The placeholder ``__BOTCALL_VERSION__``
in text assets is replaced by a hash of all files, so the page asks for
``/pwa/app.js?v=<hash>`` (cached for a year: the URL changes when the file
does) and the service worker's bytes change on every release, which is what
makes browsers install the new worker and drop the old cache.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from quart import Quart, Response, request

from botcall.errors import ConfigError
from botcall.errors import NotFound

log = logging.getLogger("botcall.pwa")

# Installed from a wheel, the PWA ships inside the package (botcall/pwa); in a
# source checkout it is the repository's top-level pwa/.
_PACKAGED_PWA = Path(__file__).resolve().parents[1] / "pwa"
PWA_DIR = _PACKAGED_PWA if _PACKAGED_PWA.is_dir() else Path(__file__).resolve().parents[2] / "pwa"
VERSION_PLACEHOLDER = b"__BOTCALL_VERSION__"
SHELL = "index.html"
SERVICE_WORKER = "sw.js"
# Bounds on what start-up will load into memory: the PWA is a few dozen KB.
MAX_ASSETS = 64
MAX_TOTAL_BYTES = 4 * 1024 * 1024

MIME_TYPES: Mapping[str, str] = MappingProxyType(
    {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".webmanifest": "application/manifest+json",
        ".svg": "image/svg+xml",
        ".png": "image/png",
    }
)
_COMPRESSIBLE = frozenset({".html", ".js", ".css", ".webmanifest", ".svg"})

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; "
    "img-src 'self' data:; style-src 'self'; script-src 'self'"
)
PAGE_HEADERS: Mapping[str, str] = MappingProxyType(
    {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Referrer-Policy": "no-referrer",
        "Permissions-Policy": "microphone=(self)",
        "X-Content-Type-Options": "nosniff",
        # The CSP above has no frame-ancestors: nobody may frame the page and
        # dress up its Join button (the microphone prompt) as something else.
        "X-Frame-Options": "DENY",
    }
)
CACHE_VERSIONED = "public, max-age=31536000, immutable"
CACHE_UNVERSIONED = "public, max-age=300"


@dataclass(frozen=True, slots=True)
class Asset:
    """One file ready to send.

    Attributes:
        body: the bytes (version placeholder already replaced).
        gzipped: the gzip encoding of ``body`` for text types, else ``None``.
        content_type: the ``Content-Type`` header.
        etag: a strong entity tag, without the quotes.
    """

    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


@dataclass(frozen=True, slots=True)
class PwaBundle:
    """Every servable file of the PWA, keyed by its path relative to ``pwa/``.

    Attributes:
        version: a short hash of all the files; the cache-busting query value.
        assets: ``"app.js"``, ``"icons/icon-192.png"``... to their :class:`Asset`.
    """

    version: str
    assets: Mapping[str, Asset]

    @property
    def shell(self) -> Asset:
        return self.assets[SHELL]

    @property
    def service_worker(self) -> Asset:
        return self.assets[SERVICE_WORKER]


def _servable(relative: Path) -> bool:
    if any(part.startswith(".") for part in relative.parts):
        return False
    return relative.suffix in MIME_TYPES


def load_pwa(root: Path = PWA_DIR) -> PwaBundle:
    """Read the PWA's files into memory.

    Files whose extension has no entry in ``MIME_TYPES`` (the icon generator,
    notes) and hidden files are left out, so they can never be served.

    Args:
        root: the ``pwa/`` directory.

    Returns:
        The bundle.

    Raises:
        ConfigError: ``root`` lacks ``index.html`` or ``sw.js``, or holds more
            than ``MAX_ASSETS`` files or ``MAX_TOTAL_BYTES`` bytes.
    """
    raw: dict[str, bytes] = {}
    total = 0
    paths = sorted(root.rglob("*")) if root.is_dir() else []
    for path in paths:
        relative = path.relative_to(root)
        if not path.is_file() or not _servable(relative):
            continue
        data = path.read_bytes()
        total += len(data)
        if len(raw) >= MAX_ASSETS or total > MAX_TOTAL_BYTES:
            raise ConfigError(f"{root} holds more than {MAX_ASSETS} files or {MAX_TOTAL_BYTES} bytes")
        raw[relative.as_posix()] = data
    missing = [name for name in (SHELL, SERVICE_WORKER) if name not in raw]
    if missing:
        raise ConfigError(f"the PWA directory {root} lacks {', '.join(missing)}")

    digest = hashlib.sha256()
    for name, data in raw.items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    version = digest.hexdigest()[:12]

    assets: dict[str, Asset] = {}
    for name, data in raw.items():
        suffix = Path(name).suffix
        body = data.replace(VERSION_PLACEHOLDER, version.encode()) if suffix in _COMPRESSIBLE else data
        assets[name] = Asset(
            body=body,
            # mtime=0: the same bytes every start, like the ETag.
            gzipped=gzip.compress(body, compresslevel=9, mtime=0) if suffix in _COMPRESSIBLE else None,
            content_type=MIME_TYPES[suffix],
            etag=hashlib.sha256(body).hexdigest()[:20],
        )
    return PwaBundle(version=version, assets=MappingProxyType(assets))


def _send(asset: Asset, headers: Mapping[str, str]) -> Response:
    """A 200 with ``asset`` (gzip when accepted), or a 304 when the ETag matches."""
    all_headers = {**headers, "ETag": f'"{asset.etag}"'}
    if asset.gzipped is not None:
        all_headers["Vary"] = "Accept-Encoding"
    # If-None-Match uses the weak comparison (RFC 9110 §13.1.2).
    if request.if_none_match.contains_weak(asset.etag):
        return Response(b"", status=304, headers=all_headers)
    body = asset.body
    if asset.gzipped is not None and request.accept_encodings["gzip"] > 0:
        body = asset.gzipped
        all_headers["Content-Encoding"] = "gzip"
    return Response(body, status=200, headers=all_headers, content_type=asset.content_type)


def register_pwa_routes(app: Quart, state: object, *, root: Path | None = None) -> PwaBundle:
    """Add the PWA's routes to the quart-trio app.

    Args:
        app: the ``QuartTrio`` app from ``create_app``.
        state: the ``AppState``; the routes need nothing from it today (the page
            learns everything over the signaling WebSocket), it is taken so every
            ``register_*`` function has the same shape.
        root: the ``pwa/`` directory (default: the one beside the package).

    Returns:
        The loaded bundle (its ``version`` is what the page's asset URLs carry).

    Raises:
        ConfigError: see :func:`load_pwa`.
    """
    del state
    bundle = load_pwa(PWA_DIR if root is None else root)
    app.extensions["botcall_pwa"] = bundle
    log.info("PWA version %s: %d files", bundle.version, len(bundle.assets))

    @app.get("/")
    async def pwa_home() -> Response:
        return _send(bundle.shell, PAGE_HEADERS)

    @app.get("/join/<room_id>")
    async def pwa_join(room_id: str) -> Response:
        del room_id  # the page reads it from its own URL
        return _send(bundle.shell, PAGE_HEADERS)

    @app.get("/pwa/<path:name>")
    async def pwa_asset(name: str) -> Response:
        asset = bundle.assets.get(name)
        if asset is None or name == SERVICE_WORKER:
            raise NotFound("no such file", code="not_found")
        if name == SHELL:
            return _send(asset, PAGE_HEADERS)
        cache = CACHE_VERSIONED if request.args.get("v") == bundle.version else CACHE_UNVERSIONED
        return _send(asset, {"Cache-Control": cache, "X-Content-Type-Options": "nosniff"})

    @app.get("/sw.js")
    async def pwa_service_worker() -> Response:
        return _send(
            bundle.service_worker,
            {"Cache-Control": "no-cache", "Service-Worker-Allowed": "/", "X-Content-Type-Options": "nosniff"},
        )

    return bundle


__all__ = ["Asset", "PwaBundle", "load_pwa", "register_pwa_routes", "CONTENT_SECURITY_POLICY", "PWA_DIR"]
