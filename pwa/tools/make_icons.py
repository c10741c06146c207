"""Draw the BotCall app icons: an SVG and 192/512 px PNGs (plain and maskable).

Only the standard library: shapes are signed distance functions, anti-aliased
by coverage (0.5 - distance, clamped), and the PNGs are written with ``zlib``
and ``struct`` (PNG spec: signature, IHDR, one IDAT, IEND; filter type 0).
The output is deterministic, so ``tests/pwa`` regenerates the icons and
compares them byte for byte with the committed ones.

    python pwa/tools/make_icons.py            # writes pwa/icons/
    python pwa/tools/make_icons.py --out DIR
"""

from __future__ import annotations

import argparse
import math
import struct
import zlib
from pathlib import Path

BACKGROUND = (0x24, 0x46, 0xC7)
FOREGROUND = (0xFF, 0xFF, 0xFF)
# The icon in unit coordinates: a rounded square and five sound bars.
CORNER_RADIUS = 0.22
BAR_WIDTH = 0.075
BAR_GAP = 0.055
BAR_HEIGHTS = (0.26, 0.46, 0.62, 0.46, 0.26)
# A maskable icon may be cropped to a circle of 80 % of its width (the "safe
# zone"), so its glyph is drawn smaller on a full-bleed background.
MASKABLE_SCALE = 0.8

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHUNK_HEADER = struct.Struct(">I4s")
PNG_CRC = struct.Struct(">I")
PNG_IHDR = struct.Struct(">IIBBBBB")
COLOUR_TYPE_RGBA = 6

OUTPUTS = {
    "icon-192.png": (192, False),
    "icon-512.png": (512, False),
    "icon-maskable-512.png": (512, True),
}


def bar_boxes(scale: float = 1.0) -> list[tuple[float, float, float, float]]:
    """The bars as ``(x0, y0, x1, y1)`` in unit coordinates, centred on (0.5, 0.5).

    Args:
        scale: shrink factor about the centre (the maskable icon's safe zone).

    Returns:
        One box per bar, left to right.
    """
    total = len(BAR_HEIGHTS) * BAR_WIDTH + (len(BAR_HEIGHTS) - 1) * BAR_GAP
    x = 0.5 - total / 2
    boxes = []
    for height in BAR_HEIGHTS:
        box = (x, 0.5 - height / 2, x + BAR_WIDTH, 0.5 + height / 2)
        boxes.append(tuple(0.5 + (v - 0.5) * scale for v in box))
        x += BAR_WIDTH + BAR_GAP
    return boxes


def rounded_box_distance(px: float, py: float, box: tuple[float, float, float, float], radius: float) -> float:
    """Signed distance from a point to a rounded rectangle (negative inside)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hx, hy = (box[2] - box[0]) / 2 - radius, (box[3] - box[1]) / 2 - radius
    qx, qy = abs(px - cx) - hx, abs(py - cy) - hy
    outside = math.hypot(max(qx, 0.0), max(qy, 0.0))
    return outside + min(max(qx, qy), 0.0) - radius


def coverage(distance_px: float) -> float:
    """Pixel coverage of a shape whose edge is ``distance_px`` pixels away."""
    return min(1.0, max(0.0, 0.5 - distance_px))


def render_rgba(size: int, *, maskable: bool) -> list[bytes]:
    """Rasterise the icon.

    Args:
        size: width and height in pixels.
        maskable: full-bleed background and a glyph inside the safe zone.

    Returns:
        ``size`` rows of ``size * 4`` RGBA bytes.
    """
    scale = MASKABLE_SCALE if maskable else 1.0
    boxes = [tuple(v * size for v in box) for box in bar_boxes(scale)]
    bar_radius = BAR_WIDTH * scale * size / 2
    frame = (0.0, 0.0, float(size), float(size))
    corner = CORNER_RADIUS * size
    rows = []
    for y in range(size):
        py = y + 0.5
        row = bytearray()
        for x in range(size):
            px = x + 0.5
            alpha = 1.0 if maskable else coverage(rounded_box_distance(px, py, frame, corner))
            ink = 0.0
            for box in boxes:
                if box[0] - 1 <= px <= box[2] + 1 and box[1] - 1 <= py <= box[3] + 1:
                    ink = max(ink, coverage(rounded_box_distance(px, py, box, bar_radius)))
            colour = [round(b + (f - b) * ink) for b, f in zip(BACKGROUND, FOREGROUND)]
            row += bytes((*colour, round(alpha * 255)))
        rows.append(bytes(row))
    return rows


def _chunk(kind: bytes, data: bytes) -> bytes:
    return PNG_CHUNK_HEADER.pack(len(data), kind) + data + PNG_CRC.pack(zlib.crc32(kind + data))


def encode_png(rows: list[bytes]) -> bytes:
    """Encode RGBA rows as an 8-bit PNG (no filtering, zlib level 9).

    Args:
        rows: equal-length rows of RGBA bytes.

    Returns:
        The PNG file.
    """
    height, width = len(rows), len(rows[0]) // 4
    header = PNG_IHDR.pack(width, height, 8, COLOUR_TYPE_RGBA, 0, 0, 0)
    raw = b"".join(b"\x00" + row for row in rows)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def render_svg() -> str:
    """The same icon as scalable SVG (512-unit view box)."""
    unit = 512
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {unit} {unit}">',
        f'<rect width="{unit}" height="{unit}" rx="{CORNER_RADIUS * unit:g}" fill="#{bytes(BACKGROUND).hex()}"/>',
    ]
    radius = BAR_WIDTH * unit / 2
    for x0, y0, x1, y1 in bar_boxes():
        parts.append(
            f'<rect x="{x0 * unit:.2f}" y="{y0 * unit:.2f}" width="{(x1 - x0) * unit:.2f}" '
            f'height="{(y1 - y0) * unit:.2f}" rx="{radius:.2f}" fill="#{bytes(FOREGROUND).hex()}"/>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_icons(out_dir: Path) -> list[Path]:
    """Write every icon into ``out_dir``.

    Args:
        out_dir: the target directory (created if missing).

    Returns:
        The files written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (size, maskable) in OUTPUTS.items():
        path = out_dir / name
        path.write_bytes(encode_png(render_rgba(size, maskable=maskable)))
        written.append(path)
    svg_path = out_dir / "icon.svg"
    svg_path.write_text(render_svg(), encoding="utf-8")
    written.append(svg_path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "icons")
    args = parser.parse_args()
    for path in write_icons(args.out):
        print(path)


if __name__ == "__main__":
    main()
