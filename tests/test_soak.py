"""Soak mode: generated presses go through the mock button and the same loop; nothing is lost or leaks."""

from __future__ import annotations

import threading

from firmware.soak import SoakPresser
from tests.kit_helpers import KitHarness, make_config, write_photo


def test_soak_presses_all_reach_a_verdict(tmp_path):
    photos = tmp_path / "in"
    photos.mkdir()
    write_photo(photos / "a.jpg", 220)
    write_photo(photos / "b.jpg", 100)
    cfg = make_config(tmp_path / "state", photos, camera={"loop": True})
    with KitHarness(cfg) as h:
        threads_before = threading.active_count()
        presser = SoakPresser(h.kit, interval_s=0.0, presses=40, press_s=0.08)
        presser.start()
        h._thread.join(60)  # the presser stops the kit when done
        assert h.rc == 0
        assert presser.done == 40
        verdicts = [h.verdict(timeout=1) for _ in range(40)]
        assert h.verdicts.empty()
        assert threading.active_count() <= threads_before + 2
    assert [v.pattern for v in verdicts] == ["ok", "review"] * 20
    assert h.store.counts()["total"] == 40
    assert [r.seq for r in h.store.last(3)] == [40, 39, 38]


def test_soak_without_mock_pin_posts_events(tmp_path):
    photos = tmp_path / "in"
    photos.mkdir()
    write_photo(photos / "a.jpg", 220)
    cfg = make_config(tmp_path / "state", photos, camera={"loop": True})
    with KitHarness(cfg) as h:
        presser = SoakPresser(h.kit, interval_s=0.0, presses=3)
        presser._mock_pin = lambda: None  # as on a real Pi: no mock pin to drive
        presser.start()
        h._thread.join(30)
        assert [h.verdict(timeout=1).press.source for _ in range(3)] == ["soak"] * 3
