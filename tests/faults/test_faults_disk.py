"""Archives, disks and files (issue 12: 4, 5, 11, 16, 17, 18)."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from facefleet.archives import ArchiveLimits, read_gallery_archive
from facefleet.errors import FacefleetError
from facefleet.recognition.gallery import Gallery

from .conftest import assert_one_line_error, fill, maxrss, run_cli

CROP = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (112, 112, 3), np.uint8))[1].tobytes()
CROP2 = cv2.imencode(".png", np.random.default_rng(1).integers(0, 255, (112, 112, 3), np.uint8))[1].tobytes()
C1, C2 = "a" * 32 + ".png", "b" * 32 + ".png"


def _tar(path: Path, members: list[tuple[str, bytes | tarfile.TarInfo]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            if isinstance(data, tarfile.TarInfo):
                tar.addfile(data)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _manifest(identities: dict) -> bytes:
    return json.dumps({"format": 1, "identities": identities}).encode()


def _symlink() -> tarfile.TarInfo:
    t = tarfile.TarInfo("crops/" + C1)
    t.type, t.linkname = tarfile.SYMTYPE, "/nonexistent/victim.png"
    return t


def _huge_header() -> tarfile.TarInfo:
    t = tarfile.TarInfo("crops/" + C1)
    t.size = 1 << 30  # claims 1 GB; the data is never read
    return t


BAD_ARCHIVES = [
    ("not gzip", lambda p: (p.write_bytes(b"PK\x03\x04 zip, not tar.gz"), p)[1], "corrupt gallery archive"),
    ("no manifest", lambda p: _tar(p, [("crops/" + C1, CROP)]), "missing or unsupported"),
    ("manifest not json", lambda p: _tar(p, [("facefleet-gallery.json", b"{nope")]), "missing or unsupported"),
    ("manifest deep", lambda p: _tar(p, [("facefleet-gallery.json", b"[" * 100_000 + b"]" * 100_000)]), "missing or unsupported"),
    ("wrong format", lambda p: _tar(p, [("facefleet-gallery.json", json.dumps({"format": 9}).encode())]), "missing or unsupported"),
    ("bad name", lambda p: _tar(p, [("facefleet-gallery.json", _manifest({"x\x1b[2J": {"crops": [C1]}})), ("crops/" + C1, CROP)]),
     "invalid identity name"),
    ("crop path escape", lambda p: _tar(p, [("facefleet-gallery.json", _manifest({"x": {"crops": ["../../victim.png"]}}))]),
     "not a content-addressed"),
    ("crop wrong size", lambda p: _tar(p, [("facefleet-gallery.json", _manifest({"x": {"crops": [C1]}})),
                                           ("crops/" + C1, cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes())]),
     "not a 112x112"),
    ("crop missing", lambda p: _tar(p, [("facefleet-gallery.json", _manifest({"x": {"crops": [C1]}}))]), "missing"),
    ("symlink member", lambda p: _tar(p, [("facefleet-gallery.json", _manifest({})), ("", _symlink())]), "not a regular file"),
    ("member claims 1 GB", lambda p: _tar(p, [("facefleet-gallery.json", _manifest({})), ("", _huge_header())]), "refused"),
    ("duplicate member", lambda p: _tar(p, [("facefleet-gallery.json", _manifest({})), ("facefleet-gallery.json", _manifest({}))]),
     "appears twice"),
    ("second identity bad", lambda p: _tar(p, [("facefleet-gallery.json", _manifest({"good": {"crops": [C1]}, "bad": {"crops": [C2]}})),
                                               ("crops/" + C1, CROP), ("crops/" + C2, b"not a png")]), "missing or not a 112x112"),
    ("sources not a list", lambda p: _tar(p, [("facefleet-gallery.json", _manifest({"x": {"crops": [C1], "sources": 5}})),
                                              ("crops/" + C1, CROP)]), "invalid sources"),
]


@pytest.mark.parametrize(("label", "make", "expected"), BAD_ARCHIVES, ids=[c[0] for c in BAD_ARCHIVES])
def test_bad_archive_merges_nothing(tmp_path, label, make, expected):
    """Medium 4/5: all or nothing; memory, gallery.json and crops unchanged; one line."""
    g = Gallery.open(tmp_path / "g", create=True)
    g.add("keep", [cv2.imdecode(np.frombuffer(CROP2, np.uint8), cv2.IMREAD_COLOR)])
    before = ((tmp_path / "g" / "gallery.json").read_bytes(), sorted(os.listdir(tmp_path / "g" / "crops")))
    archive = make(tmp_path / "a.tar.gz")
    rc, _, err = run_cli("gallery", "merge", "--gallery", tmp_path / "g", archive)
    assert_one_line_error(rc, err, expected)
    assert ((tmp_path / "g" / "gallery.json").read_bytes(), sorted(os.listdir(tmp_path / "g" / "crops"))) == before


def test_gzip_of_zeros_is_bounded(tmp_path):
    """Medium 5: 300 members of 1 MB of zeros in a small gzip: refused at the uncompressed bound."""
    p = tmp_path / "zeros.tar.gz"
    zeros = b"\0" * (1 << 20)
    with gzip.open(p, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        for i in range(300):
            info = tarfile.TarInfo(f"crops/{i:032x}.png")
            info.size = len(zeros)
            tar.addfile(info, io.BytesIO(zeros))
    assert p.stat().st_size < 4 << 20
    before = maxrss()
    with pytest.raises(FacefleetError, match="over 64 MB uncompressed"):
        read_gallery_archive(p, limits=ArchiveLimits(max_total_bytes=64 << 20))
    assert maxrss() - before < 100 << 20


def test_too_many_members(tmp_path):
    p = _tar(tmp_path / "m.tar.gz", [(f"crops/{i:032x}.png", b"x") for i in range(11)])
    with pytest.raises(FacefleetError, match="more than 10 members"):
        read_gallery_archive(p, limits=ArchiveLimits(max_members=10))


def test_merge_on_a_full_disk_is_all_or_nothing(tmp_path, monkeypatch):
    from facefleet.recognition import gallery as gallery_mod

    g = Gallery.open(tmp_path / "g", create=True)
    archive = _tar(tmp_path / "a.tar.gz", [("facefleet-gallery.json", _manifest({"a": {"crops": [C1]}, "b": {"crops": [C2]}})),
                                           ("crops/" + C1, CROP), ("crops/" + C2, CROP2)])
    real, calls = gallery_mod._atomic_write, []

    def second_write_fails(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(gallery_mod, "_atomic_write", second_write_fails)
    with pytest.raises(FacefleetError, match="No space left"):
        g.merge_archive(archive)
    assert g.names() == [] and os.listdir(tmp_path / "g" / "crops") == []
    monkeypatch.undo()
    assert g.merge_archive(archive) == 2 and Gallery.open(tmp_path / "g").names() == ["a", "b"]


def test_component_rejects_a_bad_archive_before_accepting(tmp_path, assets):
    """Medium 4: validation reads the archive for real, not only its existence."""
    from component.helpers import base_config

    from .conftest import component_on_nucleus

    arts = tmp_path / "arts"
    arts.mkdir()
    for m in (assets / "models").iterdir():
        (arts / m.name).symlink_to(m)
    _tar(arts / "bad.tar.gz", [("facefleet-gallery.json", _manifest({"good": {"crops": [C1]}, "bad": {"crops": [C2]}})),
                               ("crops/" + C1, CROP)])
    with component_on_nucleus(base_config(assets), tmp_path, arts) as (comp, nucleus):
        report = nucleus.push_validation(base_config(assets, gallery_archives=["bad.tar.gz"]))
        assert report.status == "REJECTED" and "crop" in report.message, report
        assert comp.gallery.names() == []


# ---- Medium 11: events file and cache on a full disk -----------------------------------------------
def test_events_file_on_a_full_disk_leaves_no_torn_line(tmp_path, small_disk, face_jpg, assets):
    from facefleet.events import ErrorEvent
    from facefleet.transport.jsonl import JsonlSink

    disk = small_disk or tmp_path
    target = disk / "e.jsonl"
    sink = JsonlSink(target)
    sink.publish(ErrorEvent(source="test", message="first"))
    if small_disk is not None:  # a real ENOSPC from the kernel
        filler = fill(disk)
    else:  # no tmpfs here: the kernel's error, injected at the write call
        filler = None
        import facefleet.transport.jsonl as jl

        real = os.write
        jl.os.write = lambda fd, data: real(fd, data[:7]) if fd == sink._fd else real(fd, data)
    try:
        with pytest.raises(FacefleetError, match="cannot write events"):
            sink.publish(ErrorEvent(source="test", message="x" * 200_000))
    finally:
        if filler is None:
            jl.os.write = real
        else:
            filler.unlink()
    sink.close()
    lines = target.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["message"] == "first"
    nxt = JsonlSink(target)
    nxt.publish(ErrorEvent(source="test", message="next run"))
    nxt.close()
    assert [json.loads(x)["message"] for x in target.read_text().splitlines()] == ["first", "next run"]


def test_torn_tail_from_an_earlier_crash_does_not_swallow_the_next_event(tmp_path):
    from facefleet.events import ErrorEvent
    from facefleet.transport.jsonl import JsonlSink

    target = tmp_path / "e.jsonl"
    target.write_text('{"event_id": "torn')
    s = JsonlSink(target)
    s.publish(ErrorEvent(source="test", message="after"))
    s.close()
    assert json.loads(target.read_text().splitlines()[-1])["message"] == "after"


def test_unwritable_gallery_cache_does_not_stop_run(tmp_path, face_jpg, assets):
    g = tmp_path / "g"
    assert run_cli("gallery", "add", "--gallery", g, "--name", "obama", face_jpg)[0] == 0
    (g / "cache").write_text("a file where the cache folder should be")
    rc, out, err = run_cli("run", "--source", face_jpg, "--gallery", g)
    assert rc == 0, err
    assert json.loads(out.splitlines()[0])["identity"] == "obama"


def test_foreign_embedding_cache_is_not_trusted(tmp_path, face_jpg, load_recognizer):
    """Low 16: a cache of another model's dimension (same key) is recomputed, not used."""
    g = tmp_path / "g"
    assert run_cli("gallery", "add", "--gallery", g, "--name", "obama", face_jpg)[0] == 0
    gal = Gallery.open(g)
    rec = load_recognizer()
    idx = gal.index_for(rec.fingerprint, lambda c: rec.embed(c)[0], dim=rec.rec.embedding_size)
    cache = g / "cache" / f"{rec.fingerprint}.npz"
    with np.load(cache) as z:
        key = str(z["key"])
    np.savez(cache, key=np.array(key), templates=np.ones((1, 128), np.float32))
    idx2 = gal.index_for(rec.fingerprint, lambda c: rec.embed(c)[0], dim=rec.rec.embedding_size)
    assert idx2.templates.shape == idx.templates.shape
    rc, out, err = run_cli("run", "--source", face_jpg, "--gallery", g)
    assert rc == 0 and "obama" in out, err


# ---- High 3 on a real small disk -------------------------------------------------------------------
def test_spool_on_a_real_full_disk(tmp_path, small_disk):
    from facefleet.transport.spool import Spool

    if small_disk is None:
        pytest.skip("tmpfs cannot be mounted here (needs CAP_SYS_ADMIN); covered by the SQLITE_FULL case")
    spool = Spool(small_disk / "s.sqlite", memory_max=100, retry_s=0)
    changes: list = []
    spool.on_change = changes.append
    filler = fill(small_disk)
    for i in range(300):
        spool.put("t", "match", json.dumps({"n": i, "pad": "x" * 3000}))
    assert spool.disk_error and spool.held_in_memory == 100 and spool.dropped >= 200 - spool._depth
    assert changes and changes[0]
    filler.unlink()
    spool.retry_disk()
    assert spool.disk_error is None and spool.held_in_memory == 0 and changes[-1] is None
    kept = [json.loads(it.payload)["n"] for it in spool.peek(1000)]
    assert kept == sorted(kept) and kept[-1] == 299  # the newest are kept, in order
    assert spool.depth + spool.dropped == 300  # every event is on disk or counted
    spool.close()


def test_spool_rollback_never_masks_the_real_error(tmp_path):
    from facefleet.transport.spool import Spool

    spool = Spool(tmp_path / "s.sqlite", retry_s=0)
    pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
    spool._db.execute(f"PRAGMA max_page_count = {pages}")
    for _ in range(50):
        spool.put("t", "match", "y" * 5000)  # never raises
    assert "full" in spool.disk_error and "rollback" not in spool.disk_error
    spool._db.execute("PRAGMA max_page_count = 1073741823")
    spool.retry_disk()
    assert spool.disk_error is None and spool.depth == 50
    spool.close()


# ---- Low 18: permissions -----------------------------------------------------------------------------
def test_spool_files_are_private(tmp_path):
    from facefleet.transport.spool import Spool

    old = os.umask(0o022)
    try:
        s = Spool(tmp_path / "sp" / "s.sqlite")
        s.put("t", "match", "{}")
        s.close()
    finally:
        os.umask(old)
    for f in (tmp_path / "sp").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE((tmp_path / "sp").stat().st_mode) == 0o700


# ---- Low 17: a half-written local config file --------------------------------------------------------
def test_half_written_config_file_is_not_applied(tmp_path):
    from facefleet.component.swap import FileWatcher

    f = tmp_path / "run.yaml"
    f.write_text("camera_id: a\n")
    seen: list = []
    w = FileWatcher(f, seen.append, seen.append, settle_s=0.3)
    full = "camera_id: b\nrecognition: {top_k: 5}\n"

    def writer():  # an editor writing in two parts
        with open(f, "w") as fh:
            fh.write(full[:13])
            fh.flush()
            time.sleep(0.15)
            fh.write(full[13:])

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.05)
    assert w.check()
    t.join()
    assert len(seen) == 1 and seen[0].recognition.top_k == 5  # only the whole file


def test_consumer_store_is_private_and_follow_is_terminal_safe(tmp_path):
    """Low 18 and 13 on the operator side: the SQLite store is 0600; a name from an old device
    with ESC/BEL/bidi is escaped before it reaches the operator's terminal."""
    import io

    from facefleet.cloud.consumer import Consumer, open_store
    from facefleet.events import ErrorEvent, to_json

    old = os.umask(0o022)
    try:
        out = io.StringIO()
        c = Consumer(open_store(str(tmp_path / "events.sqlite")), follow=out)
        ev = json.loads(to_json(ErrorEvent(device="pi", source="camera", message="x\x1b]0;pwned\x07 \u202eevil")))
        c.handle(json.dumps(ev))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "events.sqlite").stat().st_mode) == 0o600
    line = out.getvalue()
    assert "\x1b" not in line and "\x07" not in line and "\u202e" not in line and "\\u001b" in line
