"""tpskit calibrate on generated page photos (inference.synth): verdicts, advice, stored camera settings."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from capture.folder import FolderCamera
from firmware import cli
from firmware import config as cfg
from firmware.calibrate import choose_settings, evaluate, measure, px_per_mm_at, stand_height_mm
from inference.synth import make_sample
from tests.selftest_helpers import make_kit


@pytest.fixture(scope="module")
def good():
    return make_sample(3, 1, condition="clean", scale=0.6)


def test_stand_height_for_a_600x900_page():
    # 900 mm along the 66° side, 600 mm along the 41° side: the 41° side decides
    bare = stand_height_mm(margin=0)
    assert bare == pytest.approx(300 / math.tan(math.radians(20.5)), rel=1e-6)
    assert 800 < bare < 805
    h = stand_height_mm()  # 5 % margin on each side
    assert 875 < h < 890
    assert 3.9 < px_per_mm_at(h) < 4.1  # comfortably above the 2 px/mm minimum


def test_good_page_passes(good):
    m = measure(good.image)
    assert m.found and m.page == 1 and m.reasons == ()
    items = evaluate(m)
    assert all(i.ok for i in items), items
    assert {i.name for i in items} >= {"page", "resolution", "focus", "exposure", "glare"}
    assert m.px_per_mm_min == pytest.approx(good.px_per_mm, rel=0.25)


@pytest.mark.parametrize("spoil,word", [("blurred", "fokus"), ("dark", "lampu"), ("cut_off", "tengah alas"),
                                        ("no_form", "Letakkan halaman")])
def test_bad_setups_say_what_to_adjust(spoil, word):
    m = measure(make_sample(3, 1, condition="clean", scale=0.6, spoiled=spoil).image)
    items = evaluate(m)
    assert not all(i.ok for i in items)
    assert word in " ".join(i.advice for i in items)


def test_an_over_exposed_setup_says_less_light(good):
    m = measure(np.clip(good.image.astype(np.float32) * 3, 0, 255).astype(np.uint8))
    assert m.reasons == ("too_bright",)
    assert "kurangi cahaya" in " ".join(i.advice for i in evaluate(m))


def test_glare_over_the_boxes(good):
    m = measure(good.image)
    img = good.image.copy()
    centre = np.mean(m.boxes_px[len(m.boxes_px) // 2], axis=0).astype(int)
    cv2.circle(img, tuple(int(v) for v in centre), 40, (255, 255, 255), -1)  # a lamp reflected on the boxes
    m2 = measure(img)
    glare = next(i for i in evaluate(m2) if i.name == "glare")
    assert not glare.ok and "lampu" in glare.advice


def test_low_resolution_asks_to_lower_the_camera(good):
    small = cv2.resize(good.image, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    m = measure(small, min_px_per_mm=2.0)
    bad = [i for i in evaluate(m, min_px_per_mm=2.0) if not i.ok]
    assert [i.name for i in bad] == ["resolution"]
    assert "turunkan kamera" in bad[0].advice and "88 cm" in bad[0].advice


def test_choose_settings_prefers_exposure_and_locks_focus(good):
    m = measure(good.image)
    s = choose_settings({"ExposureTime": 10000, "AnalogueGain": 4.0, "LensPosition": 1.13,
                         "ColourGains": (1.9, 1.6)}, m)
    assert s["exposure_us"] == 40000 and s["analogue_gain"] == 1.0
    assert s["lens_position"] == 1.13 and s["awb_gains"] == [1.9, 1.6]
    assert choose_settings(None, m) == {}


def test_choose_settings_exposes_whole_flicker_periods_of_the_lamps(good):
    """Lamps on 50 Hz mains flicker at 100 Hz: a fixed exposure of 43 ms would band the page on a rolling
    shutter; 40 ms with the gain making up the light does not. A bright scene under 10 ms is left as it is."""
    m = measure(good.image)
    s = choose_settings({"ExposureTime": 21500, "AnalogueGain": 2.0}, m)
    assert s["exposure_us"] == 40000 and s["analogue_gain"] == pytest.approx(43000 / 40000, abs=0.005)
    assert choose_settings({"ExposureTime": 7000, "AnalogueGain": 1.0}, m)["exposure_us"] == 7000
    dark = choose_settings({"ExposureTime": 66000, "AnalogueGain": 8.0}, m)
    assert dark["exposure_us"] == 50000 and dark["exposure_us"] % 10000 == 0


class MetaCamera(FolderCamera):
    """The folder camera plus the picamera2 metadata a Camera Module 3 would report (hardware edge)."""

    def metadata(self):
        return {"ExposureTime": 20000, "AnalogueGain": 2.0, "LensPosition": 1.1, "ColourGains": (1.8, 1.5)}


def test_cli_stores_settings_and_annotated_picture(tmp_path, good, monkeypatch, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "p.jpg").write_bytes(good.jpeg)
    conf = make_kit(tmp_path / "kit", broker_url="mqtt://127.0.0.1:1883", photos=photos)
    import capture

    monkeypatch.setattr(capture, "open_camera", lambda c: MetaCamera(c.folder, loop=True))
    path = tmp_path / "kit" / "config.toml"
    out = tmp_path / "annotated.jpg"
    rc = cli.main(["--config", str(path), "calibrate", "--out", str(out), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["ok"] and res["stored"]
    again = cfg.load(path)
    assert again.camera.exposure_us == 40000 and again.camera.lens_position == 1.1
    assert again.camera.awb_gains == (1.8, 1.5)
    assert again.kit == conf.kit  # the identity is untouched
    img = cv2.imread(str(out))
    assert img is not None and img.shape[:2] == good.image.shape[:2]
    # a second run changes nothing
    rc = cli.main(["--config", str(path), "calibrate", "--out", str(out), "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["stored"] is False


def test_cli_image_mode_and_bad_input(tmp_path, capsys):
    make_kit(tmp_path / "kit", broker_url="mqtt://127.0.0.1:1883")
    path = tmp_path / "kit" / "config.toml"
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not a jpeg")
    assert cli.main(["--config", str(path), "calibrate", "--image", str(bad)]) == 2
    assert "bukan foto" in capsys.readouterr().err
    blurred = tmp_path / "b.jpg"
    blurred.write_bytes(make_sample(3, 1, condition="clean", scale=0.6, spoiled="blurred").jpeg)
    assert cli.main(["--config", str(path), "calibrate", "--image", str(blurred),
                     "--out", str(tmp_path / "a.jpg")]) == 1
    out = capsys.readouterr().out
    assert "ATUR ULANG" in out and "fokus" in out


def test_cli_image_too_large_to_decode_is_a_clear_error(tmp_path, capsys):
    """A file whose header claims 100000 x 100000 px: cv2.imread raises instead of returning None, which
    ended `tpskit calibrate --image` with a traceback."""
    import struct

    make_kit(tmp_path / "kit", broker_url="mqtt://127.0.0.1:1883")
    path = tmp_path / "kit" / "config.toml"
    huge = tmp_path / "huge.bmp"
    huge.write_bytes(b"BM" + struct.pack("<IHHI", 0, 0, 0, 54)
                     + struct.pack("<IiiHHIIiiII", 40, 100000, 100000, 1, 24, 0, 0, 0, 0, 0, 0))
    assert cli.main(["--config", str(path), "calibrate", "--image", str(huge)]) == 2
    err = capsys.readouterr().err
    assert "bukan foto" in err and str(huge) in err and "Traceback" not in err


def test_cli_settings_that_cannot_be_stored_are_not_siap(tmp_path, good, monkeypatch, capsys):
    """The camera settings could not be written (read-only SD card, full disk): calibrate printed the error,
    then 'KESIMPULAN: SIAP' and exit 0, though nothing was locked and every page would be shot on auto."""
    import capture
    from comms import durable

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "p.jpg").write_bytes(good.jpeg)
    make_kit(tmp_path / "kit", broker_url="mqtt://127.0.0.1:1883", photos=photos)
    monkeypatch.setattr(capture, "open_camera", lambda c: MetaCamera(c.folder, loop=True))

    def read_only(*_a, **_k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(durable, "write_atomic", read_only)
    path = tmp_path / "kit" / "config.toml"
    before = path.read_text()
    rc = cli.main(["--config", str(path), "calibrate", "--out", str(tmp_path / "a.jpg")])
    captured = capsys.readouterr()
    assert rc == 2 and "KESIMPULAN: SIAP" not in captured.out
    assert "Read-only" in captured.err and path.read_text() == before


def test_cli_missing_image_and_unwritable_annotated_picture_are_said(tmp_path, good, capsys, monkeypatch):
    """cv2.imwrite returns False (it does not raise) where it cannot write, e.g. under /proc: calibrate
    printed 'annotated picture: /proc/x.jpg' for a file that was never written."""
    make_kit(tmp_path / "kit", broker_url="mqtt://127.0.0.1:1883")
    path = tmp_path / "kit" / "config.toml"
    assert cli.main(["--config", str(path), "calibrate", "--image", str(tmp_path / "nope.jpg")]) == 2
    assert "not found" in capsys.readouterr().err
    photo = tmp_path / "p.jpg"
    photo.write_bytes(good.jpeg)
    monkeypatch.setattr(cv2, "imwrite", lambda *_a, **_k: False)
    out = tmp_path / "annotated.jpg"
    argv = ["--config", str(path), "calibrate", "--image", str(photo), "--out", str(out), "--json"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["annotated"] is None and not out.exists()
    assert "annotated picture not written" in captured.err
