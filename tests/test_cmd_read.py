"""`tpskit read` through the CLI entry point: JSON lines, the TPS line, bad files, annotated pictures."""

import json
from pathlib import Path

import numpy as np
import pytest

from firmware.cli import main
from inference.synth import make_sample, make_tps
from tests.form_helpers import OTHER, install_second_form

digits = pytest.importorskip("inference.digits")
try:
    digits.DigitClassifier.load()
except Exception as exc:
    pytest.skip(f"digit model not available ({exc}); commit inference/models/digits.tflite",
                allow_module_level=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    tps = make_tps(np.random.default_rng(21))
    paths = []
    for p in (1, 2, 3):
        s = make_sample(500 + p, p, condition="clean", scale=0.55, tps=tps)
        path = d / f"page{p}.jpg"
        path.write_bytes(s.jpeg)
        paths.append(path)
    return d, paths


def test_json_lines_and_tps_line(photos, capsys, tmp_path):
    d, paths = photos
    rc = main(["read", "--json", "--tps", *map(str, paths), "--annotate", str(tmp_path / "ann")])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0 and len(lines) == 4
    assert [x["page"] for x in lines[:3]] == [1, 2, 3]
    assert all(x["status"] in ("ok", "review") for x in lines[:3])
    assert lines[3]["tps"] is True and lines[3]["status"] in ("ok", "review")
    assert len(list((tmp_path / "ann").glob("*.annotated.jpg"))) == 3


def test_bad_files_get_their_own_error_and_the_rest_is_read(photos, capsys, tmp_path):
    d, paths = photos
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(paths[0].read_bytes()[:5000])
    rc = main(["read", "--json", str(tmp_path / "missing.jpg"), str(text), str(cut), str(paths[2])])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 1 and len(lines) == 4
    assert [x["reasons"][0]["code"] for x in lines[:3]] == ["file_missing", "not_an_image", "truncated"]
    assert all(x["status"] == "retake" and x["error"] for x in lines[:3])
    assert lines[3]["page"] == 3


def test_human_readable_table(photos, capsys):
    _, paths = photos
    assert main(["read", str(paths[2])]) == 0
    out = capsys.readouterr().out
    assert "halaman 3" in out and "total_suara" in out


def test_evidence_is_added_only_when_asked(photos, capsys):
    d, paths = photos
    assert main(["read", "--json", str(paths[1])]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "evidence" not in plain  # the output contract is unchanged by default
    assert main(["read", "--json", "--evidence", str(paths[1])]) == 0
    line = json.loads(capsys.readouterr().out)
    ev = line["evidence"]
    assert {k: v for k, v in line.items() if k not in ("evidence", "timing_ms")} == {
        k: v for k, v in plain.items() if k != "timing_ms"}
    assert 0.0 <= ev["page_confidence"] <= 1.0
    n_boxes = sum(len(f["digits"]) for f in line["fields"].values())
    assert len(ev["boxes"]) == n_boxes
    for b in ev["boxes"]:
        (first, p1), (_, p2), (_, p3) = b["top"]
        assert 1.0 >= p1 >= p2 >= p3 >= 0.0 and (first == "E" or 0 <= first <= 9)
        assert line["fields"][b["field"]]["digits"][b["box"]] == (None if first == "E" else first)
    assert set(ev["bubbles"]) == {"paslon_1", "paslon_2", "paslon_3"}
    assert all(v["state"] in ("read", "unclear", "none", "empty") for v in ev["bubbles"].values())


def test_annotate_path_that_is_a_file_is_a_clear_error(photos, capsys, tmp_path):
    _, paths = photos
    taken = tmp_path / "ann"
    taken.write_text("not a directory")
    assert main(["read", "--annotate", str(taken), str(paths[0])]) == 2
    err = capsys.readouterr().err
    assert str(taken) in err and "Traceback" not in err


def test_malformed_cross_page_rules_are_a_setup_error_before_any_photo_is_read(photos, capsys, monkeypatch):
    """``--tps`` with a broken tps.json: exit 2 with the loader's message, not a traceback after every photo
    was read."""
    from inference import rules
    from inference.templates import TemplateError

    def broken(form_id, *args):
        raise TemplateError(f"inference/forms/{form_id}/tps.json: malformed cross-page rules ('terms')")

    monkeypatch.setattr(rules, "load_tps_rules", broken)
    _, paths = photos
    assert main(["read", "--json", "--tps", *map(str, paths)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "tps.json: malformed cross-page rules" in out.err
    assert main(["read", "--json", str(paths[2])]) == 0  # without --tps the rules are not needed


def test_a_picture_too_large_to_decode_gets_its_own_error_line(photos, capsys, tmp_path):
    """A file whose header claims 100000 x 100000 px (corrupt, or a giant scan): OpenCV refuses it with an
    exception, which ended the whole run; it is refused on its own line and the other photos are read."""
    import struct

    huge = tmp_path / "huge.bmp"
    huge.write_bytes(b"BM" + struct.pack("<IHHI", 0, 0, 0, 54)
                     + struct.pack("<IiiHHIIiiII", 40, 100000, 100000, 1, 24, 0, 0, 0, 0, 0, 0))
    _, paths = photos
    rc = main(["read", "--json", str(huge), str(paths[2])])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 1 and len(lines) == 2
    assert lines[0]["status"] == "retake" and lines[0]["reasons"][0]["code"] == "not_an_image"
    assert lines[1]["page"] == 3


def test_annotations_of_photos_with_the_same_name_do_not_overwrite_each_other(photos, capsys, tmp_path):
    """``a/page1.jpg`` and ``b/page1.jpg`` both wrote ``page1.annotated.jpg``: the second replaced the first.
    Each photo gets its own file, named the same way at every run, and its line says which."""
    _, paths = photos
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b, c = tmp_path / "a" / "page1.jpg", tmp_path / "b" / "page1.jpg", tmp_path / "b" / "PAGE1.jpg"
    a.write_bytes(paths[0].read_bytes())
    b.write_bytes(paths[1].read_bytes())
    c.write_bytes(paths[2].read_bytes())  # differs only in case: one file on FAT (a USB stick)
    ann = tmp_path / "ann"
    runs = []
    for _ in range(2):
        assert main(["read", "--json", "--annotate", str(ann), str(a), str(b), str(c)]) == 0
        runs.append([json.loads(x)["annotated"] for x in capsys.readouterr().out.splitlines()])
    assert runs[0] == runs[1]  # deterministic
    names = [Path(x).name for x in runs[0]]
    assert names[0] == "page1.annotated.jpg" and len({n.casefold() for n in names}) == 3
    assert all(n.endswith(".annotated.jpg") for n in names)
    assert sorted(p.name for p in ann.iterdir()) == sorted(names)
    assert all(Path(x).parent == ann for x in runs[0])
    assert main(["read", "--annotate", str(ann), str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert str(ann / names[0]) in out and str(ann / names[1]) in out  # the table says where, too


def test_an_annotation_that_cannot_be_written_is_an_error_for_that_photo_only(photos, capsys, tmp_path,
                                                                              monkeypatch):
    """cv2.imwrite returns False on a full disk or a read-only folder: that was ignored (exit 0, no file)."""
    import cv2

    _, paths = photos
    real = cv2.imwrite
    monkeypatch.setattr(cv2, "imwrite",
                        lambda name, *a, **k: False if "page1" in name else real(name, *a, **k))
    ann = tmp_path / "ann"
    rc = main(["read", "--json", "--annotate", str(ann), str(paths[0]), str(paths[1])])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 1 and len(lines) == 2
    assert lines[0]["page"] == 1 and lines[0]["status"] in ("ok", "review")  # the reading itself stands
    assert "page1.annotated.jpg" in lines[0]["error"] and "annotated" not in lines[0]
    assert "error" not in lines[1] and Path(lines[1]["annotated"]).is_file()
    rc = main(["read", "--annotate", str(ann), str(paths[0])])
    out = capsys.readouterr().out
    assert rc == 1 and "page1.annotated.jpg" in out and "Traceback" not in out


@pytest.fixture
def two_forms(tmp_path, monkeypatch):
    """A forms folder with the shipped form and ``OTHER`` (tests/form_helpers.py); photos of the three pages
    of each (one TPS's numbers)."""
    from inference import templates

    install_second_form(tmp_path / "forms", monkeypatch)
    tps = make_tps(np.random.default_rng(21))
    photos = {}
    for form in (templates.DEFAULT_FORM, OTHER):
        for p in (1, 2, 3):
            path = tmp_path / form / f"page{p}.jpg"
            path.parent.mkdir(exist_ok=True)
            sample = make_sample(500 + p, p, condition="clean", scale=0.55, tps=tps, form_id=form)
            path.write_bytes(sample.jpeg)
            photos[form, p] = path
    return photos


def test_tps_is_checked_against_the_form_of_the_pages_read(two_forms, capsys):
    """Without ``--form`` the pages of another form were read as that form, then checked as a TPS of the
    default form: every page "missing"."""
    paths = [two_forms[OTHER, p] for p in (1, 2, 3)]
    rc = main(["read", "--json", "--tps", *map(str, paths)])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0 and [x["form"] for x in lines[:3]] == [OTHER] * 3
    tps = lines[3]
    assert tps["tps"] is True and tps["checks"]
    assert "page_missing" not in [r["code"] for r in tps["reasons"]]
    assert tps["form"] == OTHER


def test_pages_of_different_forms_are_no_tps(two_forms, capsys):
    from inference.templates import DEFAULT_FORM

    paths = [two_forms[DEFAULT_FORM, 1], two_forms[OTHER, 2], two_forms[OTHER, 3]]
    rc = main(["read", "--json", "--tps", *map(str, paths)])
    out = capsys.readouterr()
    lines = [json.loads(x) for x in out.out.splitlines()]
    assert rc == 1 and len(lines) == 4
    tps = lines[3]
    assert tps["tps"] is True and tps["status"] == "review" and tps["checks"] == []
    assert [r["code"] for r in tps["reasons"]] == ["mixed_forms"]
    msg = tps["reasons"][0]["message"]
    assert DEFAULT_FORM in msg and OTHER in msg and str(paths[0]) in msg and str(paths[2]) in msg
    assert "mixed_forms" in out.err or msg in out.err
    assert main(["read", "--tps", *map(str, paths)]) == 1  # the table says so too
    assert msg in capsys.readouterr().out


def test_a_page_of_another_form_than_form_says_so(two_forms, capsys):
    """``--form`` and a photo of another form: it was "unknown form, use an official C.HASIL form"."""
    from inference.templates import DEFAULT_FORM

    paths = [two_forms[DEFAULT_FORM, 1], two_forms[OTHER, 2]]
    rc = main(["read", "--json", "--form", DEFAULT_FORM, *map(str, paths)])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 1 and len(lines) == 2
    assert lines[0]["page"] == 1 and lines[0]["form"] == DEFAULT_FORM and "error" not in lines[0]
    other = lines[1]
    assert other["status"] == "retake" and [r["code"] for r in other["reasons"]] == ["other_form"]
    msg = other["reasons"][0]["message"]
    assert OTHER in msg and DEFAULT_FORM in msg and "--form" in msg and other["error"] == msg


def bomb_png(width: int, height: int) -> bytes:
    """A PNG with a valid header (IHDR) claiming ``width`` x ``height`` RGB px, and the data of one row."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1 + 3 * width)))
            + chunk(b"IEND", b""))


def _read_in_a_process(*args: str, env: dict[str, str] | None = None, memory_mb: int = 1536):
    """`python -m firmware.cli read --json ARGS` in a process of its own, its address space limited like
    a small Pi's memory, and without OPENCV_IO_MAX_IMAGE_PIXELS unless ``env`` sets it."""
    import os
    import resource
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    full = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    full.update(PYTHONPATH=str(root), **(env or {}))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))

    return subprocess.run([sys.executable, "-m", "firmware.cli", "read", "--json", *args], cwd=root, env=full,
                          preexec_fn=limit, capture_output=True, text=True, timeout=300)


def test_a_photo_claiming_too_many_pixels_is_refused_before_it_is_decoded(photos, tmp_path):
    """OpenCV decodes up to 2^30 px by default: a header claiming 20000 x 20000 px made it allocate 1.2 GB
    (the OOM killer on a 512 MB Pi Zero 2 W). `tpskit` lowers the limit before OpenCV loads: the photo gets
    its own error line saying it is too large, and the photo next to it is still read."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(20000, 20000))
    _, paths = photos
    proc = _read_in_a_process(str(bomb), str(paths[2]))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "MemoryError" not in proc.stderr and "Traceback" not in proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(lines) == 2
    assert lines[0]["status"] == "retake" and lines[0]["reasons"][0]["code"] == "not_an_image"
    assert "terlalu besar" in lines[0]["error"] and str(bomb) in lines[0]["error"]
    assert lines[1]["page"] == 3


def test_a_pixel_limit_the_user_set_is_kept(photos):
    _, paths = photos
    proc = _read_in_a_process(str(paths[2]), env={"OPENCV_IO_MAX_IMAGE_PIXELS": "1000"})
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    assert "terlalu besar" in lines[0]["error"]


def test_a_phone_motion_photo_is_read_like_the_folder_camera_reads_it(photos, capsys, tmp_path):
    """Phones append a video after the JPEG's end marker (a motion photo): the folder camera reads such a
    file, and `tpskit read` refused it as truncated (it only looked at the file's last two bytes)."""
    _, paths = photos
    motion = tmp_path / "motion.jpg"
    motion.write_bytes(paths[2].read_bytes() + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(paths[2].read_bytes()[:5000])
    assert main(["read", "--json", str(motion), str(cut)]) == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["page"] == 3 and not lines[0].get("error")
    assert lines[1]["reasons"][0]["code"] == "truncated"


def test_the_daemon_gets_a_lower_pixel_limit_than_the_reader(monkeypatch, tmp_path):
    """`tpskit run` decodes only camera stills on a 512 MB Pi Zero 2 W: 2^25 px; `tpskit read` may get scans
    of the whole plano: 2^27. Either way set before OpenCV loads, and a value the user set is kept."""
    import os

    from firmware import cli

    for command, want in (("run", cli.RUN_MAX_IMAGE_PIXELS), ("status", cli.MAX_IMAGE_PIXELS)):
        monkeypatch.delenv("OPENCV_IO_MAX_IMAGE_PIXELS", raising=False)
        cli.main(["--config", str(tmp_path / "missing.toml"), command])  # refused config: returns at once
        assert os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] == str(want)
    assert cli.RUN_MAX_IMAGE_PIXELS >= 4608 * 2592  # a Camera Module 3 still
    monkeypatch.setenv("OPENCV_IO_MAX_IMAGE_PIXELS", "1000")
    cli.main(["--config", str(tmp_path / "missing.toml"), "run"])
    assert os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] == "1000"


def test_the_tps_s_dpt_from_the_config_or_dpt_is_checked_on_page_1(photos, capsys, tmp_path):
    """`tpskit read` compares page 1's DPT with what the kit knows: kit.dpt of --config, or --dpt (which
    wins). A page that reads otherwise goes to review (exit 0: it was read); a DPT that is no number of
    voters is refused before anything is read."""
    _d, paths = photos
    assert main(["read", "--json", str(paths[0])]) == 0
    plain = json.loads(capsys.readouterr().out)
    dpt = plain["fields"]["dpt_jml"]["value"]
    assert plain["status"] == "ok" and dpt
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"[kit]\ndpt = {dpt + 1}\n")
    for argv in (["--config", str(cfg), "read", "--json"], ["read", "--json", "--dpt", str(dpt + 1)],
                 ["--config", str(cfg), "read", "--json", "--dpt", str(dpt - 1)]):
        assert main([*argv, str(paths[0])]) == 0
        line = json.loads(capsys.readouterr().out)
        assert line["status"] == "review" and [r["code"] for r in line["reasons"]] == ["known_mismatch"], argv
        assert line["fields"] == plain["fields"]
    assert main(["--config", str(cfg), "read", "--json", "--dpt", str(dpt), str(paths[0])]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"
    for bad in ("0", "many", "1001"):
        with pytest.raises(SystemExit) as exc:
            main(["read", "--dpt", bad, str(paths[0])])
        assert exc.value.code == 2 and "DPT must be a whole number 1..1000" in capsys.readouterr().err
