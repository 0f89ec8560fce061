"""The saved recommender directory: what :meth:`genrec.Recommender.save_pretrained` writes and
:meth:`~genrec.Recommender.from_pretrained` reads, with no dataset or run directory needed::

    DIR/recommender.json      manifest: format, format_version, method, models, settings, text encoder,
                              trained_items (items after it came through add_items) and the new-item
                              mixtures (``fusion.new_item_mixture``) by fusion method
    DIR/semantic_ids.json     semantic-ID table with the raw item ids (quantize.SemanticIdTable)
    DIR/items.jsonl           one line per item, in index order: {"item_id", "title", "brand", ...}
    DIR/train_sequences.npz   the training sequences (``items`` int64, ``offsets`` int64 [n+1]): the
                              popularity fallback and the fusion indicators are computed from them
    DIR/sasrec.pt, generative.pt, joint.pt, fusion_methods.pt   the models it holds (weights only)
    DIR/quantize/quantizer.pt [preprocess.pt]                   the frozen quantizer (for add_items)
    DIR/item_embeddings.npy   [optional] the items' raw text embeddings ``float32 [num_items, d]``:
                              add_items finds each new item's nearest item in them for SASRec

Every file is written atomically, the manifest last, so a directory with a manifest is complete.
Reading checks the format name and version first: another version is a
:class:`~genrec.errors.CheckpointError` saying so, never a half-loaded model. The manifest keeps the
SHA-256 of every other file (``file_digests``; directories saved before it have none): a file copied in
from another recommender is refused, not used.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from genrec.artifacts import atomic_write, atomic_write_text, load_json, save_json
from genrec.errors import CheckpointError

FORMAT = "genrec-recommender"
#: bump when the directory's content changes incompatibly; directories of another version are refused.
#: Version 2 adds the new-item mixtures (``new_item_mixtures``, ``trained_items``); a directory that
#: holds none is still written as version 1, which genrec before version 2 reads the same way.
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
MANIFEST = "recommender.json"
TABLE = "semantic_ids.json"
ITEMS = "items.jsonl"
SEQUENCES = "train_sequences.npz"
MODEL_FILES = {"sasrec": "sasrec.pt", "generative": "generative.pt", "joint": "joint.pt",
               "fusion": "fusion_methods.pt"}
QUANTIZE_DIR = "quantize"
EMBEDDINGS = "item_embeddings.npy"
#: a run's fitted new-item mixtures (``RUN/fusion/new_item_mixture.json``: ``{method: settings}``)
MIXTURES = "new_item_mixture.json"
#: the item text fields kept in ``items.jsonl`` (``genrec.data.ItemText``)
TEXT_FIELDS = ("title", "brand", "categories", "description", "price")


@dataclass(frozen=True)
class InferenceSettings:
    """How a recommender scores a history (from the recipe's config): ``k`` candidates per tower
    (``fusion.k``, also the largest ``k`` a fused recommendation can ask for), generative ``beam``,
    ``teacher_forcing`` (each tower scores the other's candidates), ``max_history`` items read,
    and the inference ``batch_size``."""

    k: int = 50
    beam: int = 50
    teacher_forcing: bool = True
    max_history: int = 50
    batch_size: int = 512

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            want = bool if f.name == "teacher_forcing" else int
            if type(v) is not want or (want is int and v < 1):
                raise ValueError(f"setting {f.name!r} must be {'a bool' if want is bool else 'an int >= 1'}, "
                                 f"got {v!r}")

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "InferenceSettings":
        if not isinstance(d, dict) or set(d) != {f.name for f in fields(cls)}:
            raise CheckpointError(f"{where}: 'settings' must hold exactly {[f.name for f in fields(cls)]}")
        try:
            return cls(**d)
        except ValueError as e:
            raise CheckpointError(f"{where}: {e}") from None


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write ``recommender.json`` (last, after every other file): version 1 unless it holds new-item
    mixtures, which a reader of version 1 would silently ignore."""
    version = FORMAT_VERSION if manifest.get("new_item_mixtures") else 1
    return save_json(directory / MANIFEST, {"format": FORMAT, "format_version": version, **manifest})


def read_manifest(directory: Path) -> dict[str, Any]:
    """The checked manifest of a saved recommender directory (a :class:`CheckpointError` naming the
    file for a missing, foreign, damaged or other-version one)."""
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {MANIFEST}; not a saved genrec recommender (save one with "
                              f"Recommender.save_pretrained, or load a recipe run directory)")
    try:
        m = load_json(path)
    except ValueError as e:  # load_json's error names the file already
        raise CheckpointError(f"{e}; save the recommender again") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a genrec recommender manifest (format "
                              f"{m.get('format') if isinstance(m, dict) else None!r}, expected {FORMAT!r})")
    version = m.get("format_version")
    if version not in READ_VERSIONS or isinstance(version, bool):
        raise CheckpointError(f"{path}: recommender format version {version!r}; this genrec reads versions "
                              f"{', '.join(map(str, READ_VERSIONS))}: load it with the genrec that saved it, or save "
                              f"it again")
    for key, kind in (("method", str), ("models", list), ("settings", dict)):
        if not isinstance(m.get(key), kind):
            raise CheckpointError(f"{path}: damaged: {key!r} must be a {kind.__name__}")
    if m.get("text") is not None and not isinstance(m["text"], dict):
        raise CheckpointError(f"{path}: damaged: 'text' must be an object or null")
    if not all(isinstance(x, str) for x in m["models"]):  # a list in it raised TypeError (unhashable)
        raise CheckpointError(f"{path}: damaged: 'models' must list model names (strings), got {m['models']!r}")
    unknown = [x for x in m["models"] if x not in MODEL_FILES]
    if unknown:
        raise CheckpointError(f"{path}: unknown model(s) {unknown}; known: {sorted(MODEL_FILES)}")
    m["settings"] = InferenceSettings.from_dict(m["settings"], str(path))
    # both optional: directories saved before the new-item mixture have neither
    trained = m.setdefault("trained_items", None)
    if trained is not None and (isinstance(trained, bool) or not isinstance(trained, int) or trained < 1):
        raise CheckpointError(f"{path}: damaged: 'trained_items' must be an integer >= 1, got {trained!r}")
    mixtures = m.get("new_item_mixtures")
    m["new_item_mixtures"] = {} if mixtures is None else new_item_mixtures_from(mixtures, f"{path}: new_item_mixtures")
    digests = m.setdefault("file_digests", None)
    if digests is not None and not (isinstance(digests, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in digests.items())):
        raise CheckpointError(f"{path}: damaged: 'file_digests' must map file names to SHA-256 digests")
    return m


def file_digests(directory: Path) -> dict[str, str]:
    """``{relative path: SHA-256}`` of every file under ``directory`` but the manifest (for the manifest)."""
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        out[path.relative_to(directory).as_posix()] = digest.hexdigest()
    return out


def check_file_digests(directory: Path, expected: dict[str, str] | None) -> None:
    """Refuse a directory whose files are not the ones its manifest was written with (a model copied in
    from another recommender, a file replaced); ``expected`` None (saved before digests): no check."""
    if expected is None:
        return
    found = file_digests(directory)
    for name, digest in expected.items():
        # a missing file is left to its loader: it names a required one, and an optional one (the item
        # embeddings) may have been removed on purpose
        if name in found and found[name] != digest:
            raise CheckpointError(f"{directory / name}: not the file this recommender was saved with (its SHA-256 "
                                  f"differs from {MANIFEST}'s); the directory mixes files of different recommenders")


def new_item_mixtures_from(raw: Any, where: str) -> dict[str, Any]:
    """``{method: NewItemMixture}`` from its JSON form ``{method: {"log_prior", ...}}``; anything else
    is a :class:`CheckpointError` naming ``where`` and the method."""
    from fusion.new_item_mixture import NewItemMixture

    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: expected an object of fusion method -> mixture settings")
    try:
        return {str(name): NewItemMixture.from_dict(v, f"{where}: {name}") for name, v in raw.items()}
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def load_new_item_mixtures(path: Path) -> dict[str, Any]:
    """A run's fitted new-item mixtures (:data:`MIXTURES`); none when the file is absent."""
    if not path.is_file():
        return {}
    try:
        raw = load_json(path)
    except ValueError as e:  # load_json's error names the file already
        raise CheckpointError(f"{e}; run the fusion stage again") from None
    return new_item_mixtures_from(raw, str(path))


def copy_quantizer(source: Path | None, directory: Path) -> None:
    """Copy the quantizer files of ``source`` (a run's quantize directory; None: none) into
    ``directory``'s :data:`QUANTIZE_DIR`, each atomically; files there from an earlier save that
    ``source`` lacks are removed (they are not this recommender's)."""
    qdir = directory / QUANTIZE_DIR
    if source is not None and source.resolve() == qdir.resolve():
        return
    for fname in ("quantizer.pt", "preprocess.pt"):
        if source is not None and (source / fname).is_file():
            qdir.mkdir(exist_ok=True)
            shutil.copyfile(source / fname, qdir / (fname + ".tmp"))
            (qdir / (fname + ".tmp")).replace(qdir / fname)
        else:
            (qdir / fname).unlink(missing_ok=True)


def save_sequences(path: Path, sequences: Sequence[np.ndarray]) -> Path:
    """Training sequences as one flat ``items`` array and ``offsets`` (no pickle)."""
    lengths = np.array([len(s) for s in sequences], np.int64)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    flat = np.concatenate([np.asarray(s, np.int64) for s in sequences]) if len(sequences) else np.zeros(0, np.int64)

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez_compressed(f, items=flat, offsets=offsets)

    return atomic_write(path, write)


def load_sequences(path: Path, num_items: int) -> list[np.ndarray]:
    """The sequences :func:`save_sequences` wrote; indices outside ``[0, num_items)`` or broken
    offsets are a :class:`CheckpointError` naming the file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            flat, offsets = z["items"].astype(np.int64), z["offsets"].astype(np.int64)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: cannot read the training sequences ({e}); save the recommender again") from None
    if (offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(flat)
            or (np.diff(offsets) < 0).any()):
        raise CheckpointError(f"{path}: damaged: offsets do not partition the {len(flat)} items")
    if len(flat) and (flat.min() < 0 or flat.max() >= num_items):
        raise CheckpointError(f"{path}: damaged: item indices outside the catalogue of {num_items} items")
    return [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def save_embeddings(path: Path, embeddings: np.ndarray) -> Path:
    """Item embeddings ``float32 [num_items, d]`` as a plain ``.npy`` (no pickle)."""
    def write(p: Path) -> None:
        with open(p, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
            np.save(f, np.asarray(embeddings, np.float32), allow_pickle=False)

    return atomic_write(path, write)


def load_embeddings(path: Path, num_items: int, at_least: bool = False) -> np.ndarray | None:
    """The item embeddings in ``path`` (:func:`save_embeddings`, or a recipe run's
    ``embed/embeddings.npy``, whose first ``num_items`` rows are taken when ``at_least``: a cold-start
    run's warm items come first), memory-mapped (checked for finite values in blocks at load, then read
    again only when items are added); None when the file
    is absent. A file that cannot be read, or is not finite float32 ``[num_items, d]``, is a
    :class:`CheckpointError` naming it."""
    if not path.is_file():
        return None
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: cannot read the item embeddings ({e}); save the recommender again") from None
    rows_ok = len(x) >= num_items if at_least else len(x) == num_items
    if x.dtype != np.float32 or x.ndim != 2 or not rows_ok:
        raise CheckpointError(f"{path}: damaged: expected finite float32 [{num_items}, d] item embeddings, got "
                              f"{x.dtype} {list(x.shape)}")
    x = x[:num_items]
    for start in range(0, num_items, 65536):  # in blocks: no [num_items, d] temporary
        if not np.isfinite(x[start:start + 65536]).all():
            raise CheckpointError(f"{path}: damaged: expected finite float32 [{num_items}, d] item embeddings, "
                                  f"found non-finite values from row {start}")
    return x


def item_record(item_id: str, text: Any) -> dict[str, Any]:
    """``{"item_id", <non-empty text fields>}`` of one item (``text``: a ``genrec.data.ItemText``,
    a dict of fields, or None)."""
    rec: dict[str, Any] = {"item_id": item_id}
    for name in TEXT_FIELDS:
        v = text.get(name) if isinstance(text, dict) else getattr(text, name, None)
        if v is None or v == "" or v == () or v == []:
            continue
        rec[name] = list(v) if name == "categories" else v
    return rec


def save_items(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    buf = io.StringIO()
    for r in records:
        buf.write(json.dumps(r, ensure_ascii=False) + "\n")
    return atomic_write_text(path, buf.getvalue())


def load_items(path: Path, item_ids: Sequence[str]) -> list[dict[str, Any]]:
    """``items.jsonl``, checked line by line against the table's item ids."""
    records: list[dict[str, Any]] = []
    try:
        # split on "\n" only: str.splitlines would also split inside strings holding U+2028 and the like
        lines = path.read_text(encoding="utf-8").split("\n")
        lines = lines[:-1] if lines and lines[-1] == "" else lines
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; save the recommender again") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}); save the recommender again") from None
    for n, line in enumerate(lines, 1):
        try:
            r = json.loads(line)
        except ValueError as e:
            raise CheckpointError(f"{path}, line {n}: not JSON ({e})") from None
        if not isinstance(r, dict) or r.get("item_id") != (item_ids[n - 1] if n <= len(item_ids) else None):
            raise CheckpointError(f"{path}, line {n}: expected item {item_ids[n - 1] if n <= len(item_ids) else None!r}"
                                  f" as in {TABLE}")
        records.append(r)
    if len(records) != len(item_ids):
        raise CheckpointError(f"{path}: {len(records)} items, {TABLE} has {len(item_ids)}")
    return records


__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "InferenceSettings", "read_manifest", "write_manifest",
           "save_sequences", "load_sequences", "item_record", "save_items", "load_items", "MODEL_FILES", "MIXTURES",
           "new_item_mixtures_from", "load_new_item_mixtures"]
