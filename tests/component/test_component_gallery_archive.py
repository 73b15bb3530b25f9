"""Fleet enrollment on the device: shipped gallery archives are merged and embedded locally."""

from facefleet.component.service import Component
from facefleet.recognition.gallery import Gallery
from facefleet.recognition.loader import enroll_images

from .fake_ipc import FakeIpcClient
from .helpers import DET, W600K, base_config


def _archive(tmp_path, assets, load_detector, names):
    g = Gallery.open(tmp_path / f"pack-{'-'.join(names)}", create=True)
    photos = {"obama": assets / "enroll" / "obama.jpg", "miranda": assets / "enroll" / "lin-manuel-miranda.png"}
    for n in names:
        enroll_images(g, load_detector(), n, [photos[n]])
    out = tmp_path / "artifacts" / f"{'-'.join(names)}.tar.gz"
    g.export_archive(out)
    return out.name


def test_archives_merge_at_start_and_on_update(tmp_path, assets, load_detector):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    for m in (DET, W600K):
        (artifacts / m).symlink_to(assets / "models" / m)
    first = _archive(tmp_path, assets, load_detector, ["obama"])
    cfg = base_config(assets, gallery_archives=[first])
    ipc = FakeIpcClient(cfg)
    comp = Component(ipc, tmp_path / "work", artifacts=artifacts, thing="thing-1", environ={})
    comp.start()
    try:
        assert comp.index.names == ["obama"] and comp.index.templates.shape == (1, 512)
        second = _archive(tmp_path, assets, load_detector, ["miranda"])
        report = ipc.push_validation({**cfg, "gallery_archives": [first, "missing.tar.gz"]})
        assert report.status == "REJECTED" and "missing.tar.gz" in report.message
        ipc.push_configuration({**cfg, "gallery_archives": [first, second]}, key_path=("gallery_archives",))
        assert comp.index.names == ["miranda", "obama"]
        assert comp.cfg.gallery_archives == [first, second]
    finally:
        comp.stop()
    # the merge is idempotent: a restart with the same archives adds nothing
    again = Component(FakeIpcClient({**cfg, "gallery_archives": [first, second]}), tmp_path / "work", artifacts=artifacts,
                      thing="thing-1", environ={})
    again.start()
    try:
        assert again.index.names == ["miranda", "obama"]
        assert all(len(again.gallery.info(n)["crops"]) == 1 for n in again.gallery.names())
    finally:
        again.stop()
