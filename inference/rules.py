"""Rule evaluation over field values (pure).

Page rules come from the page templates (``Rule``: ``sum`` = sum of terms equals total,
``le`` = left <= right, ``date`` = a calendar date within a span);
cross-page rules of a TPS come from ``inference/forms/<FORM>/tps.json`` with fields named ``p<page>.<field>``
(a ``le`` rule's right side may be a list, meaning their sum).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from inference.templates import FORMS_DIR, Rule, TemplateError, load_form

__all__ = ["holds", "holds_values", "prior_values", "check", "TpsRule", "load_tps_rules", "check_values"]

Values = Mapping[str, int | None]


def holds(rule: Rule, values: Values) -> bool | None:
    """True/False if the rule holds; None if it cannot be checked (a field is not read).

    ``when="any_filled"`` (row sums): checked only if some term is written; empty terms then count as 0."""
    return holds_values(rule, [values.get(f) for f in rule.fields])


def holds_values(rule: Rule, got: list[int | None]) -> bool | None:
    """``holds`` with the values given in the order of ``rule.fields`` (fast path for the reader)."""
    if rule.when == "any_filled" and rule.kind == "sum":
        terms = got[:-1]
        if all(v is None for v in terms):
            return True
        if got[-1] is None:
            return None
        return sum(v or 0 for v in terms) == got[-1]
    if any(v is None for v in got):
        return None
    if rule.kind == "sum":
        return sum(got[:-1]) == got[-1]
    if rule.kind == "date":
        return _date_within(got[0], got[1], got[2], rule.start, rule.end)
    return got[0] <= got[1]


def prior_values(rule: Rule, got: list[int | None]) -> float:
    """Prior weight of a reading that satisfies ``rule``: ``unusual_odds`` for a date rule's reading that is
    not one of its ``usual`` dates, else 1."""
    if rule.kind != "date" or not rule.usual or any(v is None for v in got):
        return 1.0
    return 1.0 if _iso(got[0], got[1], got[2]) in rule.usual else rule.unusual_odds


def _iso(day: int, month: int, year: int) -> str:
    return f"{year:04d}-{month:02d}-{day:02d}"


@lru_cache(maxsize=4096)
def _date_within(day: int, month: int, year: int, start: str, end: str) -> bool:
    try:
        d = datetime.date(year, month, day)
    except ValueError:  # no such date (31 February, month 13, ...)
        return False
    return datetime.date.fromisoformat(start) <= d <= datetime.date.fromisoformat(end)


def check(rules: tuple[Rule, ...] | list[Rule], values: Values) -> list[dict]:
    """``[{"rule", "ok", "label"}]`` for every rule; ``ok`` is None when a needed number is not read."""
    return [{"rule": r.name, "ok": holds(r, values), "label": r.label} for r in rules]


@dataclass(frozen=True)
class TpsRule:
    name: str
    kind: str
    label: str
    left: tuple[str, ...]  # summed
    right: tuple[str, ...]  # summed

    def holds(self, values: Values) -> bool | None:
        a = [values.get(f) for f in self.left]
        b = [values.get(f) for f in self.right]
        if any(v is None for v in a + b):
            return None
        return sum(a) == sum(b) if self.kind == "sum" else sum(a) <= sum(b)


@lru_cache(maxsize=8)
def load_tps_rules(form_id: str, forms_dir: Path = FORMS_DIR) -> tuple[TpsRule, ...]:
    path = Path(forms_dir) / form_id / "tps.json"
    if not path.is_file():
        return ()
    form = load_form(form_id, Path(forms_dir))
    known = {f"p{n}.{f.name}" for n, page in form.pages.items() for f in page.fields}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        out = []
        for r in data["rules"]:
            if r["kind"] == "sum":
                left, right = r["terms"], [r["total"]]
            elif r["kind"] == "le":
                left = [r["left"]] if isinstance(r["left"], str) else r["left"]
                right = [r["right"]] if isinstance(r["right"], str) else r["right"]
            else:
                raise TemplateError(f"{path}: rule {r.get('name')!r}: kind must be 'sum' or 'le'")
            if not left or not right or not all(isinstance(f, str) for f in (*left, *right)):
                raise TemplateError(f"{path}: rule {r.get('name')!r} needs at least one field on each side, "
                                    f"given as field names p<page>.<field> (got {left!r}, {right!r})")
            if not isinstance(r.get("label", ""), str) or not isinstance(r["name"], str):
                raise TemplateError(f"{path}: rule {r.get('name')!r}: name and label must be text")
            unknown = [f for f in (*left, *right) if f not in known]
            if unknown:
                raise TemplateError(f"{path}: rule {r.get('name')!r} refers to unknown field(s) {unknown} "
                                    "(write p<page>.<field> of a page of the form)")
            out.append(
                TpsRule(
                    name=r["name"],
                    kind=r["kind"],
                    label=r.get("label", r["name"]),
                    left=tuple(left),
                    right=tuple(right),
                )
            )
        return tuple(out)
    except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: malformed cross-page rules ({exc})") from None
    except OSError as exc:
        raise TemplateError(f"{path} cannot be read: {exc.strerror or exc}") from None


def check_values(rules: tuple[TpsRule, ...], values: Values) -> list[dict]:
    return [{"rule": r.name, "ok": r.holds(values), "label": r.label} for r in rules]
