"""The reader's look data (which boxes are printed in grey, how wide their borders are) belongs to the form
as loaded: two forms folders with a form of the same id but other look data do not share it."""

import json
import shutil

from inference import reader as reader_mod
from inference.render import GREY, INK, page_style
from inference.templates import DEFAULT_FORM, FORMS_DIR, load_form


def _folder(tmp_path, name: str, page1: dict | None = None):
    """A forms folder holding a copy of the default form, its page 1 look data replaced by ``page1``."""
    root = tmp_path / name
    shutil.copytree(FORMS_DIR / DEFAULT_FORM, root / DEFAULT_FORM)
    if page1 is not None:
        look_path = root / DEFAULT_FORM / "look.json"
        look = json.loads(look_path.read_text(encoding="utf-8"))
        look["pages"]["1"] = page1
        look_path.write_text(json.dumps(look), encoding="utf-8")
    return root


def test_two_forms_folders_with_the_same_form_id_keep_their_own_look_data(tmp_path):
    plain = load_form(DEFAULT_FORM, _folder(tmp_path, "a"))
    grey = load_form(DEFAULT_FORM, _folder(tmp_path, "b", {"guide": "none", "border": "grey",
                                                            "border_mm": 0.53}))
    names = frozenset(f.name for f in grey.pages[1].fields)
    # the page is read with the look data of the folder it was loaded from
    assert set(page_style(grey.pages[1]).boxes) == names
    assert {b.border for b in page_style(grey.pages[1]).boxes.values()} == {GREY}
    assert {b.border for b in page_style(plain.pages[1]).boxes.values()} == {INK}
    # worked out once per loaded page, not once per (form id, page): the second folder's is its own
    assert reader_mod._grey_bordered_fields(plain.pages[1]) == frozenset()
    assert reader_mod._grey_bordered_fields(grey.pages[1]) == names
    assert reader_mod._grey_bordered_fields(plain.pages[1]) == frozenset()
    assert set(reader_mod._border_mm(plain.pages[1]).values()) == {1.06}
    assert set(reader_mod._border_mm(grey.pages[1]).values()) == {0.53}
    assert set(reader_mod._border_mm(plain.pages[1]).values()) == {1.06}
    # the shipped form is not touched by either
    assert reader_mod._grey_bordered_fields(load_form().pages[1]) == frozenset()
    assert set(reader_mod._border_mm(load_form().pages[1]).values()) == {1.06}


def test_a_reader_of_a_form_from_another_folder_checks_that_folders_look_data(tmp_path):
    """Bad look data of a form loaded from another folder fails when the reader starts (not the shipped
    folder's look data, checked in its place)."""
    import pytest

    from inference.templates import TemplateError

    bad = load_form(DEFAULT_FORM, _folder(tmp_path, "c", {"border": "purple"}))
    with pytest.raises(TemplateError, match="border must be one of"):
        reader_mod.PageReader(classifier=object(), form=bad)
