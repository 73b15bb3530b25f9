"""``facefleet events report``: one HTML page of plots, checked in a real headless Chromium
(Debian's ``chromium`` package, installed by ./scripts/test)."""

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest

from facefleet.cloud.consumer import Consumer, SqliteStore
from facefleet.cloud.report import collect
from facefleet.events import Candidate, FaceUsability, MatchEvent, Models, Quality, StatusEvent, to_json

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
OLD = Models(detector="5e4447f50245bbd7", recognizer="c4c390b65477ed53")
NEW = Models(detector="5e4447f50245bbd7", recognizer="0f1e2d3c4b5a6978")


def fleet_events(seed: int = 15) -> list[str]:
    """A day of a 3-device fleet: matches (identified/unknown, strangers, margins) and status."""
    rng = np.random.default_rng(seed)
    out = []
    for dev_i, dev in enumerate(("pi-01", "pi-02", "pi-03")):
        for cam in ("door", "hall")[: 1 + dev_i % 2]:
            for k in range(int(rng.integers(40, 120))):
                t = T0 + timedelta(minutes=float(rng.uniform(0, 600)))
                known = rng.random() < 0.6
                sim = float(rng.normal(0.55, 0.08) if known else rng.normal(0.12, 0.08))
                out.append(to_json(MatchEvent(
                    timestamp=t, device=dev, camera_id=cam, track_id=k, decision="identified" if known else "unknown",
                    identity="alice" if known else None, similarity=float(np.clip(sim, -1, 1)),
                    best_candidate=None if known else Candidate(identity="alice", similarity=float(np.clip(sim, -1, 1))),
                    threshold=0.32, frame_index=k, first_frame=k, last_frame=k, bbox=(1, 2, 3, 4),
                    quality=Quality(pre_norm=20.0, face_px=80, det_score=0.8, evidence_frames=3, evidence_weight=2.0),
                    models=OLD, margin=float(abs(rng.normal(0.2, 0.1))),
                    unknown_id=None if known else f"u{int(rng.integers(0, 4)):015x}", unknown_count=None if known else 1)))
        for m in range(0, 600, 10):
            t = T0 + timedelta(minutes=m)
            out.append(to_json(StatusEvent(
                timestamp=t, device=dev, fps={"door": float(rng.normal(14, 0.5))}, stage_ms={"detect": 25.0 + dev_i * 5, "embed": 8.0},
                models=NEW if m > 300 and dev != "pi-03" else OLD, gallery_identities=3, dropped=int(rng.integers(0, 3)),
                temperature_c=float(55 + dev_i * 6 + 8 * np.sin(m / 90)),
                face_usability={"door": FaceUsability(frames=600, no_face=100, usable=300, too_small=150 * (dev_i == 2),
                                                      too_blurred=0, below_pre_norm_gate=200 - 150 * (dev_i == 2),
                                                      unusable_share=0.4)})))
    return out


@pytest.fixture(scope="module")
def events_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "events.sqlite"
    c = Consumer(SqliteStore(path))  # the consumer's own store: what 'facefleet events --out X.sqlite' writes
    for body in fleet_events():
        assert c.handle(body)
    c.store.close()
    return path


def _ff(*args, env):
    return subprocess.run([sys.executable, "-m", "facefleet", *args], env={**env, "PYTHONPATH": os.pathsep.join(sys.path)},
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def report_dir(events_db, cli_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-out")
    r = _ff("events", "report", "--db", str(events_db), "--out", str(out), env=cli_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out / "index.html")
    return out


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        why = os.environ.get("FACEFLEET_CHROMIUM_UNAVAILABLE")
        if why:
            pytest.skip(f"chromium could not be installed: {why}")
        pytest.fail("chromium is not installed: ./scripts/test installs Debian's chromium package")
    return found


HARNESS = """<!doctype html><html><body><iframe id="f" src="index.html" width="1100" height="3000"></iframe>
<script>
document.getElementById('f').addEventListener('load', () => {
  const d = document.getElementById('f').contentDocument;
  const imgs = Array.from(d.images);
  const r = document.createElement('pre');
  r.id = 'result';
  r.textContent = JSON.stringify({title: d.title, imgs: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 100 && i.naturalHeight > 100).length,
    alts: imgs.map(i => i.alt), summary: d.getElementById('summary').textContent});
  document.body.appendChild(r);
});
</script></body></html>"""


@pytest.fixture(scope="module")
def served(report_dir):
    """The report folder over HTTP on loopback (the harness page reads the report's DOM: same origin)."""
    (report_dir / "harness.html").write_text(HARNESS)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(report_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _browser(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="facefleet-chromium-")
    try:
        return subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               "--hide-scrollbars", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_report_page_loads_with_its_plots_in_chromium(served):
    r = _browser("--virtual-time-budget=20000", "--dump-dom", f"{served}/harness.html")
    assert r.returncode == 0, r.stderr[-1000:]
    start = r.stdout.index('<pre id="result">') + len('<pre id="result">')
    result = json.loads(r.stdout[start:r.stdout.index("</pre>", start)].replace("&quot;", '"').replace("&amp;", "&"))
    assert result["title"] == "facefleet: fleet report"
    assert result["alts"] == ["Events over time", "Identified vs unknown", "Similarity and margin", "Device health",
                              "Face usability"]
    assert result["decoded"] == result["imgs"] == 5  # every plot decoded to a real image
    assert "3 devices" in result["summary"]


def test_report_screenshot_is_not_blank(served, tmp_path):
    shot = tmp_path / "report.png"
    r = _browser("--window-size=1100,2600", f"--screenshot={shot}", f"{served}/index.html")
    assert r.returncode == 0 and shot.is_file(), r.stderr[-1000:]
    img = cv2.imread(str(shot))
    assert img.shape[:2] == (2600, 1100)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    # plots: many non-white pixels and many distinct colours, well below the title
    assert (gray[400:] < 200).mean() > 0.03
    assert len(np.unique(img[400:].reshape(-1, 3), axis=0)) > 50
    if os.environ.get("FACEFLEET_DOCS_SCREENSHOT"):  # refresh docs/fleet-report.png
        shutil.copy(shot, os.environ["FACEFLEET_DOCS_SCREENSHOT"])


def test_report_figures_from_the_store(events_db):
    from facefleet.cloud.stores import read_events

    d = collect(read_events(str(events_db)))
    bodies = [json.loads(b) for b in fleet_events()]
    matches = [b for b in bodies if b["type"] == "match"]
    assert len(d.matches) == len(matches)
    assert sum(1 for m in d.matches if m[3] == "identified") == sum(1 for b in matches if b["decision"] == "identified")
    assert set(d.status) == {"pi-01", "pi-02", "pi-03"}
    assert {rec for _, _, rec in d.models["pi-01"]} == {OLD.recognizer, NEW.recognizer}
    assert {rec for _, _, rec in d.models["pi-03"]} == {OLD.recognizer}
    assert d.usability["pi-03/door"]["too_small"] == 150 * 60
    assert d.skipped == 0


def test_report_bad_input_is_one_line(tmp_path, cli_env):
    r = _ff("events", "report", "--db", str(tmp_path / "missing.sqlite"), "--out", str(tmp_path / "o"), env=cli_env)
    assert r.returncode == 1 and r.stderr.startswith("facefleet: error: event database not found") and "Traceback" not in r.stderr
    empty = tmp_path / "empty.sqlite"
    SqliteStore(empty).close()
    r = _ff("events", "report", "--db", str(empty), "--out", str(tmp_path / "o"), env=cli_env)
    assert r.returncode == 1 and "no events in" in r.stderr and not (tmp_path / "o").exists()
