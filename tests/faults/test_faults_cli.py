"""Hostile CLI input: bad images, names, galleries, configurations, arguments (issue 12: 1, 8, 13, 14, 16, 19)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from facefleet.recognition.gallery import Gallery

from .conftest import assert_one_line_error, run_cli, run_cli_child

MAX_RSS_CHILD = 900 << 20  # the CLI with the models loaded stays far below; a decoded bomb is 1.2 GB+


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, assets) -> Path:
    g = tmp_path_factory.mktemp("g") / "gallery"
    rc, _, err = run_cli("gallery", "add", "--gallery", g, "--name", "obama", assets / "enroll" / "obama.jpg")
    assert rc == 0, err
    return g


# ---- High 1: image bombs ---------------------------------------------------------------------
def test_gallery_add_pixel_bomb_refused_from_the_header(tmp_path, bomb_png, cli_env):
    rc, err, rss = run_cli_child("gallery", "add", "--gallery", tmp_path / "g", "--name", "x", bomb_png, env=cli_env)
    assert_one_line_error(rc, err, "too large")
    assert 0 < rss < MAX_RSS_CHILD, f"peak RSS {rss >> 20} MB"
    assert not (tmp_path / "g" / "gallery.json").exists() or Gallery.open(tmp_path / "g").names() == []


def test_run_on_a_pixel_bomb_still_refused(tmp_path, gallery, cli_env):
    from .conftest import png_bomb

    bomb = png_bomb(tmp_path / "big.png", 9000)  # 81 MP: under Pillow's own guard, over ours
    rc, err, rss = run_cli_child("run", "--source", bomb, "--gallery", gallery, env=cli_env)
    assert_one_line_error(rc, err, "9000x9000 pixels, over the limit")
    assert 0 < rss < MAX_RSS_CHILD


# ---- bad inputs, one clear line each -----------------------------------------------------------
def _write(tmp: Path, name: str, data: bytes | str) -> Path:
    p = tmp / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


BAD_ADD = [  # (file name, content or None for the real face, --name, expected)
    ("missing.jpg", None, "x", "image not found"),
    ("garbage.jpg", b"\xff\xd8 not really a jpeg" * 10, "x", "cannot decode"),
    ("empty.png", b"", "x", "empty file"),
    ("text.png", "hello", "x", "cannot decode"),
    ("face.jpg", "FACE", " bob ", "invalid identity name"),
    ("face.jpg", "FACE", "bob\x1b[2J", "invalid identity name"),
    ("face.jpg", "FACE", "evil\u202egnp.exe", "invalid identity name"),
    ("face.jpg", "FACE", "a/b", "invalid identity name"),
    ("face.jpg", "FACE", "bell\x07", "invalid identity name"),
    ("face.jpg", "FACE", "zero\u200bwidth", "invalid identity name"),
    ("face.jpg", "FACE", "x" * 129, "invalid identity name"),
    ("blank.png", "BLANK", "x", "no face"),
]


@pytest.mark.parametrize(("fname", "content", "name", "expected"), BAD_ADD, ids=[f"{i}-{c[3]}" for i, c in enumerate(BAD_ADD)])
def test_gallery_add_bad_input(tmp_path, face_jpg, blank_png, fname, content, name, expected):
    if content == "FACE":
        img = face_jpg
    elif content == "BLANK":
        img = blank_png
    elif content is None:
        img = tmp_path / fname
    else:
        img = _write(tmp_path, fname, content)
    rc, _, err = run_cli("gallery", "add", "--gallery", tmp_path / "g", "--name", name, img)
    assert_one_line_error(rc, err, expected)
    g = tmp_path / "g"
    assert not (g / "gallery.json").exists() or Gallery.open(g).names() == []  # nothing half-added


def test_gallery_add_name_variants_do_not_merge(tmp_path, face_jpg):
    assert run_cli("gallery", "add", "--gallery", tmp_path / "g", "--name", "bob", face_jpg)[0] == 0
    rc, _, err = run_cli("gallery", "add", "--gallery", tmp_path / "g", "--name", " bob", face_jpg)
    assert_one_line_error(rc, err, "leading/trailing spaces")
    assert Gallery.open(tmp_path / "g").names() == ["bob"]


def _gallery_with_index(tmp: Path, text: str | bytes) -> Path:
    g = tmp / "g"
    (g / "crops").mkdir(parents=True)
    (g / "gallery.json").write_bytes(text.encode() if isinstance(text, str) else text)
    return g


BAD_GALLERY = [
    ("not json", "not json{", "corrupt gallery index"),
    ("wrong version", json.dumps({"version": 99, "identities": {}}), "unsupported format"),
    ("identities list", json.dumps({"version": 1, "identities": []}), "unsupported format"),
    ("crop path escape", json.dumps({"version": 1, "identities": {"x": {"crops": ["../../victim.png"]}}}), "invalid crop file"),
    # The victim is the test's own file (VICTIM is replaced by its absolute path): a check run against code
    # without the fix deletes it, never a system file.
    ("crop absolute", json.dumps({"version": 1, "identities": {"x": {"crops": ["VICTIM"]}}}), "invalid crop file"),
    ("name with ESC", json.dumps({"version": 1, "identities": {"\x1b]0;pwn\x07": {"crops": []}}}), "invalid identity name"),
    ("deep nesting", "[" * 100_000 + "]" * 100_000, "corrupt gallery index"),
    ("not utf-8", b"\xff\xfe\x00garbage", "corrupt gallery index"),
    ("crops not a list", json.dumps({"version": 1, "identities": {"x": {"crops": "a.png"}}}), "invalid crop file"),
]


@pytest.mark.parametrize(("label", "text", "expected"), BAD_GALLERY, ids=[c[0] for c in BAD_GALLERY])
@pytest.mark.parametrize("command", ["list", "remove"])
def test_corrupt_gallery_index(tmp_path, label, text, expected, command):
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep me")
    if isinstance(text, str):
        text = text.replace("VICTIM", str(victim))
    g = _gallery_with_index(tmp_path, text)
    extra = ["--name", "x"] if command == "remove" else []
    rc, _, err = run_cli("gallery", command, "--gallery", g, *extra)
    assert_one_line_error(rc, err, expected)
    assert victim.read_bytes() == b"keep me"  # nothing outside the gallery is touched


def test_gallery_crop_of_the_wrong_size_is_one_line(tmp_path, gallery, face_jpg):
    import shutil

    import cv2
    import numpy as np

    g = tmp_path / "g"
    shutil.copytree(gallery, g)
    crop = next((g / "crops").iterdir())
    cv2.imwrite(str(crop), np.zeros((50, 60, 3), np.uint8))
    shutil.rmtree(g / "cache", ignore_errors=True)
    rc, _, err = run_cli("run", "--source", face_jpg, "--gallery", g)
    assert_one_line_error(rc, err, "not 112x112")


def test_gallery_folder_left_world_writable_is_tightened(gallery):
    os.chmod(gallery, 0o777)
    assert run_cli("gallery", "list", "--gallery", gallery)[0] == 0
    assert os.stat(gallery).st_mode & 0o777 == 0o700


def test_gallery_list_escapes_nothing_because_bad_names_never_get_in(gallery):
    rc, out, _ = run_cli("gallery", "list", "--gallery", gallery, "--json")
    assert rc == 0 and all(ch.isprintable() or ch in "\n " for ch in out)


# ---- configuration files ------------------------------------------------------------------------
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
BAD_CONFIG = [
    ("billion laughs", "accessControl:\n  " + LAUGHS.replace("\n", "\n  "), "aliases are not allowed"),
    ("not utf-8", b"camera_id: \xff\xfe\n", "not UTF-8"),
    ("deep nesting", "a: " + "[" * 5000 + "]" * 5000, "nested deeper"),
    ("duplicate key", "camera_id: a\ncamera_id: b\n", "duplicate key"),
    ("device with +", "device: 'pi+1'\n", "must not contain"),
    ("device with #", "device: 'pi#1'\n", "must not contain"),
    ("device with /", "device: 'site/pi'\n", "must not contain"),
    ("device with ESC", "device: \"pi\\e[31m\"\n", "control characters"),
    ("overlap >= tile", "detection: {plan: {grid: true, tile_size: 128, overlap: 200}}\n", "overlap"),
    ("unknown key", "detection: {sccore_threshold: 0.5}\n", "extra"),
    ("bad pin", "models: {detector_sha256: nothex}\n", "detector_sha256"),
    ("wildcard topic", "topics: {events: 'a/#'}\n", "wildcards"),
    ("too big", "# " + "x" * (1 << 20) + "\n", "over the limit"),
    ("top level list", "- 1\n- 2\n", "mapping"),
    ("plan detects nothing", "detection: {plan: {full_frame: false}}\n", "detects nothing"),
]


@pytest.mark.parametrize(("label", "text", "expected"), BAD_CONFIG, ids=[c[0] for c in BAD_CONFIG])
def test_config_check_bad_file(tmp_path, label, text, expected):
    f = _write(tmp_path, "c.yaml", text)
    rc, _, err = run_cli("config", "check", f)
    assert_one_line_error(rc, err, expected)


# ---- Medium 8: sha256 pins at start --------------------------------------------------------------
@pytest.mark.parametrize(("command", "role"), [("run", "detector"), ("run", "recognizer"), ("gallery add", "detector")])
def test_sha256_pins_are_checked_at_start(tmp_path, gallery, face_jpg, command, role):
    cfg = _write(tmp_path, "c.yaml", yaml.safe_dump({"models": {f"{role}_sha256": "0" * 64}}))
    if command == "run":
        rc, _, err = run_cli("run", "--source", face_jpg, "--gallery", gallery, "--config", cfg, "--events", tmp_path / "e.jsonl")
    else:
        rc, _, err = run_cli("gallery", "add", "--gallery", tmp_path / "g2", "--name", "x", "--config", cfg, face_jpg)
    assert_one_line_error(rc, err, f"does not match models.{role}_sha256")
    events = (tmp_path / "e.jsonl").read_text().splitlines() if (tmp_path / "e.jsonl").exists() else []
    assert [json.loads(e)["type"] for e in events] in ([], ["error"])  # at most the start failure, nothing served


# ---- Low 19: arguments ----------------------------------------------------------------------------
BAD_ARGS = [
    (("bench", "--repeat", "-1", "--source", "x", "--gallery", "y"), "must be at least 1", 2),
    (("bench", "--repeat", "0", "--source", "x", "--gallery", "y"), "must be at least 1", 2),
    (("bench", "--repeat", "many", "--source", "x", "--gallery", "y"), "not an integer", 2),
    (("bench", "distance", "--faces", "FACES", "--out", "MISSING/dir/out"), "does not exist", 1),
    (("run", "--source", "FACE", "--gallery", "GALLERY", "--events", "MISSING/dir/e.jsonl"), "does not exist", 1),
    (("run", "--source", "/nonexistent.mp4", "--gallery", "GALLERY"), "source not found", 1),
    (("run", "--source", "FACE", "--gallery", "/nonexistent-gallery"), "unknown gallery", 1),
    (("gallery", "merge", "--gallery", "G2", "/nonexistent.tar.gz"), "not found", 1),
    (("models", "show", "/nonexistent.onnx"), "not found", 1),
    (("config", "check", "/nonexistent.yaml"), "not found", 1),
]


@pytest.mark.parametrize(("argv", "expected", "code"), BAD_ARGS, ids=[" ".join(a[0][:2]) + f"-{i}" for i, a in enumerate(BAD_ARGS)])
def test_bad_arguments_one_line(tmp_path, gallery, face_jpg, assets, argv, expected, code):
    subst = {"FACE": face_jpg, "GALLERY": gallery, "G2": tmp_path / "g2", "FACES": assets / "faces" / "people"}
    missing = str(tmp_path / "missing")  # a folder that does not exist (inside this test's tmp)
    rc, _, err = run_cli(*(str(subst.get(a, a)).replace("MISSING", missing) for a in argv))
    assert not Path(missing).exists()  # nothing created on the way
    assert_one_line_error(rc, err, expected, code)


# ---- Low 12: one unreadable photo does not abort a folder run ---------------------------------
def test_unreadable_photo_is_skipped_like_a_corrupt_one(tmp_path, gallery, face_jpg, monkeypatch):
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(face_jpg, folder / "a.jpg")
    shutil.copy(face_jpg, folder / "c.jpg")
    (folder / "b.jpg").write_bytes(b"corrupt")
    locked = folder / "d.jpg"
    shutil.copy(face_jpg, locked)
    real = Path.read_bytes

    def read_bytes(self):  # root ignores file modes: the kernel's EACCES, injected at the read
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    events = tmp_path / "e.jsonl"
    rc, _, err = run_cli("run", "--source", folder, "--gallery", gallery, "--events", events)
    assert_one_line_error(rc, err, "2 input(s) could not be read")
    names = {json.loads(line)["source_name"] for line in events.read_text().splitlines()}
    assert names == {"a.jpg", "c.jpg"}  # both good photos processed, before and after the bad ones
