import shutil

import cv2
import pytest

from facefleet.errors import FacefleetError
from facefleet.sources import CaptureSource, ImageFolderSource, open_source


def test_source_kinds(assets, tmp_path):
    assert isinstance(open_source(str(assets / "faces" / "people")), ImageFolderSource)
    video = open_source(str(assets / "video" / "hamilton_clip.mp4"))
    assert isinstance(video, CaptureSource) and not video.live
    frames = list(video)
    assert len(frames) == 275 and frames[0].image.shape == (360, 640, 3)
    fps = cv2.VideoCapture(str(assets / "video" / "hamilton_clip.mp4")).get(cv2.CAP_PROP_FPS)
    assert frames[10].source_ms == pytest.approx(10 * 1000 / fps, abs=1)
    with pytest.raises(FacefleetError, match="source not found"):
        open_source(str(tmp_path / "absent.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FacefleetError, match="no images in folder"):
        open_source(str(tmp_path / "empty"))


def test_folder_skips_unreadable_images_and_counts_them(assets, tmp_path):
    shutil.copy(assets / "faces" / "couple.jpg", tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"broken")
    src = open_source(str(tmp_path))
    names = [f.name for f in src]
    assert names == ["a.jpg"] and src.skipped == 1


def test_live_stream_reconnects_after_loss(assets, tmp_path):
    """A live source that ends is reopened with backoff and keeps delivering frames."""
    clip = tmp_path / "cam.mp4"
    shutil.copy(assets / "video" / "hamilton_clip.mp4", clip)
    src = CaptureSource(str(clip), live=True, reconnect_attempts=3, backoff_max_s=0.05)
    last = None
    for got, frame in enumerate(src, start=1):
        last = frame
        if got == 300:  # past the 275 frames of one "connection"
            break
    assert src.reconnects == 1 and last.index == 299
    src.close()


def test_live_stream_gives_up_with_a_clear_error(assets, tmp_path):
    clip = tmp_path / "cam.mp4"
    shutil.copy(assets / "video" / "hamilton_clip.mp4", clip)
    src = CaptureSource(str(clip), live=True, reconnect_attempts=2, backoff_max_s=0.01)
    clip.unlink()  # the camera went away for good
    with pytest.raises(FacefleetError, match="lost and did not come back"):
        for _ in src:
            pass


def test_unreachable_url_fails_clearly():
    with pytest.raises(FacefleetError, match="cannot open stream"):
        open_source("rtsp://127.0.0.1:9/none", reconnect_attempts=1)
