"""The gallery: enrolled identities as aligned face CROPS; embeddings are a per-model cache.

Layout on disk (directories 0700, files 0600, every write atomic so a crash never loses data)::

    DIR/gallery.json                 identities -> crop files (the source of truth)
    DIR/crops/<crop sha256>.png      aligned 112x112 crops (BGR PNG)
    DIR/cache/<fingerprint>.npz      identity templates for one recognizer (derived, disposable)

A model swap re-embeds the crops with the new model, so enrollment and matching always share
one embedding space.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)

INDEX = "gallery.json"
ARCHIVE_MANIFEST = "facefleet-gallery.json"
ARCHIVE_FORMAT = 1
FORMAT_VERSION = 1
NAME_MAX = 128


def _atomic_write(path: Path, data: bytes) -> None:
    """Write-then-rename with 0600 permissions: readers see the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def validate_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > NAME_MAX or any(c in name for c in "\n\r\t\0/\\"):
        raise FacefleetError(f"invalid identity name {name!r}: 1-{NAME_MAX} characters, no slashes or control characters")
    return name


# Galleries at least this large are searched coarse-int8-then-exact (when onnxruntime is there).
COARSE_FROM = 20_000
COARSE_K = 256


@dataclass
class GalleryIndex:
    """Identity templates for one recognizer: unit vectors ``[m,d]`` and their names."""

    fingerprint: str
    names: list[str]
    templates: np.ndarray
    coarse_from: int = COARSE_FROM
    ignored: frozenset[str] = frozenset()  # ignore anchors among names: a match to them raises no event
    _coarse: object = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    def search(self, queries: np.ndarray, top_k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Top-k identities per query: (indices ``[q,k]``, cosine ``[q,k]``), best first. Exact.

        Small galleries: one matrix product for all queries. Large ones: an int8 coarse top-K on
        onnxruntime, exact float re-rank of those K, and a proof from the coarse error bound
        that nothing outside them could rank higher (else the exact full scan).
        """
        q = np.atleast_2d(np.asarray(queries, np.float32))
        m = len(self.names)
        if m == 0:
            return np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32)
        k = min(top_k, m)
        if m >= self.coarse_from and k <= 16:
            found = self._coarse_search(q, k)
            if found is not None:
                return found
        return self._exact(q, k)

    def _coarse_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        if self._coarse is None:
            try:
                from facefleet.runtime.onnx import Int8Scorer
                self._coarse = Int8Scorer(self.templates, COARSE_K)
            except FacefleetError as e:
                log.info("exact gallery search only: %s", e)
                self._coarse = False
        if self._coarse is False:
            return None
        cand, coarse, delta = self._coarse.topk(q)
        exact = np.einsum("nd,nkd->nk", q, self.templates[cand])
        order = np.argsort(-exact, axis=1)[:, :k]
        idx = np.take_along_axis(cand, order, axis=1)
        sims = np.take_along_axis(exact, order, axis=1)
        # anything outside the K candidates scores at most coarse[K-1] + delta
        if np.all(sims[:, -1] >= coarse[:, -1] + delta):
            return idx, sims
        return None

    def _exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        m = len(self.names)
        sims = q @ self.templates.T
        if k < m:
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(m), (len(q), m))
        part_s = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_s, axis=1)
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_s, order, axis=1)


class Gallery:
    """Enrolled identities and their crops, persisted in a directory."""

    def __init__(self, root: Path, data: dict):
        self.root = root
        self._data = data

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, create: bool = False) -> Gallery:
        root = Path(root)
        index = root / INDEX
        if not index.is_file():
            if not create:
                raise FacefleetError(f"unknown gallery {root}: no {INDEX} (create it with 'facefleet gallery add')")
            if root.exists() and not root.is_dir():
                raise FacefleetError(f"gallery path {root} is not a directory")
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            (root / "crops").mkdir(exist_ok=True, mode=0o700)
            g = cls(root, {"version": FORMAT_VERSION, "identities": {}})
            g._save()
            return g
        try:
            data = json.loads(index.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FacefleetError(f"corrupt gallery index {index}: {e}") from None
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION or not isinstance(data.get("identities"), dict):
            raise FacefleetError(f"corrupt gallery index {index}: unsupported format")
        return cls(root, data)

    def _save(self) -> None:
        _atomic_write(self.root / INDEX, json.dumps(self._data, indent=1, sort_keys=True).encode())

    # ---- reading -------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._data["identities"])

    def __len__(self) -> int:
        return len(self._data["identities"])

    def __contains__(self, name: str) -> bool:
        return name in self._data["identities"]

    def info(self, name: str) -> dict:
        return dict(self._data["identities"][name])

    def ignored(self) -> frozenset[str]:
        """Identities enrolled as ignore anchors (a neighbour, a poster, a TV)."""
        return frozenset(n for n, e in self._data["identities"].items() if e.get("ignore"))

    def crop_files(self, name: str) -> list[Path]:
        return [self.root / "crops" / c for c in self._data["identities"][name]["crops"]]

    def load_crops(self, name: str) -> np.ndarray:
        crops = []
        for p in self.crop_files(name):
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                raise FacefleetError(f"gallery {self.root}: crop {p.name} of {name!r} is missing or unreadable")
            crops.append(img)
        return np.stack(crops)

    # ---- writing -------------------------------------------------------------------------
    def add(self, name: str, crops: list[np.ndarray], sources: list[str] | None = None, ignore: bool = False) -> int:
        """Store aligned crops for ``name`` (created if new). Returns the number of new crops.
        ``ignore``: ``name`` is an ignore anchor (matches to it raise no event)."""
        name = validate_name(name)
        if not crops:
            raise FacefleetError(f"no face crops to enroll for {name!r}")
        known = self._data["identities"].get(name)
        if known is not None and bool(known.get("ignore")) != ignore:
            raise FacefleetError(f"{name!r} is already enrolled as {'an ignore anchor' if known.get('ignore') else 'an identity'}")
        (self.root / "crops").mkdir(exist_ok=True, mode=0o700)
        entry = self._data["identities"].setdefault(
            name, {"crops": [], "sources": [], "added": datetime.now(UTC).isoformat()})
        if ignore:
            entry["ignore"] = True
        added = 0
        for i, crop in enumerate(crops):
            ok, png = cv2.imencode(".png", crop)
            if not ok:
                raise FacefleetError(f"cannot encode a crop of {name!r}")
            digest = hashlib.sha256(png.tobytes()).hexdigest()[:32]
            fname = f"{digest}.png"
            if fname in entry["crops"]:
                continue
            _atomic_write(self.root / "crops" / fname, png.tobytes())
            entry["crops"].append(fname)
            entry["sources"].append(sources[i] if sources else "")
            added += 1
        self._save()
        return added

    def remove(self, name: str) -> None:
        if name not in self._data["identities"]:
            raise FacefleetError(f"no identity {name!r} in gallery {self.root}")
        entry = self._data["identities"].pop(name)
        self._save()
        still_used = {c for e in self._data["identities"].values() for c in e["crops"]}
        for c in entry["crops"]:
            if c not in still_used:
                (self.root / "crops" / c).unlink(missing_ok=True)

    # ---- archives (fleet enrollment) ------------------------------------------------------
    def export_archive(self, path: Path) -> int:
        """Write the gallery's identities and crops (no embeddings: each device embeds them
        with its own model) as a tar.gz. Returns the number of identities."""
        manifest = {"format": ARCHIVE_FORMAT, "identities": {
            n: {"crops": list(e["crops"]), "sources": list(e.get("sources", [])), **({"ignore": True} if e.get("ignore") else {})}
            for n, e in self._data["identities"].items()}}
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            _add_bytes(tar, ARCHIVE_MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
            for crops in sorted({c for e in self._data["identities"].values() for c in e["crops"]}):
                _add_bytes(tar, f"crops/{crops}", (self.root / "crops" / crops).read_bytes())
        _atomic_write(Path(path), buf.getvalue())
        return len(self)

    def merge_archive(self, path: Path, max_bytes: int = 512 << 20) -> int:
        """Add the identities of an archive (made by ``export_archive`` / ``gallery pack``).
        Everything is read and checked first; the gallery changes only if all of it is valid.
        Returns the number of crops added."""
        path = Path(path)
        if not path.is_file():
            raise FacefleetError(f"gallery archive not found: {path}")
        if path.stat().st_size > max_bytes:
            raise FacefleetError(f"gallery archive {path.name} is larger than {max_bytes >> 20} MB")
        try:
            with tarfile.open(path, mode="r:gz") as tar:
                files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError, EOFError) as e:
            raise FacefleetError(f"corrupt gallery archive {path.name}: {e}") from None
        try:
            manifest = json.loads(files[ARCHIVE_MANIFEST])
            assert manifest["format"] == ARCHIVE_FORMAT
            identities = manifest["identities"]
        except (KeyError, json.JSONDecodeError, AssertionError, TypeError):
            raise FacefleetError(f"gallery archive {path.name}: missing or unsupported {ARCHIVE_MANIFEST}") from None
        staged: dict[str, list[np.ndarray]] = {}
        for name, entry in identities.items():
            validate_name(name)
            crops = []
            for c in entry["crops"]:
                data = files.get(f"crops/{c}")
                img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
                if img is None or img.shape[:2] != (112, 112):
                    raise FacefleetError(f"gallery archive {path.name}: crop {c} of {name!r} is missing or not a 112x112 image")
                crops.append(img)
            staged[name] = crops
        return sum(self.add(name, crops, identities[name].get("sources"), ignore=bool(identities[name].get("ignore")))
                   for name, crops in staged.items())

    # ---- embeddings ----------------------------------------------------------------------
    def _content_key(self) -> str:
        h = hashlib.sha256()
        for name in self.names():
            h.update(name.encode() + b"\0" + ",".join(self._data["identities"][name]["crops"]).encode() + b"\n")
        return h.hexdigest()

    def index_for(self, fingerprint: str, embed: Callable[[np.ndarray], np.ndarray],
                  use_cache: bool = True) -> GalleryIndex:
        """Identity templates for the model ``fingerprint``, from the cache when it is current.

        ``embed`` maps a crop batch ``[n,112,112,3]`` to unit embeddings; it is called once for
        all crops of the gallery when the cache is missing or stale.
        """
        names = self.names()
        key = self._content_key()
        cache = self.root / "cache" / f"{fingerprint}.npz"
        if use_cache and cache.is_file():
            try:
                with np.load(cache, allow_pickle=False) as z:
                    if str(z["key"]) == key:
                        return GalleryIndex(fingerprint, names, z["templates"].astype(np.float32), ignored=self.ignored())
            except (OSError, KeyError, ValueError):
                log.warning("gallery cache %s unreadable; recomputing", cache.name)
        if not names:
            return GalleryIndex(fingerprint, [], np.zeros((0, 0), np.float32))
        all_crops, owner = [], []
        for i, name in enumerate(names):
            c = self.load_crops(name)
            all_crops.append(c)
            owner += [i] * len(c)
        emb = embed(np.concatenate(all_crops))
        owner_a = np.asarray(owner)
        templates = np.zeros((len(names), emb.shape[1]), np.float32)
        np.add.at(templates, owner_a, emb)
        templates /= np.maximum(np.linalg.norm(templates, axis=1, keepdims=True), 1e-12)
        if use_cache:
            cache.parent.mkdir(exist_ok=True, mode=0o700)
            buf = _npz_bytes(key=np.array(key), templates=templates)
            _atomic_write(cache, buf)
        log.info("gallery %s: embedded %d crops of %d identities for model %s", self.root, len(owner), len(names), fingerprint)
        return GalleryIndex(fingerprint, names, templates, ignored=self.ignored())


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def _npz_bytes(**arrays) -> bytes:
    import io

    bio = io.BytesIO()
    np.savez(bio, **arrays)
    return bio.getvalue()
