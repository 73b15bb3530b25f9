"""``facefleet snapshot`` and ``facefleet run --annotate``: the images show boxes where the faces
are (located here by an independent detector, YuNet through OpenCV) in the colour of the decision,
and the detection plan's tiles and zones."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facefleet.annotate import KNOWN, TILE, UNKNOWN, ZONE
from facefleet.cli import main


def yunet_faces(assets, img: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Face boxes (x1, y1, x2, y2) by YuNet, a detector of another family than the pipeline's."""
    h, w = img.shape[:2]
    s = 640 / w
    small = cv2.resize(img, (640, round(h * s)))
    det = cv2.FaceDetectorYN.create(str(assets / "models" / "yunet_2023mar.onnx"), "", (small.shape[1], small.shape[0]),
                                   score_threshold=0.5)
    faces = det.detect(small)[1]
    return [(x / s, y / s, (x + bw) / s, (y + bh) / s) for x, y, bw, bh in faces[:, :4]]


def band_coverage(shot: np.ndarray, orig: np.ndarray, box, colour, tol: int = 0) -> float:
    """Share of the box's perimeter drawn in ``colour`` (pixels near it that were not so in the
    original), searched in a band of 20 % of the face height around the box edges."""
    x1, y1, x2, y2 = box
    pad = max(4, 0.2 * (y2 - y1))
    h, w = shot.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    outer = (xx >= x1 - pad) & (xx <= x2 + pad) & (yy >= y1 - pad) & (yy <= y2 + pad)
    inner = (xx > x1 + pad) & (xx < x2 - pad) & (yy > y1 + pad) & (yy < y2 - pad)
    band = outer & ~inner

    def near(img):
        return np.abs(img.astype(int) - np.array(colour)).sum(-1) <= tol

    drawn = (near(shot) & ~near(orig) & band).sum()
    return drawn / (2 * ((x2 - x1) + (y2 - y1)))


def test_snapshot_draws_unknown_faces_where_they_are(assets, tmp_path, capsys):
    src = assets / "faces" / "couple.jpg"
    out = tmp_path / "shot.png"
    assert main(["-q", "snapshot", "--source", str(src), "--out", str(out)]) == 0
    assert "2 face(s)" in capsys.readouterr().out
    shot, orig = cv2.imread(str(out)), cv2.imread(str(src))
    assert shot.shape == orig.shape
    faces = yunet_faces(assets, orig)
    assert len(faces) == 2
    for box in faces:
        assert band_coverage(shot, orig, box, UNKNOWN) > 1.0  # the whole perimeter, >= 2 px thick
        assert band_coverage(shot, orig, box, KNOWN) == 0


def test_snapshot_names_an_enrolled_face_and_draws_the_plan(assets, tmp_path, capsys):
    src = assets / "faces" / "couple.jpg"
    gallery = tmp_path / "g"
    assert main(["-q", "gallery", "add", "--gallery", str(gallery), "--name", "left", str(src)]) == 0  # the larger face
    cfg = tmp_path / "camera.yaml"
    cfg.write_text("detection:\n  plan: {zones: [{name: door, x: 1300, y: 200, width: 800, height: 1000}], tile_size: 640}\n")
    out = tmp_path / "shot.png"
    assert main(["-q", "snapshot", "--source", str(src), "--config", str(cfg), "--gallery", str(gallery), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "left" in text and "unknown" in text and "1 zone(s)" in text
    shot, orig = cv2.imread(str(out)), cv2.imread(str(src))
    faces = sorted(yunet_faces(assets, orig), key=lambda b: b[0])  # left face first
    assert band_coverage(shot, orig, faces[0], KNOWN) > 1.0
    assert band_coverage(shot, orig, faces[1], UNKNOWN) > 1.0
    zone = (1300, 200, 2100, 1200)
    assert band_coverage(shot, orig, zone, ZONE) > 1.0
    assert (np.abs(shot.astype(int) - np.array(TILE)).sum(-1) == 0).sum() > 1000  # the zone's tiles


@pytest.mark.parametrize("argv, message", [
    (["--out", "shot.gif"], "use a .png or .jpg"),
    (["--out", "missing/shot.png"], "does not exist"),
    (["--out", "shot.png", "--frame", "9999"], "fewer than 10000 frames"),
])
def test_snapshot_bad_input_is_one_line(assets, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    src = assets / "video" / "hamilton_clip.mp4"
    assert main(["-q", "snapshot", "--source", str(src), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_run_annotate_writes_a_clip_with_the_decisions(assets, tmp_path, capsys):
    """Frames 200-250 of the Hamilton clip (Obama in the audience), enrolled: the clip shows
    Obama's face boxed in the known colour on the frame his match event names."""
    cap = cv2.VideoCapture(str(assets / "video" / "hamilton_clip.mp4"))
    frames = []
    while len(frames) < 251:
        ok, img = cap.read()
        assert ok
        frames.append(img)
    cap.release()
    part = tmp_path / "part.avi"
    w = cv2.VideoWriter(str(part), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 360))
    for img in frames[200:]:
        w.write(img)
    w.release()
    gallery = tmp_path / "g"
    assert main(["-q", "gallery", "add", "--gallery", str(gallery), "--name", "obama", str(assets / "enroll" / "obama.jpg")]) == 0
    out, events = tmp_path / "annotated.avi", tmp_path / "events.jsonl"
    assert main(["-q", "run", "--source", str(part), "--gallery", str(gallery), "--events", str(events),
                 "--annotate", str(out)]) == 0
    import json

    evs = [json.loads(line) for line in events.read_text().splitlines()]
    obama = next(e for e in evs if e.get("identity") == "obama")
    ann = cv2.VideoCapture(str(out))
    assert int(ann.get(cv2.CAP_PROP_FRAME_COUNT)) == 51
    ann.set(cv2.CAP_PROP_POS_FRAMES, obama["frame_index"])
    ok, shot = ann.read()
    src = cv2.VideoCapture(str(part))
    src.set(cv2.CAP_PROP_POS_FRAMES, obama["frame_index"])
    ok2, orig = src.read()
    assert ok and ok2
    ex = obama["bbox"]
    face = max(yunet_faces(assets, orig), key=lambda b: _iou(b, ex))  # Obama's face, located independently
    assert _iou(face, ex) > 0.3
    assert band_coverage(shot, orig, face, KNOWN, tol=120) > 0.8  # compressed clip: colours are near, not exact
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("clip, message", [("clip.gif", "use a .mp4 or .avi"), ("missing/clip.mp4", "does not exist")])
def test_run_annotate_refuses_a_bad_path_before_the_first_frame(assets, tmp_path, capsys, clip, message):
    photo = assets / "faces" / "couple.jpg"
    assert main(["-q", "gallery", "add", "--gallery", str(tmp_path / "g"), "--name", "left", str(photo)]) == 0
    events = tmp_path / "events.jsonl"
    assert main(["-q", "run", "--source", str(photo), "--gallery", str(tmp_path / "g"), "--events", str(events),
                 "--annotate", str(tmp_path / clip)]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not events.exists() or events.read_text() == ""  # no frame was run


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
