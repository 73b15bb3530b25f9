"""Fleet enrollment on the device: shipped gallery archives are merged and embedded locally; an
archive whose file is gone (another version's artifacts folder) never stops the cameras."""

from facefleet.recognition.gallery import Gallery
from facefleet.recognition.loader import enroll_images

from .helpers import DET, W600K, base_config, video_camera, wait_until


def _archive(tmp_path, assets, load_detector, names):
    g = Gallery.open(tmp_path / f"pack-{'-'.join(names)}", create=True)
    photos = {"obama": assets / "enroll" / "obama.jpg", "miranda": assets / "enroll" / "lin-manuel-miranda.png"}
    for n in names:
        enroll_images(g, load_detector(), n, [photos[n]])
    out = tmp_path / "artifacts" / f"{'-'.join(names)}.tar.gz"
    g.export_archive(out)
    return out.name


def _artifacts(tmp_path, assets):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir(exist_ok=True)
    for m in (DET, W600K):
        if not (artifacts / m).exists():
            (artifacts / m).symlink_to(assets / "models" / m)
    return artifacts


def test_archives_merge_at_start_and_on_update(tmp_path, greengrass, assets, load_detector):
    artifacts = _artifacts(tmp_path, assets)
    first = _archive(tmp_path, assets, load_detector, ["obama"])
    cfg = base_config(assets, gallery_archives=[first])
    comp, nucleus = greengrass(cfg, work=tmp_path / "work", artifacts=artifacts)
    try:
        assert comp.index.names == ["obama"] and comp.index.templates.shape == (1, 512)
        second = _archive(tmp_path, assets, load_detector, ["miranda"])
        report = nucleus.push_validation({**cfg, "gallery_archives": [first, "missing.tar.gz"]})
        assert report.status == "REJECTED" and "missing.tar.gz" in report.message
        nucleus.set_configuration({**cfg, "gallery_archives": [first, second]})
        assert wait_until(lambda: comp.index.names == ["miranda", "obama"], 60)
        assert comp.cfg.gallery_archives == [first, second]
    finally:
        comp.stop()
    # the merge is idempotent: a restart with the same archives adds nothing
    again, _ = greengrass({**cfg, "gallery_archives": [first, second]}, work=tmp_path / "work", artifacts=artifacts)
    try:
        assert again.index.names == ["miranda", "obama"]
        assert all(len(again.gallery.info(n)["crops"]) == 1 for n in again.gallery.names())
    finally:
        again.stop()


def test_an_archive_that_is_gone_never_stops_the_cameras(tmp_path, greengrass, assets, load_detector):
    """Issue 10 item 4 (device side): version N shipped ``obama.tar.gz`` and merged it; version
    N+1 (a new artifacts folder) keeps the persisted name, the file is not there. The component
    starts, serves the enrolled person, the camera runs, and the miss is an error event."""
    artifacts_n = _artifacts(tmp_path, assets)
    first = _archive(tmp_path, assets, load_detector, ["obama"])
    cfg = base_config(assets, gallery_archives=[first])
    comp, _ = greengrass(cfg, work=tmp_path / "work", artifacts=artifacts_n)
    comp.stop()
    artifacts_next = tmp_path / "artifacts-next"
    artifacts_next.mkdir()
    for m in (DET, W600K):
        (artifacts_next / m).symlink_to(assets / "models" / m)
    cfg_next = {**cfg, "cameras": [video_camera(assets, fps_cap=20)]}
    comp, nucleus = greengrass(cfg_next, work=tmp_path / "work", artifacts=artifacts_next)
    try:
        assert nucleus.states == ["RUNNING"]
        assert comp.index.names == ["obama"]
        assert wait_until(lambda: comp.cameras["stage"].frames > 3, 60)
        assert wait_until(lambda: any(first in e["message"] and "not found" in e["message"]
                                      for e in nucleus.events("error")), 20)
        # a configuration change that keeps the gone name is accepted, and applied
        report = nucleus.push_validation({**cfg_next, "status_interval_s": 2})
        assert report.status == "ACCEPTED", report.message
    finally:
        comp.stop()
