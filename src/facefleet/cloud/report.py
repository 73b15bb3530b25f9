"""``facefleet events report``: the fleet at a glance, one HTML page of matplotlib plots.

Reads the events a consumer stored (an SQLite file or a PostgreSQL URL, :mod:`facefleet.cloud.stores`)
and draws: events per device/camera over time, identified vs unknown (and distinct strangers),
similarity and margin distributions against the threshold, and per device fps, drops, latency
(the sum of the pipeline's stage times) and temperature from status events, plus the model
versions each device ran. The page is self-contained (PNG data URIs): one file to mail or archive.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)


@dataclass
class FleetData:
    """What the plots need, aggregated while streaming the store (no raw event is kept)."""

    matches: list[tuple[datetime, str, str, str, float | None, float | None]] = field(default_factory=list)
    # (time, device, camera, decision, similarity, margin)
    thresholds: Counter = field(default_factory=Counter)
    strangers: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # device/camera -> unknown ids
    status: dict[str, list[tuple[datetime, float, int, float, float | None]]] = field(default_factory=lambda: defaultdict(list))
    # device -> (time, fps summed over cameras, dropped, latency ms, temperature C)
    models: dict[str, list[tuple[datetime, str, str]]] = field(default_factory=lambda: defaultdict(list))
    usability: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # device/camera -> reasons
    other: Counter = field(default_factory=Counter)
    skipped: int = 0

    @property
    def empty(self) -> bool:
        return not self.matches and not self.status and not self.other


def _time(e: dict) -> datetime:
    return datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00"))


def collect(events) -> FleetData:
    d = FleetData()
    for e in events:
        try:
            t, dev = _time(e), str(e.get("device", "?"))
            kind = e.get("type")
            if kind == "match":
                where = f"{dev}/{e.get('camera_id', '?')}"
                d.matches.append((t, dev, str(e.get("camera_id", "?")), e["decision"], e.get("similarity"), e.get("margin")))
                d.thresholds[float(e["threshold"])] += 1
                if e.get("unknown_id"):
                    d.strangers[where].add(e["unknown_id"])
            elif kind == "status":
                fps = sum(float(v) for v in (e.get("fps") or {}).values())
                latency = sum(float(v) for v in (e.get("stage_ms") or {}).values())
                temp = e.get("temperature_c")
                d.status[dev].append((t, fps, int(e.get("dropped") or 0), latency, None if temp is None else float(temp)))
                m = e.get("models") or {}
                d.models[dev].append((t, str(m.get("detector", "?")), str(m.get("recognizer", "?"))))
                for cam, u in (e.get("face_usability") or {}).items():
                    for reason in ("usable", "too_small", "too_blurred", "below_pre_norm_gate"):
                        d.usability[f"{dev}/{cam}"][reason] += int(u.get(reason, 0))
            else:
                d.other[str(kind)] += 1
        except (KeyError, TypeError, ValueError):
            d.skipped += 1
    return d


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _dates(ax, mdates) -> None:
    loc = mdates.AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))


def _plots(d: FleetData) -> list[tuple[str, str]]:
    """(title, base64 PNG) per figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np

    out = []
    if d.matches:
        fig, ax = plt.subplots(figsize=(10, 3.6))
        per = defaultdict(list)
        for t, dev, cam, *_ in d.matches:
            per[f"{dev}/{cam}"].append(t)
        times = [m[0] for m in d.matches]
        edges = mdates.date2num(np.array([min(times), max(times)], dtype=object))
        bins = np.linspace(edges[0], edges[1] + 1e-6, 41)
        for where in sorted(per)[:20]:
            counts, _ = np.histogram(mdates.date2num(per[where]), bins=bins)
            ax.plot(mdates.num2date(bins[:-1]), counts, drawstyle="steps-post", label=where)
        ax.set_ylabel(f"match events per {((bins[1] - bins[0]) * 1440):.0f} min")
        _dates(ax, mdates)
        ax.legend(fontsize=7, ncol=4, loc="upper left")
        ax.set_title("events per device and camera over time" + (" (20 busiest shown)" if len(per) > 20 else ""))
        out.append(("Events over time", _png(fig)))

        fig, ax = plt.subplots(figsize=(10, 3.6))
        wheres = sorted(per)
        ident = [sum(1 for m in d.matches if f"{m[1]}/{m[2]}" == w and m[3] == "identified") for w in wheres]
        unk = [len(per[w]) - i for w, i in zip(wheres, ident, strict=True)]
        x = np.arange(len(wheres))
        ax.bar(x, ident, label="identified", color="tab:green")
        ax.bar(x, unk, bottom=ident, label="unknown", color="tab:gray")
        for xi, w in zip(x, wheres, strict=True):
            if d.strangers.get(w):
                ax.annotate(f"{len(d.strangers[w])} strangers", (xi, ident[xi] + unk[xi]), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, wheres, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("match events")
        ax.legend()
        ax.set_title("identified vs unknown per device/camera")
        out.append(("Identified vs unknown", _png(fig)))

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for decision, color in (("identified", "tab:green"), ("unknown", "tab:gray")):
            sims = [m[4] for m in d.matches if m[3] == decision and m[4] is not None]
            margins = [m[5] for m in d.matches if m[3] == decision and m[5] is not None]
            if sims:
                a1.hist(sims, bins=40, range=(-0.2, 1.0), alpha=0.6, color=color, label=decision)
            if margins:
                a2.hist(margins, bins=40, alpha=0.6, color=color, label=decision)
        for thr in d.thresholds:
            a1.axvline(thr, color="tab:red", linestyle="--", label=f"threshold {thr:.2f}")
        a1.set_xlabel("cosine similarity to the identity (or best candidate)")
        a1.legend(fontsize=7)
        a1.set_title("similarity vs threshold")
        a2.set_xlabel("margin over the runner-up identity")
        a2.set_title("margin (small: a near tie)")
        if a2.has_data():
            a2.legend(fontsize=7)
        else:
            a2.text(0.5, 0.5, "no margins (events before schema v2)", ha="center", transform=a2.transAxes)
        out.append(("Similarity and margin", _png(fig)))

    if d.status:
        fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
        panels = [(1, "fps (all cameras)"), (2, "frames dropped"), (3, "latency ms per frame"), (4, "temperature °C")]
        for (col, label), ax in zip(panels, axes.ravel(), strict=True):
            for dev in sorted(d.status):
                pts = [(s[0], s[col]) for s in d.status[dev] if s[col] is not None]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=dev)
            ax.set_title(label, fontsize=9)
            if not ax.has_data():
                ax.text(0.5, 0.5, "not reported", ha="center", transform=ax.transAxes)
            _dates(ax, mdates)
        axes[0, 0].legend(fontsize=7)
        fig.suptitle("per device, from status events")
        out.append(("Device health", _png(fig)))

    if d.usability:
        fig, ax = plt.subplots(figsize=(10, 3.2))
        wheres = sorted(d.usability)
        bottom = np.zeros(len(wheres))
        for reason, color in (("usable", "tab:green"), ("too_small", "tab:orange"), ("too_blurred", "tab:purple"),
                              ("below_pre_norm_gate", "tab:red")):
            vals = np.array([d.usability[w][reason] for w in wheres], float)
            ax.barh(wheres, vals, left=bottom, color=color, label=reason.replace("_", " "))
            bottom += vals
        ax.set_xlabel("frames with faces")
        ax.legend(fontsize=7, ncol=4)
        ax.set_title("why cameras recognize little: frames with no usable face, by reason")
        out.append(("Face usability", _png(fig)))
    return out


def _models_table(d: FleetData) -> str:
    rows = []
    for dev in sorted(d.models):
        seen = []
        for t, det, rec in sorted(d.models[dev]):
            if not seen or seen[-1][1:] != (det, rec):
                seen.append((t, det, rec))
        for t, det, rec in seen:
            rows.append(f"<tr><td>{html.escape(dev)}</td><td>{t:%Y-%m-%d %H:%M}</td><td><code>{html.escape(det)}</code></td>"
                        f"<td><code>{html.escape(rec)}</code></td></tr>")
    if not rows:
        return "<p>No status events: model versions unknown.</p>"
    return ("<table><tr><th>device</th><th>since</th><th>detector</th><th>recognizer</th></tr>" + "".join(rows) + "</table>")


def render(d: FleetData, source: str) -> str:
    n_id = sum(1 for m in d.matches if m[3] == "identified")
    devices = {m[1] for m in d.matches} | set(d.status)
    summary = (f"{len(d.matches)} match events ({n_id} identified, {len(d.matches) - n_id} unknown, "
               f"{sum(len(s) for s in d.strangers.values())} distinct strangers), "
               f"{sum(len(s) for s in d.status.values())} status events, {len(devices)} devices"
               + "".join(f", {n} {html.escape(k)}" for k, n in sorted(d.other.items()))
               + (f"; {d.skipped} unreadable events skipped" if d.skipped else ""))
    figs = "".join(f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b64}"><figcaption>{html.escape(t)}'
                   f"</figcaption></figure>" for t, b64 in _plots(d))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>facefleet: fleet report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px;font-size:90%}}</style></head>
<body><h1>facefleet fleet report</h1>
<p>{html.escape(source)} &middot; generated {datetime.now():%Y-%m-%d %H:%M}</p>
<p id="summary">{summary}</p>
{figs}
<h2>Model versions</h2>
{_models_table(d)}
</body></html>
"""


def write_report(target: str, out_dir: Path) -> Path:
    from facefleet.cloud.stores import is_postgres, read_events

    data = collect(read_events(target))
    if data.empty:
        raise FacefleetError(f"no events in {target if not is_postgres(target) else 'the database'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "index.html"
    shown = target.split("@")[-1] if is_postgres(target) else target  # never echo credentials
    tmp = page.with_suffix(".html.tmp")
    tmp.write_text(render(data, shown), encoding="utf-8")
    tmp.replace(page)
    return page


def cmd_report(args) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise FacefleetError("the report needs matplotlib: pip install 'facefleet[cloud]'") from None
    page = write_report(args.db, Path(args.out))
    print(page)
    return 0


def register(sub) -> None:
    """Adds ``report`` under ``facefleet events`` (registered by cloud.fleet_cli)."""
    import argparse

    events = sub.choices.get("events")
    if events is None:
        return
    esub = next(a for a in events._actions if isinstance(a, argparse._SubParsersAction))
    r = esub.add_parser("report", help="one HTML page of plots of the stored events (SQLite file or PostgreSQL URL)")
    r.add_argument("--db", required=True, help="events.sqlite written by 'facefleet events --out', or postgresql://...")
    r.add_argument("--out", required=True, help="folder for index.html")
    r.set_defaults(func=cmd_report)
