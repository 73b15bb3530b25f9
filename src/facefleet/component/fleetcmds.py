"""The fleet commands of the component: erase, list_unknowns, promote_unknown.

They run on the component (``comp``: a ``facefleet.component.service.Component``) under its
configuration lock, change the gallery, and switch every camera to the updated index between
two frames (only the changed identity is re-embedded: ``loader.update_index``).
"""

from __future__ import annotations

import json

from facefleet.component.commands import Erase, ListUnknowns, PromoteUnknown
from facefleet.config import IOT_CORE_MAX_PAYLOAD
from facefleet.errors import FacefleetError
from facefleet.events import UnknownSummary

FLEET_COMMANDS = (Erase, ListUnknowns, PromoteUnknown)
REPLY_BUDGET = IOT_CORE_MAX_PAYLOAD - 8192  # room for the rest of the command_result event


def run_fleet_command(comp, cmd) -> tuple[str, dict]:
    """Returns (message, extra command_result fields)."""
    if isinstance(cmd, ListUnknowns):
        return list_unknowns(comp)
    with comp._apply_lock, comp.busy():
        if isinstance(cmd, Erase):
            return erase(comp, cmd.name), {}
        assert isinstance(cmd, PromoteUnknown)
        return promote(comp, cmd), {}


def _switch_index(comp, changed: list[str]) -> None:
    from facefleet.recognition.loader import update_index

    # each camera takes the new index at its next frame (component/serving.py)
    comp.slot.publish(index=update_index(comp.gallery, comp.index, changed, comp.models.recognizer))


def erase(comp, name: str) -> str:
    """Idempotent: the name is recorded as erased first (so a crash cannot let a merge bring it
    back), then removed from the gallery and the serving index if it is there."""
    from facefleet.recognition.gallery import validate_name

    name = validate_name(name)
    comp.erased.add(name)
    if name not in comp.gallery:
        return f"{name} erased (was not in the gallery)"
    comp.gallery.remove(name)
    _switch_index(comp, [name])
    return f"{name} erased"


def _books(comp) -> list:
    """The stranger books of the cameras, each once (cameras may share one)."""
    seen, out = set(), []
    for w in list(comp.cameras.values()):
        book = w.pipeline.strangers
        if id(book) not in seen:
            seen.add(id(book))
            out.append(book)
    return out


def list_unknowns(comp) -> tuple[str, dict]:
    rows = sorted((r for b in _books(comp) for r in b.list()), key=lambda r: r["last_seen"], reverse=True)
    shown, size = [], 0
    for r in rows:
        size += len(json.dumps(r)) + 2
        if size > REPLY_BUDGET:
            break
        shown.append(UnknownSummary(**r))
    if len(shown) < len(rows):
        return f"{len(rows)} strangers, the {len(shown)} most recent listed (a reply must fit 128 KiB)", {"unknowns": shown}
    return f"{len(rows)} strangers", {"unknowns": shown}


def promote(comp, cmd: PromoteUnknown) -> str:
    from facefleet.recognition.gallery import validate_name

    name = validate_name(cmd.name) if cmd.name is not None else None
    for book in _books(comp):
        try:
            book.get(cmd.unknown_id)
        except FacefleetError:
            continue
        target = book.promote(cmd.unknown_id, comp.gallery, name, ignore=cmd.ignore)
        comp.erased.discard(target)  # named on purpose again: shipped archives may carry it
        _switch_index(comp, [target])
        return f"{cmd.unknown_id} promoted to {'ignore anchor ' if cmd.ignore else ''}{target}"
    raise FacefleetError(f"no stranger {cmd.unknown_id!r} (forgotten, or the recognizer changed)")
