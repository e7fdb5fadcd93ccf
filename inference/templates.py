"""Form templates as data: one JSON file per page under ``inference/forms/<FORM>/page<N>.json``.

A page template gives the page size in mm, the four corner-marker points, the page code (tag family, id and
corner positions), every field's writing boxes (and OMR bubbles) in mm, and the printed rules. New forms
(DPR, DPD, DPRD, Pilkada) are added by adding files; see ``inference/forms/README.md`` for the schema.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

__all__ = [
    "FORMS_DIR",
    "DEFAULT_FORM",
    "TemplateError",
    "Box",
    "Bubble",
    "Field",
    "Rule",
    "PageTemplate",
    "Form",
    "load_form",
    "load_page",
    "find_page_by_tag",
    "available_forms",
]

FORMS_DIR = Path(__file__).resolve().parent / "forms"
DEFAULT_FORM = "C.HASIL-PPWP-2024"
TAG_FAMILIES = ("apriltag_36h10", "apriltag_36h11", "aruco_4x4_50")
RULE_KINDS = ("sum", "le", "date")
# The reader weighs every value a field can hold (10^boxes of them): 10^6 take ~200 MB, 10^7 ~2 GB.
MAX_BOXES = 6
MIN_BOX_MM = 3.0  # a writing box smaller than this is no box to write a digit in (nor a crop to classify)
# What a kit knows of its TPS before the count (from provisioning), and the field a form prints it in
# (``"known"``): the reader compares what it reads there with it.
KNOWN_FACTS = {"dpt": "DPT terdaftar (registered voters, from provisioning)"}


class TemplateError(ValueError):
    """A template file is missing or malformed; the message names the file, the key and what is expected."""


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)


@dataclass(frozen=True)
class Bubble:
    cx: float
    cy: float
    r: float


@dataclass(frozen=True)
class Field:
    """A number written in boxes (left = most significant), optionally mirrored by bubble columns."""

    name: str
    label: str
    boxes: tuple[Box, ...]
    min: int = 0
    max: int = 999
    required: bool = True
    bubbles: tuple[tuple[Bubble, ...], ...] = ()  # one column per box, digits 0..9 top to bottom
    kind: str = "number"
    known: str | None = None  # a fact of KNOWN_FACTS the kit knows before the count, written in this field


@dataclass(frozen=True)
class Rule:
    """``sum``: sum(terms) == total; ``le``: left <= right; ``date``: the numbers ``day``, ``month``,
    ``year`` form a calendar date within ``start``..``end`` (ISO dates, e.g. the count of one election);
    ``usual`` dates (e.g. polling day and the day after) are the expected ones: a reading of another date in
    the span weighs ``unusual_odds`` against them (a prior, never a reason to override clear boxes).

    ``when="any_filled"``: checked only when some term is written (empty terms count as 0)."""

    name: str
    kind: str
    label: str = ""
    terms: tuple[str, ...] = ()
    total: str = ""
    left: str = ""
    right: str = ""
    when: str = "always"
    day: str = ""
    month: str = ""
    year: str = ""
    start: str = ""
    end: str = ""
    usual: tuple[str, ...] = ()
    unusual_odds: float = 1.0

    @property
    def fields(self) -> tuple[str, ...]:
        if self.kind == "sum":
            return (*self.terms, self.total)
        if self.kind == "date":
            return (self.day, self.month, self.year)
        return (self.left, self.right)


@dataclass(frozen=True)
class PageTemplate:
    form: str
    page: int
    title: str
    size_mm: tuple[float, float]
    marker_points: tuple[tuple[float, float], ...]  # TL, TR, BR, BL (page upright)
    marker_square_mm: float
    tag_family: str
    tag_id: int
    tag_corners: tuple[tuple[float, float], ...]  # TL, TR, BR, BL of the tag's black square
    fields: tuple[Field, ...]
    rules: tuple[Rule, ...]
    frames: tuple[Box, ...] = ()
    source: Path | None = field(default=None, compare=False, repr=False)  # the file read (None: a dict)
    by_name: Mapping[str, Field] = field(init=False, compare=False, repr=False)  # read-only

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", MappingProxyType({f.name: f for f in self.fields}))

    def __reduce__(self):  # copy and pickle by the constructor's arguments (a read-only view pickles not)
        return (type(self), tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.init))

    @property
    def forms_dir(self) -> Path:
        """The forms folder the page was loaded from (its form's other files, e.g. ``look.json``, are there);
        ``FORMS_DIR`` for a page built from a dict."""
        return self.source.parent.parent if self.source is not None else FORMS_DIR

    @property
    def n_boxes(self) -> int:
        return sum(len(f.boxes) for f in self.fields)


@dataclass(frozen=True)
class Form:
    """A form's pages by number. ``load_form`` hands the same Form to every caller: ``pages`` is a read-only
    copy of the dict it is built from (the pages' ``by_name`` are read-only too): no caller changes it for
    others."""

    form_id: str
    pages: Mapping[int, PageTemplate]

    def __post_init__(self) -> None:
        object.__setattr__(self, "pages", MappingProxyType(dict(self.pages)))

    def __reduce__(self):  # copy and pickle by the constructor's arguments (a read-only view pickles not)
        return (type(self), (self.form_id, dict(self.pages)))

    def page_for_tag(self, tag_id: int) -> PageTemplate | None:
        for p in self.pages.values():
            if p.tag_id == tag_id:
                return p
        return None


def _object(d, where: str) -> dict:
    if not isinstance(d, dict):
        raise TemplateError(f"{where}: expected a JSON object, got {d!r}")
    return d


def _need(d: dict, key: str, typ, where: str, *, default=None):
    """``d[key]`` of type ``typ`` (an int is a float); ``default`` when given and the key is absent."""
    if key not in d:
        if default is not None:
            return default
        raise TemplateError(f"{where}: missing key '{key}'")
    v = d[key]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
        raise TemplateError(f"{where}: '{key}' must be {getattr(typ, '__name__', typ)}, got {v!r}")
    return v


def _nums(v, n: int, where: str) -> tuple[float, ...]:
    if not isinstance(v, list) or len(v) != n or not all(
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in v
    ):
        raise TemplateError(f"{where}: expected a list of {n} numbers, got {v!r}")
    return tuple(float(x) for x in v)


def _box(v, where: str, size: tuple[float, float]) -> Box:
    x, y, w, h = _nums(v, 4, where)
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > size[0] or y + h > size[1]:
        raise TemplateError(f"{where}: box {v} is empty or outside the {size[0]}x{size[1]} mm page")
    return Box(x, y, w, h)


def _column(v, where: str) -> list:
    if not isinstance(v, list):
        raise TemplateError(f"{where}: expected a list of bubbles [cx, cy, r], got {v!r}")
    return v


def _field(d: dict, where: str, size: tuple[float, float]) -> Field:
    name = _need(_object(d, where), "name", str, where)
    where = f"{where} ('{name}')"
    kind = d.get("kind", "number")
    if kind != "number":
        raise TemplateError(f"{where}: kind must be 'number', got {kind!r}")
    boxes = tuple(
        _box(b, f"{where}.boxes_mm[{i}]", size) for i, b in enumerate(_need(d, "boxes_mm", list, where))
    )
    if not boxes:
        raise TemplateError(f"{where}: needs at least one box")
    small = [i for i, b in enumerate(boxes) if min(b.w, b.h) < MIN_BOX_MM]
    if small:
        raise TemplateError(f"{where}.boxes_mm[{small[0]}]: a writing box is at least {MIN_BOX_MM} mm "
                            "each way")
    if len(boxes) > MAX_BOXES:
        raise TemplateError(f"{where}: {len(boxes)} boxes; a number has at most {MAX_BOXES} boxes")
    bubbles = ()
    if "bubbles_mm" in d:
        cols = _need(d, "bubbles_mm", list, where)
        if len(cols) != len(boxes):
            raise TemplateError(
                f"{where}: bubbles_mm needs one column per box ({len(boxes)}), got {len(cols)}"
            )
        bubbles = tuple(
            tuple(Bubble(*_nums(b, 3, at)) for b in _column(col, at))
            for i, col in enumerate(cols)
            for at in [f"{where}.bubbles_mm[{i}]"]
        )
        if any(len(c) != 10 for c in bubbles):
            raise TemplateError(f"{where}: each bubble column needs 10 bubbles (digits 0..9)")
        if any(b.r <= 0 for c in bubbles for b in c):
            raise TemplateError(f"{where}: a bubble's radius must be positive")
    known = _need(d, "known", str, where) if "known" in d else None
    if known is not None and known not in KNOWN_FACTS:
        raise TemplateError(f"{where}: known {known!r} is not a fact a kit knows; one of: "
                            f"{', '.join(KNOWN_FACTS)}")
    lo, hi = _need(d, "min", int, where, default=0), _need(d, "max", int, where, default=10 ** len(boxes) - 1)
    if not 0 <= lo <= hi < 10 ** len(boxes):
        raise TemplateError(f"{where}: min/max {lo}/{hi} do not fit {len(boxes)} boxes")
    return Field(
        name=name,
        label=_need(d, "label", str, where, default=name),
        boxes=boxes,
        min=lo,
        max=hi,
        required=_need(d, "required", bool, where, default=True),
        bubbles=bubbles,
        known=known,
    )


def _rule(d: dict, where: str, names: set[str]) -> Rule:
    name = _need(_object(d, where), "name", str, where)
    where = f"{where} ('{name}')"
    kind = _need(d, "kind", str, where)
    if kind not in RULE_KINDS:
        raise TemplateError(f"{where}: kind must be one of {RULE_KINDS}, got {kind!r}")
    when = d.get("when", "always")
    if when not in ("always", "any_filled"):
        raise TemplateError(f"{where}: when must be 'always' or 'any_filled', got {when!r}")
    if when != "always" and kind != "sum":  # rules.holds applies it to row sums only
        raise TemplateError(f"{where}: when='any_filled' is for 'sum' rules only, not {kind!r}")
    if kind == "sum":
        terms = _need(d, "terms", list, where)
        if not terms or not all(isinstance(t, str) for t in terms):
            raise TemplateError(f"{where}: 'terms' must be a list of field names, got {terms!r}")
        rule = Rule(
            name=name,
            kind=kind,
            label=_need(d, "label", str, where, default=name),
            terms=tuple(terms),
            total=_need(d, "total", str, where),
            when=when,
        )
    elif kind == "date":
        span = []
        for key in ("start", "end"):
            text = _need(d, key, str, where)
            try:
                span.append(datetime.date.fromisoformat(text))
            except ValueError:
                raise TemplateError(f"{where}: '{key}' must be an ISO date (YYYY-MM-DD), got {text!r}") \
                    from None
        if span[0] > span[1]:
            raise TemplateError(f"{where}: 'start' {span[0]} is after 'end' {span[1]}")
        usual = []
        if not isinstance(d.get("usual", []), list):
            raise TemplateError(f"{where}: 'usual' must be a list of ISO dates, got {d['usual']!r}")
        for text in d.get("usual", []):
            try:
                day = datetime.date.fromisoformat(str(text))
            except ValueError:
                raise TemplateError(f"{where}: 'usual' dates must be ISO dates, got {text!r}") from None
            if not span[0] <= day <= span[1]:
                raise TemplateError(f"{where}: usual date {day} is outside {span[0]}..{span[1]}")
            usual.append(day.isoformat())
        odds = d.get("unusual_odds", 1.0)
        if not isinstance(odds, int | float) or isinstance(odds, bool) or not 0 < odds <= 1:
            raise TemplateError(f"{where}: 'unusual_odds' must be a number in (0, 1], got {odds!r}")
        rule = Rule(
            name=name,
            kind=kind,
            label=_need(d, "label", str, where, default=name),
            day=_need(d, "day", str, where),
            month=_need(d, "month", str, where),
            year=_need(d, "year", str, where),
            start=span[0].isoformat(),
            end=span[1].isoformat(),
            usual=tuple(usual),
            unusual_odds=float(odds),
        )
    else:
        rule = Rule(
            name=name,
            kind=kind,
            label=_need(d, "label", str, where, default=name),
            left=_need(d, "left", str, where),
            right=_need(d, "right", str, where),
            when=when,
        )
    unknown = [f for f in rule.fields if f not in names]
    if unknown:
        raise TemplateError(f"{where}: refers to unknown field(s) {unknown}")
    return rule


def parse_page(data: dict, where: str = "template") -> PageTemplate:
    """Validate one page template (a dict as read from JSON)."""
    if not isinstance(data, dict):
        raise TemplateError(f"{where}: expected a JSON object")
    if data.get("schema") != 1:
        raise TemplateError(f"{where}: 'schema' must be 1, got {data.get('schema')!r}")
    size = _nums(_need(data, "size_mm", list, where), 2, f"{where}.size_mm")
    if min(size) <= 0:
        raise TemplateError(f"{where}.size_mm: width and height must be positive, got {list(size)}")
    markers = _need(data, "markers", dict, where)
    if markers.get("kind") != "double_square":
        raise TemplateError(f"{where}.markers: kind must be 'double_square'")
    pts = _need(markers, "points_mm", list, f"{where}.markers")
    if len(pts) != 4:
        raise TemplateError(f"{where}.markers.points_mm: need 4 points (TL, TR, BR, BL)")
    square = _need(markers, "square_mm", float, f"{where}.markers", default=7.2)
    if square <= 0 or not math.isfinite(square):
        raise TemplateError(f"{where}.markers: 'square_mm' must be a positive number, got {square!r}")
    tag = _need(data, "tag", dict, where)
    family = _need(tag, "family", str, f"{where}.tag")
    if family not in TAG_FAMILIES:
        raise TemplateError(f"{where}.tag.family: must be one of {TAG_FAMILIES}, got {family!r}")
    corners = _need(tag, "corners_mm", list, f"{where}.tag")
    if len(corners) != 4:
        raise TemplateError(f"{where}.tag.corners_mm: need 4 points (TL, TR, BR, BL)")
    fields = tuple(
        _field(f, f"{where}.fields[{i}]", size) for i, f in enumerate(_need(data, "fields", list, where))
    )
    names = [f.name for f in fields]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise TemplateError(f"{where}: duplicate field names {sorted(dup)}")
    rules = tuple(_rule(r, f"{where}.rules[{i}]", set(names)) for i, r in enumerate(data.get("rules", [])))
    rule_names = [r.name for r in rules]
    dup = {n for n in rule_names if rule_names.count(n) > 1}
    if dup:  # the checks are reported by rule name
        raise TemplateError(f"{where}: duplicate rule names {sorted(dup)}")
    return PageTemplate(
        form=_need(data, "form", str, where),
        page=_need(data, "page", int, where),
        title=str(data.get("title", "")),
        size_mm=(size[0], size[1]),
        marker_points=tuple(_nums(p, 2, f"{where}.markers.points_mm") for p in pts),  # type: ignore[misc]
        marker_square_mm=square,
        tag_family=family,
        tag_id=_need(tag, "id", int, f"{where}.tag"),
        tag_corners=tuple(_nums(p, 2, f"{where}.tag.corners_mm") for p in corners),  # type: ignore[misc]
        fields=fields,
        rules=rules,
        frames=tuple(_box(b, f"{where}.frames_mm", size) for b in data.get("frames_mm", [])),
    )


def load_page(path: Path | str) -> PageTemplate:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TemplateError(f"template {path} not found") from None
    except json.JSONDecodeError as exc:
        raise TemplateError(f"template {path} is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise TemplateError(f"template {path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise TemplateError(f"template {path} cannot be read: {exc.strerror or exc}") from None
    return dataclasses.replace(parse_page(data, where=str(path)), source=path.resolve())


def available_forms(forms_dir: Path = FORMS_DIR) -> list[str]:
    return sorted(p.name for p in forms_dir.iterdir() if p.is_dir() and any(p.glob("page*.json")))


@lru_cache(maxsize=16)
def load_form(form_id: str = DEFAULT_FORM, forms_dir: Path = FORMS_DIR) -> Form:
    """All page templates of a form; TemplateError if the form is unknown or a page is malformed."""
    folder = Path(forms_dir) / form_id
    files = sorted(folder.glob("page*.json"))
    if not files:
        raise TemplateError(
            f"unknown form {form_id!r}: no templates in {folder} "
            f"(known: {', '.join(available_forms(Path(forms_dir))) or 'none'})"
        )
    pages: dict[int, PageTemplate] = {}
    for f in files:
        p = load_page(f)
        if p.form != form_id:
            raise TemplateError(f"{f}: 'form' is {p.form!r} but the folder is {form_id!r}")
        if p.page in pages:
            raise TemplateError(f"{f}: page {p.page} defined twice")
        pages[p.page] = p
    tags = [p.tag_id for p in pages.values()]
    if len(set(tags)) != len(tags):
        raise TemplateError(f"form {form_id}: pages share a tag id {tags}")
    return Form(form_id=form_id, pages=dict(sorted(pages.items())))


def find_page_by_tag(tag_id: int, forms_dir: Path = FORMS_DIR) -> PageTemplate | None:
    """The page template whose page code is ``tag_id``, across all known forms."""
    for form_id in available_forms(Path(forms_dir)):
        page = load_form(form_id, Path(forms_dir)).page_for_tag(tag_id)
        if page is not None:
            return page
    return None
