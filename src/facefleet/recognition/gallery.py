"""The gallery: enrolled identities as aligned face CROPS; embeddings are a per-model cache.

Layout on disk (directories 0700, files 0600, every write atomic so a crash never loses data)::

    DIR/gallery.json                 identities -> crop files (the source of truth)
    DIR/crops/<crop sha256>.png      aligned 112x112 crops (BGR PNG)
    DIR/cache/<fingerprint>.npz      identity templates for one recognizer (derived, disposable)

A model swap re-embeds the crops with the new model, so enrollment and matching always share
one embedding space.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import re
import stat
import tarfile
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
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
    from facefleet.names import identity_name

    return identity_name(name)


CROP_FILE = re.compile(r"^[0-9a-f]{32}\.png$")  # content-addressed: nothing read from disk may name another path
CROP_SIZE = (112, 112)


def _check_data(data: object, where: str) -> dict:
    """Everything read from gallery.json is checked: names, crop file names (no ``../``)."""
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION or not isinstance(data.get("identities"), dict):
        raise FacefleetError(f"corrupt gallery index {where}: unsupported format")
    for name, entry in data["identities"].items():
        try:
            validate_name(name)
        except FacefleetError as e:
            raise FacefleetError(f"corrupt gallery index {where}: {e}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("crops"), list) or not all(
                isinstance(c, str) and CROP_FILE.match(c) for c in entry["crops"]):
            raise FacefleetError(f"corrupt gallery index {where}: identity {name!r} has invalid crop file names")
        entry.setdefault("sources", [""] * len(entry["crops"]))
    return data


def _tighten(root: Path) -> None:
    """Personal data: the gallery folder is 0700. A folder others can read or write is tightened."""
    try:
        mode = stat.S_IMODE(root.stat().st_mode)
        if mode & 0o077:
            os.chmod(root, 0o700)
            log.warning("gallery %s was mode %o; tightened to 0700", root, mode)
    except OSError as e:
        raise FacefleetError(f"gallery {root}: cannot set permissions: {e.strerror}") from None


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
    version: str | None = None  # content hash of the gallery it was made from (events carry it)
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
        try:
            return cls._open(Path(root), create)
        except OSError as e:
            raise FacefleetError(f"gallery {root}: {e.strerror or e}{' (' + e.filename + ')' if e.filename else ''}") from None

    @classmethod
    def _open(cls, root: Path, create: bool) -> Gallery:
        index = root / INDEX
        if not index.is_file():
            if not create:
                raise FacefleetError(f"unknown gallery {root}: no {INDEX} (create it with 'facefleet gallery add')")
            if root.exists() and not root.is_dir():
                raise FacefleetError(f"gallery path {root} is not a directory")
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            (root / "crops").mkdir(exist_ok=True, mode=0o700)
            _tighten(root)
            g = cls(root, {"version": FORMAT_VERSION, "identities": {}})
            g._save()
            return g
        _tighten(root)
        try:
            data = json.loads(index.read_bytes().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise FacefleetError(f"corrupt gallery index {index}: {one_line_of(e)}") from None
        return cls(root, _check_data(data, str(index)))

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
        from facefleet.images import read_image_file

        crops = []
        for p in self.crop_files(name):
            try:
                img = read_image_file(p, max_pixels=CROP_SIZE[0] * CROP_SIZE[1], max_bytes=1 << 20)
            except FacefleetError:
                img = None
            if img is None or img.shape[:2] != CROP_SIZE:
                raise FacefleetError(f"gallery {self.root}: crop {p.name} of {name!r} is missing, unreadable or not "
                                     f"{CROP_SIZE[0]}x{CROP_SIZE[1]}")
            crops.append(img)
        return np.stack(crops)

    # ---- all-or-nothing changes ------------------------------------------------------------
    @contextmanager
    def _all_or_nothing(self, failure: str):
        """One change: on any failure (a full disk, a bad entry) memory, gallery.json and the
        crops folder are as before; a disk error becomes one line, ``failure: reason``. Yields
        the list the change appends its new crop files to, and saves the index at the end."""
        before = copy.deepcopy(self._data)
        new_files: list[Path] = []
        try:
            yield new_files
            self._save()
        except BaseException as e:
            self._data = before
            for f in new_files:
                f.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise FacefleetError(f"{failure}: {e.strerror or e}") from None
            raise

    # ---- writing -------------------------------------------------------------------------
    def add(self, name: str, crops: list[np.ndarray], sources: list[str] | None = None, ignore: bool = False) -> int:
        """Store aligned crops for ``name`` (created if new). Returns the number of new crops.
        ``ignore``: ``name`` is an ignore anchor (matches to it raise no event)."""
        with self._all_or_nothing(f"gallery {self.root}: {name!r} not enrolled") as new_files:
            added = self._add(name, crops, sources, new_files, ignore)
        return added

    def _add(self, name: str, crops: list[np.ndarray], sources: list[str] | None, new_files: list[Path],
             ignore: bool = False) -> int:
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
            if crop.shape[:2] != CROP_SIZE:
                raise FacefleetError(f"a crop of {name!r} is {crop.shape[1]}x{crop.shape[0]}, not {CROP_SIZE[0]}x{CROP_SIZE[1]}")
            ok, png = cv2.imencode(".png", crop)
            if not ok:
                raise FacefleetError(f"cannot encode a crop of {name!r}")
            digest = hashlib.sha256(png.tobytes()).hexdigest()[:32]
            fname = f"{digest}.png"
            if fname in entry["crops"]:
                continue
            path = self.root / "crops" / fname
            if not path.exists():
                new_files.append(path)
            _atomic_write(path, png.tobytes())
            entry["crops"].append(fname)
            entry["sources"].append(sources[i] if sources and i < len(sources) else "")
            added += 1
        return added

    def remove(self, name: str) -> None:
        if name not in self._data["identities"]:
            raise FacefleetError(f"no identity {name!r} in gallery {self.root}")
        with self._all_or_nothing(f"gallery {self.root}: {name!r} not removed"):
            entry = self._data["identities"].pop(name)
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

    def merge_archive(self, path: Path, max_bytes: int = 512 << 20, skip: frozenset[str] | set[str] = frozenset()) -> int:
        """Add the identities of an archive (made by ``export_archive`` / ``gallery pack``).
        Everything is read and checked first; the gallery changes only if all of it is valid.
        ``skip``: names never merged (erased from the fleet). Returns the number of crops added."""
        from facefleet.archives import read_gallery_archive

        ignored: set[str] = set()
        staged = read_gallery_archive(Path(path), max_bytes, ignored=ignored)  # bounded, every entry checked
        with self._all_or_nothing(f"gallery archive {Path(path).name} not merged") as new_files:
            added = sum(self._add(name, crops, sources, new_files, name in ignored) for name, (crops, sources) in staged.items()
                        if name not in skip)
        return added

    # ---- embeddings ----------------------------------------------------------------------
    def version(self) -> str:
        """The gallery version events carry: a content hash (names and their content-addressed
        crops), so the same gallery has the same version on every device."""
        return self._content_key()[:16]

    def _content_key(self) -> str:
        h = hashlib.sha256()
        for name in self.names():
            h.update(name.encode() + b"\0" + ",".join(self._data["identities"][name]["crops"]).encode() + b"\n")
        return h.hexdigest()

    def index_for(self, fingerprint: str, embed: Callable[[np.ndarray], np.ndarray],
                  use_cache: bool = True, dim: int | None = None, spec_key: str = "") -> GalleryIndex:
        """Identity templates for the model ``fingerprint``, from the cache when it is current.

        ``embed`` maps a crop batch ``[n,112,112,3]`` to unit embeddings; it is called once for
        all crops of the gallery when the cache is missing or stale. ``spec_key`` names the
        spec fields that change an embedding (``ModelSpec.embedding_key``): a corrected sidecar
        (same model file, other preprocessing) re-embeds instead of reusing stale templates.
        """
        names = self.names()
        key = f"{self._content_key()}|{spec_key}"
        cache = self.root / "cache" / f"{fingerprint}.npz"
        if use_cache and cache.is_file():
            try:
                with np.load(cache, allow_pickle=False) as z:
                    t = z["templates"]
                    if str(z["key"]) == key and _templates_ok(t, len(names), dim):
                        return GalleryIndex(fingerprint, names, t.astype(np.float32), ignored=self.ignored(),
                                            version=self.version())
                    if str(z["key"]) == key:
                        log.warning("gallery cache %s does not fit the model (shape %s); recomputing", cache.name, t.shape)
            except (OSError, KeyError, ValueError, EOFError):
                log.warning("gallery cache %s unreadable; recomputing", cache.name)
        if not names:
            return GalleryIndex(fingerprint, [], np.zeros((0, 0), np.float32), version=self.version())
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
            self._write_cache(cache, key, templates)
        log.info("gallery %s: embedded %d crops of %d identities for model %s", self.root, len(owner), len(names), fingerprint)
        return GalleryIndex(fingerprint, names, templates, ignored=self.ignored(), version=self.version())


    def _write_cache(self, cache: Path, key: str, templates: np.ndarray) -> None:
        """The cache is disposable: a full disk or a read-only folder costs a re-embed, never the run."""
        try:
            cache.parent.mkdir(exist_ok=True, mode=0o700)
            _atomic_write(cache, _npz_bytes(key=np.array(key), templates=templates))
        except OSError as e:
            log.warning("gallery cache %s not written (%s); continuing without it", cache, e.strerror or e)

    def update_index(self, index: GalleryIndex, changed: list[str], embed: Callable[[np.ndarray], np.ndarray],
                     use_cache: bool = True, spec_key: str = "") -> GalleryIndex:
        """``index`` with only the ``changed`` identities re-embedded (added, extended or removed):
        an enroll costs its own crops, not the whole gallery."""
        rows = {n: index.templates[i] for i, n in enumerate(index.names)}
        for name in changed:
            rows.pop(name, None)
            if name in self:
                t = embed(self.load_crops(name)).sum(axis=0)
                rows[name] = (t / max(float(np.linalg.norm(t)), 1e-12)).astype(np.float32)
        names = self.names()
        missing = [n for n in names if n not in rows]
        if missing:  # the index did not come from this gallery: the full path
            return self.index_for(index.fingerprint, embed, use_cache, spec_key=spec_key)
        dim = next(iter(rows.values())).shape[0] if rows else 0
        templates = np.stack([rows[n] for n in names]) if names else np.zeros((0, dim), np.float32)
        if use_cache:
            self._write_cache(self.root / "cache" / f"{index.fingerprint}.npz", f"{self._content_key()}|{spec_key}", templates)
        return GalleryIndex(index.fingerprint, names, templates, index.coarse_from, ignored=self.ignored(),
                            version=self.version())


def _templates_ok(t: np.ndarray, n: int, dim: int | None) -> bool:
    """A cache read from disk is trusted only if it fits: n rows, the model's dimension, finite."""
    return (t.ndim == 2 and t.shape[0] == n and (dim is None or t.shape[1] == dim) and t.dtype.kind == "f"
            and bool(np.all(np.isfinite(t))))


def one_line_of(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


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
