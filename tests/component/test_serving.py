"""ServingSlot: what the cameras serve with changes as one reference; a replaced model pair is
closed only after the last frame that took it is done."""

from __future__ import annotations

from facefleet.component.serving import Serving, ServingSlot


class Pair:
    def __init__(self, name: str):
        self.name, self.closed = name, False

    def close(self) -> None:
        self.closed = True


def test_a_frame_in_progress_keeps_its_models_until_it_ends():
    old, new = Pair("old"), Pair("new")
    slot = ServingSlot(Serving(old, "index-old", "cfg"))
    frame = slot.acquire()                     # a camera starts a frame on the old pair
    slot.publish(models=new, index="index-new")
    assert slot.current.models is new and slot.current.index == "index-new"
    assert not old.closed                      # still in use by that frame
    assert frame.models is old and frame.index == "index-old"  # the frame sees one consistent pair
    nxt = slot.acquire()                       # the next frame of any camera: the new pair
    assert nxt.models is new and nxt.generation == frame.generation + 1
    slot.release(frame)
    assert old.closed and not new.closed       # closed when its last frame ended
    slot.release(nxt)
    slot.close()
    assert new.closed


def test_replaced_models_no_frame_uses_are_closed_at_once_and_index_updates_keep_models():
    a, b = Pair("a"), Pair("b")
    slot = ServingSlot(Serving(a, "i0", "cfg"))
    s = slot.acquire()
    slot.release(s)
    slot.publish(index="i1")                   # an enrollment: same models, new index
    assert not a.closed and slot.current.models is a and slot.current.index == "i1"
    slot.publish(models=b, index="i2")
    assert a.closed                            # no frame was using it
    assert slot.in_use(b) == 0
