"""A second form next to the shipped one, for tests of what depends on the form pages are of."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

OTHER = "C.HASIL-UJI-2024"  # a second form (a copy of the shipped one under other page codes)


def install_second_form(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A forms folder ``root`` with the shipped form and ``OTHER``, used wherever the reader, the rules and
    the generator load forms by id; returns ``root``."""
    from inference import reader, register, rules, synth, templates

    shutil.copytree(templates.FORMS_DIR / templates.DEFAULT_FORM, root / templates.DEFAULT_FORM)
    shutil.copytree(templates.FORMS_DIR / templates.DEFAULT_FORM, root / OTHER)
    for f in (root / OTHER).glob("*.json"):
        data = json.loads(f.read_text(encoding="utf-8"))
        data["form"] = OTHER
        if "tag" in data:
            data["tag"]["id"] += 10
        f.write_text(json.dumps(data), encoding="utf-8")

    load, known = templates.load_form, templates.available_forms

    def load_form(form_id=templates.DEFAULT_FORM, forms_dir=root):
        return load(form_id, forms_dir)

    def available_forms(forms_dir=root):
        return known(forms_dir)

    tps_rules = rules.load_tps_rules
    for mod in (reader, register, rules, synth):
        monkeypatch.setattr(mod, "load_form", load_form)
    for mod in (register, templates):
        monkeypatch.setattr(mod, "available_forms", available_forms)
    monkeypatch.setattr(rules, "load_tps_rules",
                        lambda form_id, forms_dir=root: tps_rules(form_id, forms_dir))
    return root
