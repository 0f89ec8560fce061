"""One item's fields and one timestamp as every loader reads them: :class:`ItemText` from a record,
the price policy (an absent price is None; a price that is not one finite non-negative number (NaN,
inf, a range such as ``"$5.99 - $12.99"``, text) is None too, and the loader logs one warning with
the count and the first item ids), and timestamps kept exact (integers as ``int``, decimals as finite
``float``) on the way in and out."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from genrec.errors import DataFormatError
from genrec.text_files import is_unicode

log = logging.getLogger(__name__)

TEXT_FIELDS = ("title", "brand", "categories", "description", "price")


@dataclass(frozen=True)
class ItemText:
    """Text fields of one item; any may be missing (None / empty)."""

    title: str | None = None
    brand: str | None = None
    categories: tuple[str, ...] = ()
    description: str | None = None
    price: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def is_empty(self) -> bool:
        return not (self.title or self.brand or self.categories or self.description or self.price is not None)


def item_text_from_record(record: dict[str, Any], where: str,
                          bad_prices: list[tuple[str, Any]] | None = None, item_id: str = "") -> ItemText:
    """Parse text fields of one item record (from JSON); ``where`` names file and line for errors.

    A present but unreadable price becomes None and, when ``bad_prices`` is given, is appended to it
    as ``(item_id, raw value)`` so that the loader can warn once (see :func:`warn_bad_prices`).
    """

    def raw(v: Any, key: str) -> str | None:
        """One text value as given: a string or number; None and NaN (pandas' missing value) are absent."""
        if v is None or (isinstance(v, float) and not math.isfinite(v)):  # NaN became the word "nan"
            return None
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):  # True / a dict became their repr
            raise DataFormatError(f"{where}: field {key!r} must be text, got {type(v).__name__}")
        if not is_unicode(str(v)):
            raise DataFormatError(f"{where}: field {key!r} is not valid Unicode (a lone surrogate such as \\ud800)")
        return str(v)

    def scalar(v: Any, key: str) -> str | None:
        return (raw(v, key) or "").strip() or None

    def text(key: str) -> str | None:
        v = record.get(key)
        if isinstance(v, list):  # e.g. Amazon 2023 description is a list of paragraphs
            return " ".join(x for x in (raw(p, key) for p in v) if x is not None).strip() or None
        return scalar(v, key)

    cats = record.get("categories")
    if cats is None:
        categories: tuple[str, ...] = ()
    elif isinstance(cats, str):
        # a single string may hold several categories separated by "|"
        categories = tuple(c.strip() for c in (scalar(cats, "categories") or "").split("|") if c.strip())
    elif isinstance(cats, list):
        flat: list[str] = []
        for c in cats:  # accept nested category paths too (one level: a path is a list of names)
            for x in (c if isinstance(c, list) else [c]):
                x = scalar(x, "categories")  # a null in the list: no category (it became the word "None")
                if x and x not in flat:
                    flat.append(x)
        categories = tuple(flat)
    else:
        raise DataFormatError(f"{where}: field 'categories' must be a list or string, got {type(cats).__name__}")

    raw_price = record.get("price")
    price = parse_price(raw_price)
    if price is None and bad_prices is not None and not price_is_absent(raw_price):
        bad_prices.append((item_id or where, raw_price))
    extra = {k: v for k, v in record.items() if k not in TEXT_FIELDS and k != "item_id"}
    return ItemText(title=text("title"), brand=text("brand"), categories=categories,
                    description=text("description"), price=price, extra=extra)


_PRICE = re.compile(r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]*)?|\.[0-9]+", re.ASCII)


def price_is_absent(value: Any) -> bool:
    """True for a price that is simply not given: None, ``""`` (or blank) and ``"None"`` (Amazon 2023)."""
    return value is None or (isinstance(value, str) and value.strip() in ("", "None"))


def parse_price(value: Any) -> float | None:
    """One finite non-negative price as float, from a number or a string like ``"$1,234.50"``.

    Anything else (absent, NaN, inf, negative, a range such as ``"$5.99 - $12.99"``, other text,
    lists, ...) gives None; loaders count the present-but-unreadable ones and warn once.
    """
    if price_is_absent(value) or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):  # Decimal: a Parquet decimal column (money)
        try:
            p = float(value)
        except OverflowError:  # an integer too large for a float
            return None
    elif isinstance(value, str):
        s = value.strip().removeprefix("$").strip()
        # commas only as thousands separators: "12,50" (a decimal comma) is not 1250
        if not _PRICE.fullmatch(s):
            return None
        p = float(s.replace(",", ""))
    else:
        return None
    return p if math.isfinite(p) and p >= 0 else None


def _short_repr(value: Any, limit: int = 40) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[:limit - 3] + "..."


def warn_bad_prices(source: str, bad_prices: list[tuple[str, Any]]) -> None:
    """Log one warning for the prices that :func:`item_text_from_record` could not read."""
    if bad_prices:
        examples = ", ".join(f"{iid} ({_short_repr(raw)})" for iid, raw in bad_prices[:3])
        log.warning("%s: %d item(s) have a price that is not one finite non-negative number; price left "
                    "missing (e.g. %s)", source, len(bad_prices), examples)


def parse_timestamp(value: Any, where: str, field: str = "timestamp") -> int | float:
    """A timestamp from a number or numeric string: an ``int`` (exact) when written as an integer,
    else a finite ``float``. Errors name ``where`` and ``field``."""
    if isinstance(value, np.integer | np.floating):  # e.g. from a Hugging Face / pandas column
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataFormatError(f"{where}: {field} {value!r} is not a number")
    t: int | float = value
    if isinstance(value, str):
        s = value.strip()
        if "_" in s or not s.isascii():  # Python's int() / float() read "1_000" and "١٢" (any script's
            # digits); no data format writes one, Arrow refuses them
            raise DataFormatError(f"{where}: {field} {value!r} is not a number")
        try:
            t = int(s)
        except ValueError:
            try:
                t = float(s)
            except ValueError:
                raise DataFormatError(f"{where}: {field} {value!r} is not a number") from None
    if isinstance(t, int):
        if not -(2 ** 63) <= t < 2 ** 63:
            raise DataFormatError(f"{where}: {field} {value!r} is outside the 64-bit integer range")
    elif not math.isfinite(t):
        raise DataFormatError(f"{where}: {field} {value!r} is not finite")
    return t


def format_timestamp(t: Any) -> str:
    """Timestamp as written by :func:`write_plain`: integers exactly (int64 ns stay intact), integral
    floats up to 2**53 without ``.0``, other floats in their shortest round-trip form (a larger integral
    float written as an integer would read back as one too large to mix with the file's decimals)."""
    if isinstance(t, (int, np.integer)):
        return str(int(t))
    t = float(t)
    return str(int(t)) if t.is_integer() and abs(t) <= 2 ** 53 else repr(t)
