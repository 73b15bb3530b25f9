import stat

import numpy as np
import pytest

from facefleet.errors import FacefleetError
from facefleet.recognition.gallery import Gallery, GalleryIndex
from facefleet.recognition.loader import enroll_images, gallery_index


def _mode(p) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_enroll_persist_and_permissions(tmp_path, assets, load_detector):
    root = tmp_path / "g"
    g = Gallery.open(root, create=True)
    assert enroll_images(g, load_detector(), "obama", [assets / "enroll" / "obama.jpg"]) == 1
    # the same photo again adds nothing (crops are content-addressed)
    assert enroll_images(g, load_detector(), "obama", [assets / "enroll" / "obama.jpg"]) == 0
    again = Gallery.open(root)
    assert again.names() == ["obama"]
    crop = again.load_crops("obama")
    assert crop.shape == (1, 112, 112, 3)
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files and all(_mode(p) == 0o600 for p in files)
    assert _mode(root) == 0o700


def test_enroll_largest_face_only(tmp_path, assets, load_detector):
    g = Gallery.open(tmp_path / "g", create=True)
    enroll_images(g, load_detector(), "group", [assets / "faces" / "selfie-many-people.jpg"])
    assert len(g.info("group")["crops"]) == 1


def test_no_face_is_an_error_and_enrolls_nothing(tmp_path, assets, load_detector):
    import cv2

    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((400, 400, 3), 200, np.uint8))
    g = Gallery.open(tmp_path / "g", create=True)
    with pytest.raises(FacefleetError, match=r"no face found in .*wall\.png"):
        enroll_images(g, load_detector(), "x", [assets / "enroll" / "obama.jpg", blank])
    assert len(Gallery.open(tmp_path / "g")) == 0


def test_unknown_and_corrupt_gallery(tmp_path):
    with pytest.raises(FacefleetError, match="unknown gallery"):
        Gallery.open(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "gallery.json").write_text("{not json")
    with pytest.raises(FacefleetError, match="corrupt gallery index"):
        Gallery.open(tmp_path / "bad")


def test_remove(tmp_path, people):
    _, crops = people
    g = Gallery.open(tmp_path / "g", create=True)
    g.add("a", [crops[0], crops[1]])
    g.add("b", [crops[2]])
    g.remove("a")
    assert g.names() == ["b"]
    assert len(list((tmp_path / "g" / "crops").iterdir())) == 1
    with pytest.raises(FacefleetError, match="no identity 'a'"):
        g.remove("a")


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 200, "line\nbreak"])
def test_invalid_names(tmp_path, people, bad):
    g = Gallery.open(tmp_path / "g", create=True)
    with pytest.raises(FacefleetError, match="invalid identity name"):
        g.add(bad, [people[1][0]])


def test_embeddings_cached_per_model_and_recomputed(tmp_path, people, load_recognizer):
    labels, crops = people
    g = Gallery.open(tmp_path / "g", create=True)
    for name in sorted(set(labels)):
        g.add(name, list(crops[labels == name]))
    w600k, mfn = load_recognizer("w600k_mbf_fp32"), load_recognizer("mobilefacenet_128")
    calls = w600k.model.calls
    a = gallery_index(g, w600k)
    assert w600k.model.calls > calls and a.templates.shape == (13, 512)
    calls = w600k.model.calls
    again = gallery_index(Gallery.open(tmp_path / "g"), w600k)
    assert w600k.model.calls == calls  # served from the cache
    np.testing.assert_array_equal(again.templates, a.templates)
    b = gallery_index(g, mfn)  # another model: re-embedded from the crops, its own space
    assert b.templates.shape == (13, 128) and b.fingerprint != a.fingerprint
    assert sorted(p.stem for p in (tmp_path / "g" / "cache").iterdir()) == sorted([a.fingerprint, b.fingerprint])
    g.add("extra", [crops[0]])  # a change of content invalidates the cache
    calls = w600k.model.calls
    assert len(gallery_index(g, w600k)) == 14 and w600k.model.calls > calls


def _random_index(m: int, d: int, seed: int, coarse_from: int) -> tuple[GalleryIndex, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((m, d), dtype=np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    q = t[rng.choice(m, 6, replace=False)] + 0.1 * rng.standard_normal((6, d), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return GalleryIndex("fp", [f"id{i}" for i in range(m)], t, coarse_from=coarse_from), q


def test_search_is_exact_top_k():
    index, q = _random_index(3000, 128, 0, coarse_from=10**9)
    idx, sims = index.search(q, 4)
    full = q @ index.templates.T
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1)[:, :4])
    np.testing.assert_allclose(sims, np.sort(full, axis=1)[:, ::-1][:, :4], rtol=1e-6)


def test_large_gallery_coarse_path_equals_exact():
    index, q = _random_index(40_000, 512, 1, coarse_from=1000)
    found = index._coarse_search(q, 5)
    assert found is not None  # the error bound proved the candidates hold the top-5
    exact = index._exact(q, 5)
    np.testing.assert_array_equal(found[0], exact[0])
    np.testing.assert_allclose(found[1], exact[1], atol=1e-5)
    np.testing.assert_array_equal(index.search(q, 5)[0], exact[0])


def test_pack_and_merge_archive(tmp_path, assets, cli_env):
    """Fleet enrollment: photos -> archive of crops (no embeddings) -> merged into a device gallery,
    which embeds them with its own model."""
    import shutil
    import subprocess
    import sys
    import tarfile

    photos = tmp_path / "photos"
    for ident in ("id01", "id02"):
        shutil.copytree(assets / "faces" / "people" / ident, photos / ident)
    archive = tmp_path / "fleet.tar.gz"
    r = subprocess.run([sys.executable, "-m", "facefleet", "gallery", "pack", "--photos", photos, "--out", archive],
                       capture_output=True, text=True, env=cli_env, timeout=120)
    assert r.returncode == 0, r.stderr
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "facefleet-gallery.json" in names and sum(n.startswith("crops/") for n in names) == 4
    assert not any("cache" in n or n.endswith(".npz") for n in names)
    device = Gallery.open(tmp_path / "device", create=True)
    assert device.merge_archive(archive) == 4
    assert device.names() == ["id01", "id02"] and device.load_crops("id01").shape == (2, 112, 112, 3)
    assert device.merge_archive(archive) == 0  # merging twice adds nothing


def test_bad_archives_change_nothing(tmp_path, people):
    import io
    import json
    import tarfile

    g = Gallery.open(tmp_path / "g", create=True)
    g.add("keep", [people[1][0]])
    with pytest.raises(FacefleetError, match="not found"):
        g.merge_archive(tmp_path / "none.tar.gz")
    (tmp_path / "junk.tar.gz").write_bytes(b"junk")
    with pytest.raises(FacefleetError, match="corrupt gallery archive"):
        g.merge_archive(tmp_path / "junk.tar.gz")
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        data = json.dumps({"format": 1, "identities": {"x": {"crops": ["missing.png"]}}}).encode()
        info = tarfile.TarInfo("facefleet-gallery.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(FacefleetError, match=r"crop missing\.png of .x. is missing"):
        g.merge_archive(bad)
    assert Gallery.open(tmp_path / "g").names() == ["keep"]
