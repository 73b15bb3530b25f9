"""Bounded, validating reader of gallery archives (``gallery pack`` / ``export_archive``).

Why: a limit on the compressed file bounds nothing. A 160 KB tar with a 1 GB sparse member or a
1.2 MB gzip of zeros expands to over a gigabyte. The archive is read as a stream; every member
is checked from its header (kind, size, count) BEFORE its data is read, and the total number of
decompressed bytes is counted as the gzip stream is inflated, so the work stops at the bound.
Nothing is extracted to disk. Every manifest entry is validated, every crop decoded (bounded),
so the caller can apply all of it or nothing.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facefleet.errors import FacefleetError

ARCHIVE_MANIFEST = "facefleet-gallery.json"
ARCHIVE_FORMAT = 1


@dataclass(frozen=True)
class ArchiveLimits:
    max_file_bytes: int = 512 << 20        # compressed archive on disk
    max_total_bytes: int = 256 << 20       # decompressed stream (tar headers + data)
    max_members: int = 200_000
    max_crop_bytes: int = 1 << 20          # one 112x112 PNG is ~30 KB
    max_manifest_bytes: int = 32 << 20


class _Counting(io.RawIOBase):
    """The decompressed stream, refusing to inflate past ``limit`` bytes."""

    def __init__(self, inner, limit: int, name: str):
        self.inner, self.limit, self.name, self.count = inner, limit, name, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.inner.read(len(b))
        self.count += len(data)
        if self.count > self.limit:
            raise FacefleetError(f"gallery archive {self.name}: over {self.limit >> 20} MB uncompressed (refused)")
        b[:len(data)] = data
        return len(data)


def read_members(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> dict[str, bytes]:
    """Regular-file members by name, every bound checked before the data is read."""
    name = path.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FacefleetError(f"gallery archive not found: {path}") from None
    except OSError as e:
        raise FacefleetError(f"gallery archive {name}: {e.strerror}") from None
    if not path.is_file():
        raise FacefleetError(f"gallery archive not found: {path}")
    if size > limits.max_file_bytes:
        raise FacefleetError(f"gallery archive {name} is larger than {limits.max_file_bytes >> 20} MB")
    files: dict[str, bytes] = {}
    count = 0
    try:
        with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz:
            stream = io.BufferedReader(_Counting(gz, limits.max_total_bytes, name))
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for m in tar:
                    count += 1
                    if count > limits.max_members:
                        raise FacefleetError(f"gallery archive {name}: more than {limits.max_members} members (refused)")
                    if m.isdir():
                        continue
                    if not m.isfile() or m.issparse():
                        raise FacefleetError(f"gallery archive {name}: member {m.name!r} is not a regular file (refused)")
                    cap = limits.max_manifest_bytes if m.name == ARCHIVE_MANIFEST else limits.max_crop_bytes
                    if m.size > cap:
                        raise FacefleetError(f"gallery archive {name}: member {m.name!r} is {m.size} bytes, over {cap} (refused)")
                    if m.name in files:
                        raise FacefleetError(f"gallery archive {name}: member {m.name!r} appears twice")
                    f = tar.extractfile(m)
                    files[m.name] = f.read() if f is not None else b""
    except FacefleetError:
        raise
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile, ValueError) as e:
        raise FacefleetError(f"corrupt gallery archive {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return files


def read_gallery_archive(path: Path, max_file_bytes: int | None = None, limits: ArchiveLimits | None = None,
                         ignored: set[str] | None = None) -> dict[str, tuple[list[np.ndarray], list[str]]]:
    """Every identity of the archive as (crops, sources), all validated; raises on the first problem.
    ``ignored`` receives the identities flagged as ignore anchors."""
    from facefleet.images import decode_image_bytes
    from facefleet.names import printable
    from facefleet.recognition.gallery import CROP_FILE, CROP_SIZE, validate_name

    limits = limits or ArchiveLimits()
    if max_file_bytes is not None:
        limits = ArchiveLimits(max_file_bytes, limits.max_total_bytes, limits.max_members, limits.max_crop_bytes,
                               limits.max_manifest_bytes)
    name = path.name
    files = read_members(path, limits)
    bad_manifest = FacefleetError(f"gallery archive {name}: missing or unsupported {ARCHIVE_MANIFEST}")
    try:
        manifest = json.loads(files[ARCHIVE_MANIFEST].decode("utf-8"))
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise bad_manifest from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT or not isinstance(manifest.get("identities"), dict):
        raise bad_manifest
    staged: dict[str, tuple[list[np.ndarray], list[str]]] = {}
    for ident, entry in manifest["identities"].items():
        try:
            ident = validate_name(ident)
        except FacefleetError as e:
            raise FacefleetError(f"gallery archive {name}: {e}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("crops"), list) or not entry["crops"]:
            raise FacefleetError(f"gallery archive {name}: identity {ident!r} has no crop list")
        sources = entry.get("sources") or []
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise FacefleetError(f"gallery archive {name}: identity {ident!r} has invalid sources")
        crops = []
        for c in entry["crops"]:
            if not isinstance(c, str) or not CROP_FILE.match(c):
                raise FacefleetError(f"gallery archive {name}: crop {printable(c, 80)} of {ident!r} is missing "
                                     "(not a content-addressed crop file name)")
            data = files.get(f"crops/{c}")
            try:
                img = decode_image_bytes(data or b"", f"crop {c}", max_pixels=CROP_SIZE[0] * CROP_SIZE[1])
            except FacefleetError:
                img = None
            if img is None or img.shape[:2] != CROP_SIZE:
                raise FacefleetError(f"gallery archive {name}: crop {c} of {ident!r} is missing or not a 112x112 image")
            crops.append(img)
        staged[ident] = (crops, [str(s) for s in sources])
        if ignored is not None and entry.get("ignore") is True:
            ignored.add(ident)
    return staged
