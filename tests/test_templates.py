import json
from pathlib import Path

import pytest

from inference.templates import DEFAULT_FORM, TemplateError, load_form, load_page, parse_page

FORM_DIR = Path(__file__).resolve().parents[1] / "inference" / "forms" / DEFAULT_FORM
PDF = Path(__file__).resolve().parents[1] / ".." / "shared" / "forms" / f"{DEFAULT_FORM}.pdf"

CONTRACT = {
    1: ["dpt_l", "dpt_p", "dpt_jml"]
    + [f"pengguna_{s}_{p}" for s in ("dpt", "dptb", "dpk", "total") for p in ("l", "p", "jml")]
    + [
        "surat_diterima",
        "surat_digunakan",
        "surat_dikembalikan",
        "surat_tidak_digunakan",
        "disabilitas_l",
        "disabilitas_p",
        "disabilitas_jml",
    ],
    2: ["paslon_1", "paslon_2", "paslon_3"],
    3: ["suara_sah", "suara_tidak_sah", "total_suara", "tanggal", "bulan", "tahun"],
}


def test_ppwp_pages_have_contract_fields_and_tags():
    form = load_form()
    assert sorted(form.pages) == [1, 2, 3]
    for n, page in form.pages.items():
        assert page.tag_id == 100 + n and page.tag_family == "apriltag_36h10"
        assert page.size_mm == (pytest.approx(600.0, abs=0.1), pytest.approx(900.0, abs=0.1))
        names = [f.name for f in page.fields]
        assert set(CONTRACT[n]) <= set(names)
    p1, p2, p3 = form.pages[1], form.pages[2], form.pages[3]
    assert p1.n_boxes == 66 and all(len(f.boxes) == 3 for f in p1.fields)
    assert all(len(p2.by_name[f"paslon_{k}"].bubbles) == 3 for k in (1, 2, 3))
    assert [len(p3.by_name[n].boxes) for n in ("tanggal", "bulan", "tahun")] == [2, 2, 4]
    assert any(r.terms == ("suara_sah", "suara_tidak_sah") and r.total == "total_suara" for r in p3.rules)
    # the provisioned DPT is compared with page 1's I.A JML, the only field that prints it
    assert [(n, f.name) for n, p in form.pages.items() for f in p.fields if f.known] == [(1, "dpt_jml")]


def test_bad_templates_are_refused_with_clear_errors(tmp_path):
    data = json.loads((FORM_DIR / "page1.json").read_text())
    bad = json.loads(json.dumps(data))
    bad["fields"][0]["boxes_mm"][0] = [590, 10, 20, 20]
    with pytest.raises(TemplateError, match="outside"):
        parse_page(bad)
    bad = json.loads(json.dumps(data))
    bad["rules"][0]["terms"] = ["nope"]
    with pytest.raises(TemplateError, match="unknown field"):
        parse_page(bad)
    bad = json.loads(json.dumps(data))
    del bad["tag"]
    with pytest.raises(TemplateError, match="missing key 'tag'"):
        parse_page(bad)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(TemplateError, match="not valid JSON"):
        load_page(tmp_path / "x.json")
    with pytest.raises(TemplateError, match="unknown form"):
        load_form("C.HASIL-DPR-1999")


@pytest.mark.skipif(not PDF.is_file(), reason="official PDF ../shared/forms is not present")
def test_committed_templates_match_the_official_pdf():
    pytest.importorskip("pymupdf")
    import sys

    sys.path.insert(0, str(FORM_DIR.parents[2] / "scripts"))
    import measure_form

    for page in measure_form.measure(PDF):
        committed = json.loads((FORM_DIR / f"page{page['page']}.json").read_text())
        assert measure_form.dump(page) == measure_form.dump(committed)


def _mutated(page: int, change) -> dict:
    data = json.loads((FORM_DIR / f"page{page}.json").read_text())
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # a field or rule that is no JSON object (a stray string in the list): a TypeError traceback before
        (lambda d: d["fields"].__setitem__(0, "suara_sah"), r"fields\[0\]: expected a JSON object"),
        (lambda d: d["rules"].__setitem__(0, 5), r"rules\[0\]: expected a JSON object"),
        # mistyped values were coerced: "false" made the field required, 1.5 became 1, "300" became 300
        (lambda d: d["fields"][0].__setitem__("required", "false"), "'required' must be bool"),
        (lambda d: d["fields"][0].__setitem__("min", 1.5), "'min' must be int"),
        (lambda d: d["fields"][0].__setitem__("max", "300"), "'max' must be int"),
        (lambda d: d["fields"][0].__setitem__("min", None), "'min' must be int"),
        (lambda d: d["fields"][0].__setitem__("label", ["V.A"]), "'label' must be str"),
        # numbers that are no coordinates (NaN passed every bound check, true counted as 1)
        (lambda d: d["fields"][0]["boxes_mm"].__setitem__(0, [float("nan"), 10, 18, 18]), "4 numbers"),
        (lambda d: d["fields"][0]["boxes_mm"].__setitem__(0, [True, 10, 18, 18]), "list of 4 numbers"),
        (lambda d: d.__setitem__("size_mm", [float("nan"), 900]), "list of 2 numbers"),
        (lambda d: d.__setitem__("size_mm", [0, 900]), "size_mm"),
        (lambda d: d["markers"].__setitem__("square_mm", "7.2"), "square_mm"),
        (lambda d: d["markers"].__setitem__("square_mm", -7.2), "square_mm"),
        (lambda d: d["fields"][0].__setitem__("bubbles_mm", [5] * len(d["fields"][0]["boxes_mm"])),
         r"bubbles_mm\[0\]"),
        # rule terms that are no field names (a list in the list crashed the name check), or none at all
        (lambda d: d["rules"][0].__setitem__("terms", [["suara_sah"]]), "'terms' must be a list of field"),
        (lambda d: d["rules"][0].__setitem__("terms", []), "'terms' must be a list of field"),
        (lambda d: d["rules"].append(dict(d["rules"][0])), "duplicate rule names"),
        (lambda d: d["rules"][2].__setitem__("unusual_odds", True), "'unusual_odds' must be a number"),
        # a box too small to write in: its crop (under 8 px) made the classifier raise in the middle of a read
        (lambda d: d["fields"][0]["boxes_mm"].__setitem__(0, [455, 166, 0.5, 18]), "at least 3.0 mm"),
        # a fact the kit does not know (only the provisioned DPT), or no name at all
        (lambda d: d["fields"][0].__setitem__("known", "pemilih"), "known 'pemilih' is not a fact"),
        (lambda d: d["fields"][0].__setitem__("known", True), "'known' must be str"),
        # the reader enumerates every value of a field: 10^7 of them took ~2 GB
        (lambda d: d["fields"][0].__setitem__("boxes_mm", [[10 + 20 * i, 10, 18, 18] for i in range(7)]),
         "at most 6 boxes"),
    ],
)
def test_mistyped_template_values_are_refused_with_where_and_what(change, message):
    with pytest.raises(TemplateError, match=message):
        parse_page(_mutated(3, change), where="page3.json")


def test_a_template_file_that_is_no_utf8_text_is_a_template_error(tmp_path):
    (tmp_path / "page1.json").write_bytes(b'{"schema": 1, "title": "halaman \xff"}')  # Latin-1, not UTF-8
    with pytest.raises(TemplateError, match="not UTF-8"):
        load_page(tmp_path / "page1.json")
    with pytest.raises(TemplateError, match="cannot be read"):
        load_page(tmp_path)  # a folder


def test_a_loaded_form_is_read_only_and_a_second_load_is_unaffected():
    """``load_form`` is cached: a caller that changed the Form it got (its pages, a page's fields by name)
    changed it for every later caller; the dicts are read-only views now and read the same as before."""
    import copy
    import pickle

    form = load_form()
    page = form.pages[3]
    with pytest.raises(TypeError):
        form.pages[9] = page
    with pytest.raises(TypeError):
        del form.pages[3]
    with pytest.raises(TypeError):
        page.by_name["total_suara"] = page.by_name["suara_sah"]
    with pytest.raises(AttributeError):  # a read-only view has no pop/update/clear
        page.by_name.pop("total_suara")
    again = load_form()
    assert sorted(again.pages) == [1, 2, 3]
    assert again.pages[3].by_name["total_suara"].name == "total_suara"
    assert dict(again.pages) == {n: again.pages[n] for n in (1, 2, 3)}  # read as before: a mapping
    assert [f.name for f in page.fields] == list(page.by_name)
    # a Form built from a caller's dict does not follow later changes to that dict
    pages = {3: page}
    built = type(form)(form_id=form.form_id, pages=pages)
    pages[1] = form.pages[1]
    assert list(built.pages) == [3]
    # copies still work (pickle, deepcopy) and compare equal
    assert pickle.loads(pickle.dumps(form)) == form
    assert copy.deepcopy(page) == page and copy.deepcopy(page).by_name["tahun"] == page.by_name["tahun"]
