"""``facefleet snapshot``: one frame of a camera with the detection plan and the faces found
drawn on it, so an operator can place zones in pixels on the real image."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)


def register(sub) -> None:
    s = sub.add_parser("snapshot", help="one frame with the detection plan (full frame, tiles, zones) and the faces drawn")
    s.add_argument("--source", required=True, help="video file, URL, camera index or image")
    s.add_argument("--out", required=True, help="image to write (.png or .jpg)")
    s.add_argument("--config", help="camera configuration YAML (its detection plan and thresholds are used)")
    s.add_argument("--gallery", help="gallery folder: faces are named (else every face is unknown)")
    s.add_argument("--detector", help="detector model file")
    s.add_argument("--recognizer", help="recognizer model file")
    s.add_argument("--frame", type=int, default=0, help="video: take this frame (default: the first)")
    s.add_argument("--decoder", choices=["opencv", "pyav"], default="opencv", help="video decoder")
    s.set_defaults(func=cmd_snapshot)


def grab(src: str, index: int = 0, decoder: str = "opencv"):
    """Frame ``index`` of a video (the first frame of a live source), or the image itself."""
    from facefleet.sources import ImageFolderSource, open_source

    if index < 0:
        raise FacefleetError("--frame must be >= 0")
    source = open_source(src, decoder=decoder, reconnect_attempts=3)
    if isinstance(source, ImageFolderSource):
        raise FacefleetError(f"snapshot takes one image, video or camera, not a folder: {src}")
    try:
        for frame in source:
            if frame.still or source.live or frame.index >= index:
                return frame
    finally:
        source.close()
    raise FacefleetError(f"{src} has fewer than {index + 1} frames")


def snapshot(frame, pipeline, out: Path) -> list:
    """Run one frame as a still (every face decided now), draw plan and faces, write ``out``."""
    from dataclasses import replace

    from facefleet.annotate import draw_faces, draw_plan, faces_from_events, write_image

    events = pipeline.process(replace(frame, still=True))
    img = frame.image.copy()
    h, w = img.shape[:2]
    det = pipeline.detector
    plan = pipeline.cfg.detection.plan
    cw, ch = det.tile_canvas(plan)
    draw_plan(img, plan, min(cw, ch), det.input_size_for(w, h))
    faces = faces_from_events(events)
    draw_faces(img, faces)
    write_image(out, img)
    return faces


def cmd_snapshot(args) -> int:
    from facefleet.config import ComponentConfig, load_config
    from facefleet.recognition.gallery import Gallery
    from facefleet.recognition.loader import gallery_index, load_models
    from facefleet.recognition.pipeline import FacePipeline
    from facefleet.runtime import create_backend

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise FacefleetError(f"--out {out}: use a .png or .jpg file")
    if not out.parent.is_dir():
        raise FacefleetError(f"--out {out}: folder {out.parent} does not exist")
    cfg = load_config(args.config, ComponentConfig)
    frame = grab(args.source, args.frame, args.decoder)
    backend = create_backend(cfg.models.backend)
    try:
        models = load_models(backend, cfg, args.detector, args.recognizer)
        with tempfile.TemporaryDirectory(prefix="facefleet-snapshot-") as tmp:
            gallery = Gallery.open(args.gallery) if args.gallery else Gallery.open(Path(tmp) / "g", create=True)
            pipeline = FacePipeline(models.detector, models.recognizer, gallery_index(gallery, models.recognizer), cfg)
            faces = snapshot(frame, pipeline, out)
        models.close()
    finally:
        backend.close()
    h, w = frame.image.shape[:2]
    plan = cfg.detection.plan
    tiles = len(plan.windows(w, h, min(models.detector.tile_canvas(plan)))) if plan.tiled else 0
    print(f"{out}: {w}x{h} frame, {len(faces)} face(s); plan: {'full frame' if plan.full_frame else 'no full frame'}, "
          f"{tiles} tile(s), {len(plan.zones)} zone(s)")
    for f in faces:
        print(f"  {f.label}  box {', '.join(f'{v:.0f}' for v in f.box)}")
    return 0
