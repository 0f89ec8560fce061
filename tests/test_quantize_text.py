"""Item text templates: field selection, HTML unescaping, empty items and the explicit fallback."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.data import DataFormatError, ItemText, SequenceDataset
from quantize.text import TextTemplate, clean_text, item_text, item_texts


def make_dataset(items: list[ItemText], ids: list[str] | None = None) -> SequenceDataset:
    ids = ids or [f"i{k}" for k in range(len(items))]
    return SequenceDataset(name="toy", item_ids=ids, user_ids=["u0"],
                           sequences=[np.arange(len(items), dtype=np.int64)], items=items)


def test_default_template_uses_present_fields_in_order():
    it = ItemText(title="Lip Balm", brand="Burt's Bees", categories=("Beauty", "Lips"), price=3.5)
    assert item_text(it) == "Title: Lip Balm; Brand: Burt's Bees; Categories: Beauty, Lips; Price: 3.50"
    # missing fields drop their whole segment
    assert item_text(ItemText(title="Only a title")) == "Title: Only a title"
    assert item_text(ItemText(description="  long\n  text ")) == "Description: long text"


def test_html_entities_unescaped_and_tags_stripped():
    it = ItemText(title="Dr. Scholl&#39;s Bath &amp;amp; Spa", brand="A &amp; B",
                  description="<p>Soft<br/>skin</p>")
    assert clean_text("Tom &amp; Jerry") == "Tom & Jerry"
    text = item_text(it)
    assert "Dr. Scholl's Bath & Spa" in text and "Brand: A & B" in text and "Description: Soft skin" in text
    assert "&" in text and "&amp;" not in text and "<" not in text
    # only known tags go: a "<" or ">" in plain text (escaped or not) is kept with what follows it
    assert clean_text("Fits sizes &lt;5mm and &gt;2mm") == "Fits sizes <5mm and >2mm"
    assert clean_text("I <3 this; weight < 2kg, height > 1m") == "I <3 this; weight < 2kg, height > 1m"
    assert clean_text("x<y and y>z") == "x<y and y>z"
    assert clean_text("Caf\ud800 au lait") == "Caf\ufffd au lait"  # JSON allows a lone surrogate; UTF-8 does not
    assert clean_text("a&lt;BR /&gt;b <font color='red'>c</font>") == "a b c"
    assert clean_text("<o:p>Word</o:p> <!-- a\ncomment --><section>paste</section>") == "Word paste"


def test_custom_segments_fields_and_skipped_categories():
    it = ItemText(title="Nail Polish", brand="OPI", categories=("Beauty", "Nails"))
    tpl = TextTemplate(segments=("{title} by {brand}", "in {categories}"), separator=". ",
                       skip_categories=("Beauty",))
    assert item_text(it, tpl) == "Nail Polish by OPI. in Nails"
    # a segment naming two fields needs both
    assert item_text(ItemText(title="Nail Polish"), tpl) == ""
    assert item_text(it, TextTemplate.from_fields(["brand", "title"])) == "Brand: OPI; Title: Nail Polish"
    assert TextTemplate.from_dict(tpl.to_dict()) == tpl


@pytest.mark.parametrize("segments", [("Title: {titel}",), ("no fields",), ("{title",), ("Price: {price:.2f}",),
                                      ("{title!x}",)])
def test_bad_template_segments_are_rejected(segments):
    with pytest.raises(ValueError, match="segment"):
        TextTemplate(segments=segments)


@pytest.mark.parametrize("bad", [-3, 2.5, True])
def test_a_description_limit_must_be_a_non_negative_integer(bad):
    with pytest.raises(ValueError, match="max_description_chars must be an integer >= 0"):  # -3 cut the end off
        TextTemplate(max_description_chars=bad)


def test_unknown_field_name_in_from_fields():
    with pytest.raises(ValueError, match="colour"):
        TextTemplate.from_fields(["title", "colour"])


def test_items_without_text_are_an_error_listing_ids():
    ds = make_dataset([ItemText(title="A"), ItemText(), ItemText(title="&nbsp; "), ItemText(title="B")],
                      ids=["a", "empty1", "blank2", "b"])
    with pytest.raises(DataFormatError, match="2 item.*'empty1', 'blank2'"):
        item_texts(ds)


def test_template_without_the_present_fields_counts_as_empty():
    ds = make_dataset([ItemText(title="A", brand="X"), ItemText(title="B")], ids=["a", "b"])
    with pytest.raises(DataFormatError, match="'b'"):
        item_texts(ds, TextTemplate.from_fields(["brand"]))


def test_explicit_fallback_for_empty_items():
    ds = make_dataset([ItemText(title="A"), ItemText()], ids=["a", "x9"])
    assert item_texts(ds, fallback="Item {item_id}") == ["Title: A", "Item x9"]
    with pytest.raises(ValueError, match="fallback"):
        item_texts(ds, fallback="Item {name}")
    for bad in ("Item {item_id.upper}", "Item {item_id:>9}", "Item {item_id!r}", "Item {item_id[0]}"):
        with pytest.raises(ValueError, match="over {item_id} alone"):  # could render differently per run
            item_texts(ds, fallback=bad)


def test_item_id_field_is_rendered():
    """``{item_id}`` is an allowed field: it renders (it used to drop its segment for every item)."""
    ds = make_dataset([ItemText(title="A"), ItemText()], ids=["a7", "x9"])
    assert item_texts(ds, TextTemplate.from_fields(["title", "item_id"])) == ["Title: A; Item: a7", "Item: x9"]


def test_skipped_categories_compare_as_cleaned_names_and_a_non_finite_price_is_left_out():
    item = ItemText(title="Rose", categories=("Health &amp; Beauty", "Lips"), price=float("nan"))
    text = TextTemplate(skip_categories=("Health &amp; Beauty",)).render(item)
    assert "Health" not in text and "Lips" in text  # the entity was cleaned in the name, not in the skip list
    assert "Price" not in text and "nan" not in text


def test_a_single_skipped_category_string_is_one_name_not_its_characters():
    item = ItemText(title="Lipstick", categories=["Beauty", "B", "Makeup"])
    for t in (TextTemplate(skip_categories="B"), TextTemplate.from_dict({"skip_categories": "B"})):
        assert t.skip_categories == ("B",)
    t = TextTemplate(segments="Categories: {categories}", skip_categories="Beauty")
    assert t.render(item) == "Categories: B, Makeup"  # it skipped "B" (a letter of "Beauty"), kept "Beauty"
    assert TextTemplate.from_dict(t.to_dict()) == t
    assert TextTemplate.from_dict({"segments": "Title: {title}"}).segments == ("Title: {title}",)  # split too
    assert TextTemplate(skip_categories=["Beauty"]).skip_categories == ("Beauty",)  # a list: a tuple, hashable
    with pytest.raises(TypeError, match="skip_categories must be strings, got 3"):
        TextTemplate(skip_categories=["Beauty", 3])
    with pytest.raises(TypeError, match="segments must be a string or a list of strings, got 5"):
        TextTemplate(segments=5)
