"""Build the pieces of a pipeline from configuration: models, gallery index, enrollment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facefleet.assets import default_model
from facefleet.config import PipelineConfig
from facefleet.errors import FacefleetError
from facefleet.modelspec import resolve_model
from facefleet.recognition.gallery import Gallery, GalleryIndex
from facefleet.recognition.models import Detector, Recognizer
from facefleet.runtime.base import Backend
from facefleet.sources import read_image
from facefleet.vision.align import align_faces


@dataclass
class ModelPair:
    detector: Detector
    recognizer: Recognizer

    def close(self) -> None:
        self.detector.model.close()
        self.recognizer.model.close()


def check_pin(path: str | Path, want: str | None, role: str) -> None:
    """``models.<role>_sha256``: the file used must have this sha256 (also for ``run`` and ``gallery add``)."""
    if want is None:
        return
    from facefleet.modelspec import sha256_file

    p = Path(path)
    if not p.is_file():
        raise FacefleetError(f"{role} model file not found: {p}")
    got = sha256_file(p)
    if got != want:
        raise FacefleetError(f"{role} model {p.name}: sha256 {got[:12]}... does not match models.{role}_sha256 {want[:12]}...")


def load_detector(backend: Backend, path: str | Path | None, cfg: PipelineConfig) -> Detector:
    path = path or default_model("detector")
    check_pin(path, cfg.models.detector_sha256, "detector")
    model = backend.load(resolve_model(path, kind="detector"))
    d = cfg.detection
    try:
        return Detector(model, max_side=d.max_side, score_threshold=d.score_threshold, nms_iou=d.nms_iou,
                        min_face_px=d.min_face_px)
    except Exception:
        model.close()
        raise


def load_recognizer(backend: Backend, path: str | Path | None, pin: str | None = None) -> Recognizer:
    path = path or default_model("recognizer")
    check_pin(path, pin, "recognizer")
    model = backend.load(resolve_model(path, kind="recognizer"))
    try:
        return Recognizer(model)
    except Exception:
        model.close()
        raise


def load_models(backend: Backend, cfg: PipelineConfig, detector: str | Path | None = None,
                recognizer: str | Path | None = None) -> ModelPair:
    det = load_detector(backend, detector or cfg.models.detector, cfg)
    try:
        rec = load_recognizer(backend, recognizer or cfg.models.recognizer, cfg.models.recognizer_sha256)
    except Exception:
        det.model.close()
        raise
    return ModelPair(det, rec)


def gallery_index(gallery: Gallery, recognizer: Recognizer, batch: int = 64) -> GalleryIndex:
    """The gallery's templates for this recognizer (cached per fingerprint)."""

    def embed(crops: np.ndarray) -> np.ndarray:
        return np.concatenate([recognizer.embed(crops[i:i + batch])[0] for i in range(0, len(crops), batch)])

    return gallery.index_for(recognizer.fingerprint, embed, dim=recognizer.rec.embedding_size,
                             spec_key=recognizer.spec.embedding_key)


def update_index(gallery: Gallery, index: GalleryIndex, changed: list[str], recognizer: Recognizer,
                 batch: int = 64) -> GalleryIndex:
    """``index`` with only ``changed`` identities re-embedded (an enroll or a remove)."""
    if index.fingerprint != recognizer.fingerprint:
        return gallery_index(gallery, recognizer, batch)

    def embed(crops: np.ndarray) -> np.ndarray:
        return np.concatenate([recognizer.embed(crops[i:i + batch])[0] for i in range(0, len(crops), batch)])

    return gallery.update_index(index, changed, embed, spec_key=recognizer.spec.embedding_key)


def largest_face_crop(detector: Detector, image: np.ndarray, size: int = 112) -> np.ndarray | None:
    dets = detector.detect(image)
    if len(dets) == 0:
        return None
    i = int(np.argmax(dets.heights * (dets.boxes[:, 2] - dets.boxes[:, 0])))
    return align_faces(image, dets.kps[i:i + 1], size)[0].copy()


def enroll_images(gallery: Gallery, detector: Detector, name: str, images: list[str | Path],
                  size: int = 112) -> int:
    """Enroll the largest face of each image under ``name``. All images are checked first, so
    one bad image enrolls nothing."""
    if not images:
        raise FacefleetError("no images given to enroll")
    crops = []
    for path in images:
        crop = largest_face_crop(detector, read_image(path), size)
        if crop is None:
            raise FacefleetError(f"no face found in {path}")
        crops.append(crop)
    return gallery.add(name, crops, [Path(p).name for p in images])
