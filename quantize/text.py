"""Item text for the sentence encoder, built from whatever fields a dataset has.

A :class:`TextTemplate` is a list of segments such as ``"Title: {title}"``; a segment is kept only
when every field it names is present for the item, and kept segments are joined with
``separator``. So one template works for datasets with and without, say, a price.
"""

from __future__ import annotations

import html
import logging
import math
import re
import string
from dataclasses import dataclass, field
from typing import Any, Sequence

from genrec.data import TEXT_FIELDS, DataFormatError, ItemText, SequenceDataset

log = logging.getLogger(__name__)

__all__ = ["TextTemplate", "DEFAULT_TEMPLATE", "clean_text", "item_text", "item_texts", "render_fallback"]

_WS = re.compile(r"\s+")
_SURROGATE = re.compile("[\ud800-\udfff]")  # lone ones (JSON's "\\ud800"): no UTF-8 form to hash or tokenize
# HTML tags by name (item text is not HTML: "sizes <5mm and >2mm" or "I <3 it" must survive), with
# attributes; the names are those product descriptions carry
_TAG_NAMES = ("a|abbr|article|b|big|blockquote|body|br|button|caption|center|cite|code|col|dd|del|div|dl|dt|em|"
              "figure|font|footer|form|h[1-6]|head|header|hr|html|i|iframe|img|input|ins|label|li|link|meta|nav|"
              "noscript|ol|option|p|pre|q|s|script|section|select|small|span|strike|strong|style|sub|sup|table|"
              "tbody|td|tfoot|th|thead|title|tr|tt|u|ul")
# known tags, namespaced ones (Word's <o:p>) and comments
_TAG = re.compile(rf"</?(?:(?:{_TAG_NAMES})|[A-Za-z]+:[A-Za-z0-9]+)(?:\s[^<>]{{0,200}})?/?>|<!--.{{0,2000}}?-->",
                  re.IGNORECASE | re.DOTALL)


def clean_text(value: str, strip_tags: bool = True) -> str:
    """Unescape HTML entities (``&amp;`` -> ``&``, twice for double-escaped source text), optionally
    drop HTML tags (known tag names only: a ``<`` in plain text stays), and collapse whitespace."""
    s = _SURROGATE.sub("\ufffd", html.unescape(html.unescape(value)))
    if strip_tags:
        s = _TAG.sub(" ", s)
    return _WS.sub(" ", s).strip()


def _str_tuple(value: Any, name: str) -> tuple[str, ...]:
    """``value`` (a string, or an iterable of strings) as a tuple of strings; TypeError naming ``name``."""
    if isinstance(value, str):
        return (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise TypeError(f"TextTemplate {name} must be a string or a list of strings, got {value!r}") from None
    bad = [v for v in out if not isinstance(v, str)]
    if bad:
        raise TypeError(f"TextTemplate {name} must be strings, got {bad[0]!r}")
    return out


@dataclass(frozen=True)
class TextTemplate:
    """How an item's fields become one string.

    ``segments`` are ``str.format`` patterns over the fields ``title``, ``brand``, ``categories``
    (joined with ``category_separator``), ``description`` (cut to ``max_description_chars``),
    ``price`` (formatted as ``12.99``) and ``item_id``. A segment naming a missing field is dropped.
    ``skip_categories`` removes uninformative category names (e.g. the root ``"Beauty"``).
    """

    segments: tuple[str, ...] = ("Title: {title}", "Brand: {brand}", "Categories: {categories}",
                                 "Description: {description}", "Price: {price}")
    separator: str = "; "
    category_separator: str = ", "
    max_description_chars: int | None = 1000
    skip_categories: tuple[str, ...] = ()
    strip_tags: bool = True
    _fields: tuple[tuple[str, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        m = self.max_description_chars  # a negative one cut the end off every description
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 0):
            raise ValueError(f"max_description_chars must be an integer >= 0 or None, got {m!r}")
        # a single string is one entry, not its characters (skip_categories="Beauty" skipped "B", "e", ...)
        for name in ("segments", "skip_categories"):
            object.__setattr__(self, name, _str_tuple(getattr(self, name), name))
        if not self.segments:
            raise ValueError("TextTemplate needs at least one segment")
        allowed = set(TEXT_FIELDS) | {"item_id"}
        names = []
        for seg in self.segments:
            try:
                used = tuple(f for _, f, _, _ in string.Formatter().parse(seg) if f is not None)
            except ValueError as e:
                raise ValueError(f"bad template segment {seg!r}: {e}") from None
            bad = [f for f in used if f not in allowed]
            if bad or not used:
                raise ValueError(f"template segment {seg!r} must name one or more of {sorted(allowed)}"
                                 + (f", not {bad}" if bad else ""))
            try:  # every field renders as a string: a format spec such as {price:.2f} fails here, not mid-run
                seg.format(**{f: "x" for f in used})
            except (ValueError, IndexError, KeyError) as e:
                raise ValueError(f"bad template segment {seg!r}: {e} (fields are strings: no format spec)") from None
            names.append(used)
        object.__setattr__(self, "_fields", tuple(names))

    @property
    def field_names(self) -> list[str]:
        """The item fields the template's segments name, sorted."""
        return sorted({f for names in self._fields for f in names})

    @classmethod
    def from_fields(cls, fields: Sequence[str], **kwargs: Any) -> "TextTemplate":
        """A template with the default labelled segment for each field, in the given order."""
        labels = {"title": "Title", "brand": "Brand", "categories": "Categories",
                  "description": "Description", "price": "Price", "item_id": "Item"}
        bad = [f for f in fields if f not in labels]
        if bad:
            raise ValueError(f"unknown text field(s) {bad}; choose from {list(labels)}")
        return cls(segments=tuple(f"{labels[f]}: {{{f}}}" for f in fields), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"segments": list(self.segments), "separator": self.separator,
                "category_separator": self.category_separator,
                "max_description_chars": self.max_description_chars,
                "skip_categories": list(self.skip_categories), "strip_tags": self.strip_tags}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextTemplate":
        return cls(**d)  # lists (JSON) and single strings become tuples as in the constructor

    def values(self, item: ItemText, item_id: str = "") -> dict[str, str]:
        """The cleaned, formatted field values present for ``item`` (missing fields are absent)."""
        out: dict[str, str] = {}
        for key in ("title", "brand", "description"):
            v = getattr(item, key)
            if v:
                v = clean_text(str(v), self.strip_tags)
                if key == "description" and self.max_description_chars is not None:
                    v = v[: self.max_description_chars].rstrip()
                if v:
                    out[key] = v
        skip = {clean_text(s, self.strip_tags) for s in self.skip_categories}  # compared as the names are
        cats = []
        for c in item.categories:
            c = clean_text(c, self.strip_tags)
            if c and c not in skip and c not in cats:
                cats.append(c)
        if cats:
            out["categories"] = self.category_separator.join(cats)
        if item.price is not None and math.isfinite(item.price):  # "Price: nan" told the encoder nothing
            out["price"] = f"{item.price:.2f}"
        if item_id:
            out["item_id"] = item_id
        return out

    def render(self, item: ItemText, item_id: str = "") -> str:
        """The item's text, or ``""`` when none of the template's fields is present."""
        vals = self.values(item, item_id)
        parts = [seg.format(**vals) for seg, names in zip(self.segments, self._fields)
                 if all(n in vals for n in names)]
        return self.separator.join(parts)


DEFAULT_TEMPLATE = TextTemplate()


def item_text(item: ItemText, template: TextTemplate = DEFAULT_TEMPLATE, item_id: str = "") -> str:
    """One item's text under ``template`` (``""`` if it has none)."""
    return template.render(item, item_id)


def item_texts(dataset: SequenceDataset, template: TextTemplate | None = None,
               fallback: str | None = None) -> list[str]:
    """Texts of all items of ``dataset`` in item-index order.

    An item with no text under the template is a :class:`~genrec.data.DataFormatError` listing the
    item ids, unless ``fallback`` is given: a format string over ``{item_id}`` (e.g.
    ``"Item {item_id}"``) used for those items instead.
    """
    template = template or DEFAULT_TEMPLATE
    texts = [template.render(it, iid) for it, iid in zip(dataset.items, dataset.item_ids)]
    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        ids = [dataset.item_ids[i] for i in empty]
        if fallback is None:
            shown = ", ".join(repr(x) for x in ids[:20]) + (" ..." if len(ids) > 20 else "")
            raise DataFormatError(
                f"{dataset.name}: {len(ids)} item(s) have no text under the template "
                f"(fields {template.field_names}): {shown}; "
                f"pass a fallback such as 'Item {{item_id}}' to embed them anyway")
        for i, iid in zip(empty, ids):
            texts[i] = render_fallback(fallback, iid)
        if not all(texts[i] for i in empty):
            raise ValueError(f"fallback {fallback!r} renders an empty text")
        # Fallback texts carry little meaning (and equal ones embed equally): say so, it is the caller's choice.
        log.warning("%s: %d item(s) without text use the fallback %r, e.g. %s",
                                            dataset.name, len(ids), fallback, ids[:5])
    return texts


def render_fallback(fallback: str, item_id: str) -> str:
    """``fallback`` (a format string over ``{item_id}`` alone: no attribute, index, conversion or
    format spec, which could render differently from run to run) for the item ``item_id``."""
    try:
        parts = list(string.Formatter().parse(fallback))
    except ValueError as e:
        raise ValueError(f"fallback {fallback!r} must be a format string over {{item_id}}: {e}") from None
    if any(name is not None and (name != "item_id" or spec or conv) for _, name, spec, conv in parts):
        raise ValueError(f"fallback {fallback!r} must be a format string over {{item_id}} alone (no other "
                         f"field, attribute, conversion or format spec)")
    return fallback.format(item_id=item_id)
