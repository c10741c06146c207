"""Draw the comparison's PNG from ``bench/compare.py``'s JSON.

Usage (with the bench virtualenv's Python, which has matplotlib; BotCall's
own environment does not)::

    ~/.cache/botcall-bench/venv/bin/python bench/plot.py out/bench-compare.json docs/bench-compare.png

``python -m bench.compare --plot docs/bench-compare.png`` runs this for you.

Four panels: added latency p99 and loss against offered load for BotCall,
coturn and rtpengine (plain forwarding), relay CPU per forwarded packet
against offered load, and CPU per forwarded packet against K for the SRTP
fan-out (BotCall and aiortc). Points are medians over the repeats; bars span
the smallest to the largest repeat. Imports only matplotlib and the standard
library.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "botcall": {"color": "#1b7f3b", "marker": "o", "label": "BotCall"},
    "botcall+plain+fastthread": {"color": "#6cc24a", "marker": "v", "label": "BotCall plain + fast path (thread)"},
    "coturn": {"color": "#1f5fbf", "marker": "s", "label": "coturn (TURN ChannelData)"},
    "rtpengine": {"color": "#c05a00", "marker": "^", "label": "rtpengine (userspace)"},
    "aiortc": {"color": "#9b1c6e", "marker": "D", "label": "aiortc MediaRelay"},
}
PLAIN_RELAYS = ("botcall", "botcall+plain+fastthread", "coturn", "rtpengine")


def _finite(values):
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _series(cells, relay, key, x_key, scale=1.0, x_of=None):
    """(x, median, low error, high error) per x for one relay, skipping empty points."""
    xs, mids, lows, highs = [], [], [], []
    for x in sorted({c[x_key] for c in cells if c["relay"] == relay}):
        values = _finite(c[key] for c in cells if c["relay"] == relay and c[x_key] == x)
        if not values:
            continue
        values = [v * scale for v in values]
        mid = statistics.median(values)
        xs.append(x_of(x) if x_of else x)
        mids.append(mid)
        lows.append(mid - min(values))
        highs.append(max(values) - mid)
    return xs, mids, lows, highs


def _draw(ax, cells, relays, key, x_key, *, scale=1.0, x_of=None) -> bool:
    drawn = False
    for relay in relays:
        xs, mids, lows, highs = _series(cells, relay, key, x_key, scale, x_of)
        if not xs:
            continue
        style = STYLE[relay]
        ax.errorbar(xs, mids, yerr=[lows, highs], color=style["color"], marker=style["marker"], label=style["label"], capsize=3, linewidth=1.5)
        drawn = True
    return drawn


def plot(results: dict, out: Path) -> Path:
    """Write the PNG.

    Args:
        results: ``bench/compare.py``'s JSON, loaded.
        out: the PNG path.

    Returns:
        ``out``.
    """
    plain = [c for c in results.get("plain", []) if c["relay"] != "direct"]
    fanout = [c for c in results.get("fanout", []) if c.get("repeat", 0) >= 0]
    rate = results.get("settings", {}).get("rate_per_flow", 50.0)
    offered = lambda flows: flows * rate  # noqa: E731 - packets/s offered by N flows
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (latency, loss), (cpu, fan) = axes

    _draw(latency, plain, PLAIN_RELAYS, "added_p99_ms", "flows", x_of=offered)
    latency.set_title("Added latency p99 (relay minus direct send)")
    latency.set_xlabel("offered load, packets/s")
    latency.set_ylabel("ms (linear below 1, logarithmic above)")
    # Stalls of other work on a shared machine reach seconds; most cells are
    # under a few ms: a symmetric log scale shows both.
    latency.set_yscale("symlog", linthresh=1.0)
    latency.axhline(0, color="#888", linewidth=0.8)

    _draw(loss, plain, PLAIN_RELAYS, "loss", "flows", scale=100.0, x_of=offered)
    loss.set_title("Loss")
    loss.set_xlabel("offered load, packets/s")
    loss.set_ylabel("% of packets sent (linear below 0.1, logarithmic above)")
    loss.set_yscale("symlog", linthresh=0.1)
    loss.set_ylim(bottom=0)

    _draw(cpu, plain, PLAIN_RELAYS, "cpu_us_per_packet", "flows", x_of=offered)
    cpu.set_title("Relay CPU per forwarded packet (plain RTP)")
    cpu.set_xlabel("offered load, packets/s")
    cpu.set_ylabel("µs of CPU (user + system)")
    cpu.set_ylim(bottom=0)

    if _draw(fan, fanout, ("botcall", "aiortc"), "cpu_us_per_packet", "subscribers"):
        fan.set_xscale("log")
        fan.set_yscale("log")
    fan.set_title("SRTP fan-out: CPU per forwarded packet, 1 sender to K subscribers")
    fan.set_xlabel("subscribers K")
    fan.set_ylabel("µs of CPU per packet")

    for ax in (latency, loss, cpu, fan):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    machine = results.get("machine", {})
    settings = results.get("settings", {})
    fig.suptitle(
        f"BotCall vs coturn, rtpengine and aiortc on 127.0.0.1 ({machine.get('cpu', '?')}, relay pinned to one core); "
        f"median of {settings.get('repeat', '?')} runs, bars min..max",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


MOUTH_TO_EAR_PATHS = ("udp", "ws-opus", "ws-pcm16", "ws-pcm16-paced")
MOUTH_TO_EAR_COLORS = {"udp": "#1b7f3b", "ws-opus": "#1f5fbf", "ws-pcm16": "#c05a00", "ws-pcm16-paced": "#9b1c6e"}


def _mouth_to_ear_group(row: dict) -> str:
    """A row's group on the x axis: browser (and Firefox's audio clock), leg, receiver setting."""
    browser = row["browser"]
    if browser == "firefox":
        browser += " (" + {"pulse": "real-time audio", "mock": "mock audio"}.get(row.get("audio", "mock"), row.get("audio", "mock")) + ")"
    return f"{browser}\n{row['leg']}" + ("" if row["receiver"] == "default" else f"\n{row['receiver']}")


def plot_mouth_to_ear(rows: list, out: Path) -> Path:
    """``bench/mouth_to_ear.py --json``'s rows: p50 bars with p95 and max marks,
    per path, grouped by browser (Firefox by audio clock) and leg; mouth -> bot
    above, bot -> ear below. Rows of the same group and path (repeats) are drawn
    side by side. Inside each bot -> ear bar, the split: what the relay's playout
    held (our buffer, p50, solid black) and the browser's jitter buffer (its
    mean from getStats, hatched) from the bottom; the rest is decoding, output
    latency and the network."""
    groups: list[str] = []
    for row in rows:
        if _mouth_to_ear_group(row) not in groups:
            groups.append(_mouth_to_ear_group(row))
    paths = [p for p in MOUTH_TO_EAR_PATHS if any(r["path"] == p for r in rows)]
    fig, axes = plt.subplots(2, 1, figsize=(12, 8.5), sharex=True)
    width = 0.8 / len(paths)
    for ax, key, title in ((axes[0], "mouth_to_bot", "human's mouth -> bot"), (axes[1], "bot_to_ear", "bot -> human's ear")):
        labelled: set[str] = set()
        for p_index, path in enumerate(paths):
            for g_index, group in enumerate(groups):
                cells = [r for r in rows if r["path"] == path and _mouth_to_ear_group(r) == group]
                for c_index, row in enumerate(cells):
                    cell = row[key]
                    x = g_index + (p_index - (len(paths) - 1) / 2) * width + (c_index - (len(cells) - 1) / 2) * width / max(1, len(cells))
                    label = None if path in labelled else path
                    labelled.add(path)
                    bar = width / max(1, len(cells)) * 0.9
                    ax.bar(x, cell["p50"], bar, color=MOUTH_TO_EAR_COLORS[path], label=label)
                    if key == "bot_to_ear":
                        hold = row.get("playout_hold_ms", {}).get("p50") or 0.0
                        # A mean over the call can exceed the p50 latency: drawn up to the bar's top.
                        neteq = min(row.get("jitter_buffer_ms") or 0.0, max(0.0, cell["p50"] - hold))
                        first = "split" not in labelled
                        labelled.add("split")
                        ax.bar(x, hold, bar, color="black", label="relay's playout held (p50)" if first else None)
                        ax.bar(x, neteq, bar, bottom=hold, fill=False, hatch="///", edgecolor="white", linewidth=0,
                               label="browser's jitter buffer (mean)" if first else None)
                    ax.plot([x, x], [cell["p50"], cell["p95"]], color="black", linewidth=1)
                    ax.plot(x, cell["max"], marker="_", color="black", markersize=6)
        ax.set_ylabel("ms (bar p50, line to p95, tick max)")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    handles, labels = axes[1].get_legend_handles_labels()
    keep = [(h, l) for h, l in zip(handles, labels) if l not in paths]
    if keep:
        legend = axes[1].legend(*zip(*keep), loc="upper left", fontsize=8)
        for patch in legend.get_patches():
            if patch.get_hatch():
                patch.set_edgecolor("black")
    axes[1].set_xticks(range(len(groups)))
    axes[1].set_xticklabels(groups, fontsize=8)
    fig.suptitle("Mouth-to-ear latency by bot transport (bench/mouth_to_ear.py; a shared machine, load in docs/bench-results.md)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[0] == "--mouth-to-ear":
        print(plot_mouth_to_ear(json.loads(Path(argv[1]).read_text()), Path(argv[2])))
        return 0
    if len(argv) != 2:
        print("usage: plot.py RESULTS.json OUT.png | plot.py --mouth-to-ear ROWS.json OUT.png", file=sys.stderr)
        return 2
    results = json.loads(Path(argv[0]).read_text())
    print(plot(results, Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
