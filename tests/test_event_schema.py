"""The event schema is versioned: v1 consumers still validate v1 events, the current schema
accepts both, and a v2 event says which schema it needs.

``tests/data/events_v1.jsonl`` was written by the version 1 producer (facefleet main at
4214ae9, the last commit before schema_version); ``schemas/event.schema.v1.json`` is that
commit's ``schemas/event.schema.json``, unchanged.
"""

import json
from pathlib import Path

import jsonschema
import pytest

from facefleet.events import SCHEMA_VERSION, Candidate, MatchEvent, Models, Quality, StatusEvent, json_schema, parse_event, to_json
from facefleet.recognition.facestats import FaceStats

ROOT = Path(__file__).resolve().parents[1]
V1_EVENTS = [json.loads(line) for line in (Path(__file__).parent / "data" / "events_v1.jsonl").read_text().splitlines()]


def _schema(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / name).read_text()))


def _v2_events() -> list[dict]:
    m = Models(detector="5e4447f50245bbd7", recognizer="c4c390b65477ed53")
    q = Quality(pre_norm=21.0, face_px=90, det_score=0.8, evidence_frames=3, evidence_weight=2.1)
    unknown = MatchEvent(camera_id="door", track_id=3, decision="unknown", identity=None, similarity=0.12,
                         best_candidate=Candidate(identity="obama", similarity=0.12), threshold=0.32, frame_index=9,
                         first_frame=1, last_frame=9, bbox=(1, 2, 3, 4), quality=q, models=m, margin=0.05,
                         unknown_id="u0123456789abcde", unknown_count=5)
    stats = FaceStats()
    stats.frame(["too_small"])
    stats.frame([])
    status = StatusEvent(fps={"door": 14.0}, stage_ms={}, models=m, gallery_identities=2,
                         face_usability={"door": stats.snapshot()})
    return [json.loads(to_json(e)) for e in (unknown, status)]


def test_published_files_are_the_code():
    current = json_schema()
    assert json.loads((ROOT / "schemas" / "event.schema.json").read_text()) == current
    assert json.loads((ROOT / "schemas" / f"event.schema.v{SCHEMA_VERSION}.json").read_text()) == current
    assert current["$id"].endswith(f"event.schema.v{SCHEMA_VERSION}.json")


def test_v1_consumer_still_validates_v1_events():
    v1 = _schema("event.schema.v1.json")
    assert {e["type"] for e in V1_EVENTS} == {"match", "status", "error", "model_changed", "command_result"}
    for e in V1_EVENTS:
        v1.validate(e)


def test_current_schema_and_parser_accept_v1_events():
    current = jsonschema.Draft202012Validator(json_schema())
    for e in V1_EVENTS:
        current.validate(e)
        parsed = parse_event(json.dumps(e))
        assert parsed.schema_version == 1  # absent means 1
        assert parsed.event_id == e["event_id"]
    assert parse_event(V1_EVENTS[0]).margin is None


def test_v2_events_validate_against_v2_and_say_they_are_v2():
    current = _schema("event.schema.json")
    for e in _v2_events():
        current.validate(e)
        assert e["schema_version"] == SCHEMA_VERSION == 2
        assert parse_event(e).schema_version == 2


def test_v2_events_are_rejected_by_a_v1_consumer_by_design():
    """v1 forbids unknown properties (it catches typos), so added fields cannot pass it: a v1
    consumer must dispatch on schema_version. Documented in docs/fleet.md."""
    v1 = _schema("event.schema.v1.json")
    for e in _v2_events():
        errors = list(v1.iter_errors(e))
        assert errors and any("schema_version" in err.message for err in errors)


def test_a_version_from_the_future_is_refused():
    e = dict(V1_EVENTS[0], schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(e, json_schema())
