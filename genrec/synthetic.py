"""A seeded synthetic dataset that separates *memorization* from *compositional generalization*.

This is genrec's offline demo dataset. It is built so that an item-ID model (SASRec) wins on one
kind of transition and a semantic-ID generative model wins on the other.

Catalogue
    The full cartesian product ``brands x categories x attributes`` (default 24 x 10 x 8 = 1,920
    items). Item text is structured: title ``"<Brand> <Attribute> <Category>"`` (e.g. "Velora Mint
    Serum"), brand, categories ``[top-level, category]`` (e.g. ``["Skin Care", "Serum"]``), a
    description and a price (category base price times a brand factor). Item ids (``i00000`` ...)
    and item indices are shuffled, so they carry no attribute information.

Two kinds of transitions (item ``x`` -> next item ``y``)
    (a) **memorization** (share ``memorization_share``): ``y`` is one of ``memorization_fanout``
        fixed random "next" items of ``x`` (random permutations of the catalogue, unrelated to any
        attribute, never ``x`` itself nor its compositional next item). Only memorizing the pair helps.
        There are ``num_items * fanout`` such pairs, so each recurs across many users.
    (b) **compositional**: ``y`` has the same brand and the same attribute as ``x`` and the *next*
        category on a fixed random cycle of the categories (e.g. Cleanser -> Toner -> Serum -> ...).
        A model that sees item text / attribute codes can apply the rule to pairs it never saw.
    (c) optional **noise** (share ``noise_share``, default 0): ``y`` uniformly random.

Held-out rule instances (what makes unseen compositional pairs)
    A random ``heldout_share`` of the catalogue has its compositional transition held out of
    training: half of those items ("test-only") may use their compositional transition only as a
    user's *last* transition, the other half ("valid-only") only as the second-to-last. With the
    leave-one-out split (last item = test, second-to-last = validation), every such test pair is absent
    from the training sequences *and* from the validation targets. ``unseen_share`` (default 0.5) of the
    compositional test transitions start from a test-only item, so by default about half of them
    are pairs never seen in training (the other half start from ordinary items, whose pairs recur);
    the validation set gets about ``unseen_share * (1 - c) + c * heldout_share / 2`` of its
    compositional transitions from valid-only items, ``c`` the compositional share (0.31 at the
    defaults: a compositional test transition, built backwards, may also put a valid-only item at the
    validation transition). Earlier in a sequence, a compositional
    step out of a held-out item is replaced by a memorization step, so before the last three steps the
    realised memorization share is about ``m + (1 - m - noise) * heldout_share`` rather than ``m`` (0.60
    at the default 0.5, 0.28 at 0.1; over all transitions 0.58 and 0.25: :meth:`SyntheticInfo.kind_shares`
    records the realised kinds). Noise steps never form a held-out rule pair.

    So by default a held-out rule pair occurs only at the validation and test transitions, and a
    model fitted on held-out *training* transitions (each user's last training item left out, as
    :mod:`fusion.holdout_joint` does) never sees one there (the only unseen pairs there are ones that
    happen to occur once). Real data has new pairs at every position; ``train_unseen_share`` > 0 adds
    a third held-out group ("train-only" items, the held-out items then split in thirds) whose
    compositional transition may be used only as the *last training* transition (into the
    third-to-last item) of a user with at least 5 items, whose shortened training sequence still
    has a transition. A user of at least 5 items whose last two transitions are not compositional and
    whose last training transition is starts it from a train-only item with probability at least
    ``train_unseen_share`` (measured 0.60 at ``heldout_share=0.3``, ``train_unseen_share=0.5``: building
    backwards can reach a train-only source on the other branch too, and compositional steps out of
    other held-out items become memorization steps, which drops those users from the group). Those pairs are in the training data, but not in it once every user's
    last training item is left out (``holdout_share=1``; with a share below 1, pairs drawn by users
    who keep their last training item stay in it).

Generation
    Each user's length is uniform in ``seq_len`` (inclusive) and each transition's kind is drawn
    independently. Sequences are built *backwards* from their last transition (both maps are
    bijections, so sources are found by inverting them) from an anchor placed where the held-out
    instances require: the last, the second-to-last or (``train_unseen_share``) the third-to-last
    transition, the transitions after the anchor drawn forwards. Timestamps are strictly
    increasing whole numbers of seconds, held as float64 (random gaps of one hour to thirty days).

The realised structure is attached to the dataset as ``dataset.synthetic`` (a :class:`SyntheticInfo`:
per-item factors, both maps, the held-out flags and every user's transition kinds); use
:func:`synthetic_info` to get it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from genrec.data import ItemText, SequenceDataset, build_dataset

log = logging.getLogger(__name__)

KIND_MEMORIZATION = 0
KIND_COMPOSITIONAL = 1
KIND_NOISE = 2
KIND_NAMES = ("memorization", "compositional", "noise")

HELD_NONE = 0
HELD_VALID = 1
HELD_TEST = 2
HELD_TRAIN = 3

_CATEGORIES = (  # (top level, category), interleaved so the first few span several top levels
    ("Skin Care", "Cleanser"), ("Hair Care", "Shampoo"), ("Makeup", "Lipstick"), ("Fragrance", "Perfume"),
    ("Bath & Body", "Body Wash"), ("Skin Care", "Moisturizer"), ("Hair Care", "Conditioner"),
    ("Makeup", "Mascara"), ("Skin Care", "Serum"), ("Bath & Body", "Hand Cream"), ("Makeup", "Foundation"),
    ("Hair Care", "Hair Oil"), ("Skin Care", "Sunscreen"), ("Fragrance", "Body Mist"), ("Makeup", "Eyeliner"),
    ("Bath & Body", "Body Lotion"), ("Skin Care", "Toner"), ("Hair Care", "Hair Mask"), ("Makeup", "Blush"),
    ("Bath & Body", "Bath Salt"), ("Skin Care", "Eye Cream"), ("Makeup", "Nail Polish"),
)
_ATTRIBUTES = ("Rose", "Mint", "Citrus", "Vanilla", "Lavender", "Coconut", "Almond", "Green Tea", "Charcoal",
               "Honey", "Aloe", "Jasmine", "Cherry", "Sandalwood", "Cucumber", "Argan")
_PREFIXES = ("Aur", "Bel", "Cor", "Dal", "Ev", "Fior", "Gal", "Hal", "Ir", "Jun", "Kal", "Lum", "Mar", "Nov",
             "Ol", "Pel", "Quin", "Ros", "Sol", "Tal", "Um", "Val", "Wyn", "Xan", "Yar", "Zel")
_SUFFIXES = ("ora", "ix", "elle", "ana", "ique", "ara", "is", "eno")


@dataclass
class SyntheticInfo:
    """Ground truth of a synthetic dataset; per-item arrays are indexed by *dataset* item index."""

    brand: np.ndarray  # [num_items] brand index
    category: np.ndarray  # [num_items] category index
    attribute: np.ndarray  # [num_items] attribute index
    compositional_next: np.ndarray  # [num_items] item index of the compositional next item (-1: not in vocab)
    memorization_next: np.ndarray  # [num_items, fanout] item indices of the memorization next items (-1: idem)
    heldout: np.ndarray  # [num_items] int8: HELD_NONE, HELD_VALID, HELD_TEST or HELD_TRAIN
    kinds: list[np.ndarray]  # per user: [len(sequence) - 1] int8 kind of each transition
    brand_names: list[str]
    category_names: list[str]
    attribute_names: list[str]
    category_cycle: np.ndarray  # [num_categories] next category index

    def last_kinds(self, offset: int = 1) -> np.ndarray:
        """``[num_users]`` kind of the transition into each user's ``offset``-th last item
        (1: the test transition, 2: the validation transition)."""
        return np.array([k[-offset] for k in self.kinds], dtype=np.int8)

    def kind_shares(self) -> dict[str, float]:
        """Realised share of each transition kind over all transitions."""
        allk = np.concatenate(self.kinds) if self.kinds else np.zeros(0, dtype=np.int8)
        return {name: float((allk == k).mean()) if len(allk) else 0.0 for k, name in enumerate(KIND_NAMES)}


def permuted_info(info: SyntheticInfo, order: np.ndarray) -> SyntheticInfo:
    """``info`` for the dataset with its items renumbered (new item ``i`` is old item ``order[i]``): the
    per-item arrays reordered and the item indices they hold renumbered; the per-user kinds unchanged."""
    order = np.asarray(order, np.int64)
    new_index = np.empty_like(order)
    new_index[order] = np.arange(len(order))

    def items(a: np.ndarray) -> np.ndarray:  # item indices, -1 kept
        return np.where(a >= 0, new_index[np.maximum(a, 0)], -1)

    return dataclasses.replace(info, brand=info.brand[order], category=info.category[order],
                               attribute=info.attribute[order], heldout=info.heldout[order],
                               compositional_next=items(info.compositional_next[order]),
                               memorization_next=items(info.memorization_next[order]))


def synthetic_info(dataset: SequenceDataset) -> SyntheticInfo:
    """The :class:`SyntheticInfo` of a dataset made by :func:`make_synthetic` (error otherwise)."""
    info = getattr(dataset, "synthetic", None)
    if not isinstance(info, SyntheticInfo):
        raise ValueError(f"{dataset.name}: not a synthetic dataset (no ground-truth transition info)")
    return info


def _names(n: int, pool: tuple[str, ...], fallback: str) -> list[str]:
    return [pool[i] if i < len(pool) else f"{fallback} {i + 1}" for i in range(n)]


def _brand_names(n: int) -> list[str]:
    out = []
    for i in range(n):
        p, s = i % len(_PREFIXES), (i // len(_PREFIXES)) % len(_SUFFIXES)
        name = _PREFIXES[p] + _SUFFIXES[(s + p) % len(_SUFFIXES)]
        if i >= len(_PREFIXES) * len(_SUFFIXES):
            name = f"{name} {i // (len(_PREFIXES) * len(_SUFFIXES)) + 1}"
        out.append(name)
    return out


def _constrained_permutations(rng: np.random.Generator, n: int, count: int, forbidden: list[np.ndarray]) -> np.ndarray:
    """``[n, count]``: ``count`` random permutations whose value at ``x`` avoids every ``forbidden[j][x]``
    and the earlier permutations' values at ``x``."""
    perms = np.empty((n, count), dtype=np.int64)
    for k in range(count):
        perm = rng.permutation(n)
        banned = list(forbidden) + [perms[:, j] for j in range(k)]
        for _ in range(1000):
            bad = np.flatnonzero(np.logical_or.reduce([perm == b for b in banned]))
            if len(bad) == 0:
                break
            for i in bad:  # swap each bad position with a random one; re-check
                j = int(rng.integers(n))
                perm[i], perm[j] = perm[j], perm[i]
        else:
            raise ValueError(f"catalogue of {n} items is too small for a memorization fanout of {count}")
        perms[:, k] = perm
    return perms


def generator_revision(noise_share: float = 0.0, **_: object) -> int | None:
    """The revision of :func:`make_synthetic`'s output for these arguments, where a change of genrec gave
    the same arguments another dataset (a run fingerprints it, so such a run's stages rerun): 2 with
    ``noise_share > 0`` (noise steps stopped forming held-out rule pairs, session 17), None otherwise
    (the first dataset, unchanged)."""
    return 2 if noise_share > 0 else None


def make_synthetic(
    num_users: int = 2000,
    num_brands: int = 24,
    num_categories: int = 10,
    num_attributes: int = 8,
    memorization_share: float = 0.5,
    noise_share: float = 0.0,
    memorization_fanout: int = 1,
    heldout_share: float = 0.2,
    unseen_share: float = 0.5,
    train_unseen_share: float = 0.0,
    seq_len: tuple[int, int] = (5, 15),
    seed: int = 0,
    name: str = "synthetic",
) -> SequenceDataset:
    """Generate the seeded memorization-vs-composition dataset described in the module docstring.

    The same arguments always give the same dataset; ground truth is in ``dataset.synthetic``.
    """
    lo, hi = (int(x) for x in seq_len)
    if not 3 <= lo <= hi:
        raise ValueError(f"seq_len must be (min, max) with 3 <= min <= max, got {seq_len}")
    if num_users < 1 or num_brands < 1 or num_attributes < 1:
        raise ValueError("num_users, num_brands and num_attributes must be >= 1")
    if num_categories < 2:
        raise ValueError(f"num_categories must be >= 2 (the compositional rule advances the category), "
                         f"got {num_categories}")
    for pname, v in (("memorization_share", memorization_share), ("noise_share", noise_share),
                     ("heldout_share", heldout_share), ("unseen_share", unseen_share),
                     ("train_unseen_share", train_unseen_share)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{pname} must be in [0, 1], got {v}")
    if memorization_share + noise_share > 1.0:
        raise ValueError(f"memorization_share + noise_share must be <= 1, got {memorization_share + noise_share}")
    if memorization_fanout < 1:
        raise ValueError(f"memorization_fanout must be >= 1, got {memorization_fanout}")

    rng = np.random.default_rng(seed)
    B, C, A = num_brands, num_categories, num_attributes
    n = B * C * A
    cat_idx = np.arange(n)  # catalogue index = (b * C + c) * A + a
    brand = cat_idx // (C * A)
    category = (cat_idx // A) % C
    attribute = cat_idx % A

    # the compositional rule: same brand and attribute, next category on a random cycle
    order = rng.permutation(C)
    cycle = np.empty(C, dtype=np.int64)
    cycle[order] = np.roll(order, -1)
    comp = (brand * C + cycle[category]) * A + attribute
    comp_inv = np.empty(n, dtype=np.int64)
    comp_inv[comp] = cat_idx
    mem = _constrained_permutations(rng, n, memorization_fanout, [cat_idx, comp])
    mem_inv = np.empty_like(mem)
    for k in range(memorization_fanout):
        mem_inv[mem[:, k], k] = cat_idx

    held = np.zeros(n, dtype=np.int8)
    groups = 3 if train_unseen_share > 0 else 2
    n_held = int(round(heldout_share * n)) // groups
    perm = rng.permutation(n)
    held[perm[:n_held]] = HELD_TEST
    held[perm[n_held:2 * n_held]] = HELD_VALID
    held[perm[2 * n_held:groups * n_held]] = HELD_TRAIN
    test_pool = np.flatnonzero(held == HELD_TEST)
    valid_pool = np.flatnonzero(held == HELD_VALID)
    train_pool = np.flatnonzero(held == HELD_TRAIN)
    open_pool = np.flatnonzero(held == HELD_NONE)
    if len(open_pool) == 0 and unseen_share < 1:
        # every compositional anchor outside the unseen share comes from open items: with none, they
        # would be drawn from held-out ones and a validation-only pair would also be a test pair
        raise ValueError(f"heldout_share={heldout_share} holds out every item, leaving none for the "
                         f"{1 - unseen_share:.0%} of compositional transitions that are seen in training; lower "
                         f"heldout_share or set unseen_share=1")
    if unseen_share > 0 and n_held == 0:
        log.warning("%s: heldout_share=%s holds out no item; no compositional pair is unseen by construction",
                    name, heldout_share)

    # item text
    brand_names = _brand_names(B)
    cats = [_CATEGORIES[c] if c < len(_CATEGORIES) else ("Miscellaneous", f"Category {c + 1}") for c in range(C)]
    attr_names = _names(A, _ATTRIBUTES, "Variant")
    base_price = rng.uniform(5.0, 40.0, size=C)
    brand_factor = rng.uniform(0.7, 1.8, size=B)
    texts: list[ItemText] = []
    for i in range(n):
        b, c, a = int(brand[i]), int(category[i]), int(attribute[i])
        top, cat = cats[c]
        texts.append(ItemText(
            title=f"{brand_names[b]} {attr_names[a]} {cat}", brand=brand_names[b], categories=(top, cat),
            description=f"{attr_names[a]} {cat.lower()} from the {brand_names[b]} {top.lower()} line.",
            price=float(np.floor(base_price[c] * brand_factor[b]) + 0.99)))
    id_rank = rng.permutation(n)  # shuffled ids and indices: they say nothing about the attributes
    item_ids = [f"i{r:05d}" for r in id_rank]

    # sequences, built backwards from the last transition
    p_mem, p_noise = memorization_share, noise_share
    u_ids: list[str] = []
    seqs: list[np.ndarray] = []
    kinds_all: list[np.ndarray] = []
    fallbacks = 0

    def draw_kinds(m: int) -> np.ndarray:
        r = rng.random(m)
        return np.where(r < p_mem, KIND_MEMORIZATION,
                        np.where(r < p_mem + p_noise, KIND_NOISE, KIND_COMPOSITIONAL)).astype(np.int8)

    def pick(pool: np.ndarray) -> int:
        return int(pool[rng.integers(len(pool))]) if len(pool) else int(rng.integers(n))

    def allowed(src: int, j: int, L: int) -> bool:
        """Whether transition ``j`` of a length-``L`` sequence may be the compositional step out of ``src``."""
        h = held[src]
        return bool(h == HELD_NONE or (h == HELD_TEST and j == L - 2) or (h == HELD_VALID and j == L - 3)
                    or (h == HELD_TRAIN and j == L - 4 and L >= 5))

    def forward(x: int, kind: int) -> int:
        if kind == KIND_MEMORIZATION:
            return int(mem[x, rng.integers(memorization_fanout)])
        if kind == KIND_COMPOSITIONAL:
            return int(comp[x])
        while True:  # noise: any other item, but never a held-out rule pair (it belongs where allowed() says)
            y = int(rng.integers(n - 1))
            y += y >= x
            if held[x] == HELD_NONE or y != comp[x]:
                return y

    for u in range(num_users):
        L = int(rng.integers(lo, hi + 1))
        kinds = draw_kinds(L - 1)
        seq = np.empty(L, dtype=np.int64)
        # the anchor: choose the last two transitions' free item so held-out instances land where allowed
        if kinds[-1] == KIND_COMPOSITIONAL:
            x = pick(test_pool) if rng.random() < unseen_share else pick(open_pool)
            seq[-2], seq[-1] = x, comp[x]
            start = L - 3
        elif kinds[-2] == KIND_COMPOSITIONAL and L >= 3:
            w = pick(valid_pool) if rng.random() < unseen_share else pick(open_pool)
            seq[-3], seq[-2] = w, comp[w]
            seq[-1] = forward(int(seq[-2]), int(kinds[-1]))
            start = L - 4
        elif train_unseen_share > 0 and L >= 5 and kinds[-3] == KIND_COMPOSITIONAL and rng.random() < train_unseen_share:
            v = pick(train_pool)  # the last training transition: a pair seen nowhere else
            seq[-4], seq[-3] = v, comp[v]
            seq[-2] = forward(int(seq[-3]), int(kinds[-2]))
            seq[-1] = forward(int(seq[-2]), int(kinds[-1]))
            start = L - 5
        else:
            x = int(rng.integers(n))
            seq[-2], seq[-1] = x, forward(x, int(kinds[-1]))
            start = L - 3
        for j in range(start, -1, -1):  # transition j: seq[j] -> seq[j + 1]
            y = int(seq[j + 1])
            kind = int(kinds[j])
            if kind == KIND_COMPOSITIONAL:
                src = int(comp_inv[y])
                if not allowed(src, j, L):
                    kind = KIND_MEMORIZATION
                    kinds[j] = kind
                    fallbacks += 1
                else:
                    seq[j] = src
                    continue
            if kind == KIND_MEMORIZATION:
                seq[j] = mem_inv[y, rng.integers(memorization_fanout)]
            else:  # noise, again never a held-out rule pair
                while True:
                    s = int(rng.integers(n - 1))
                    s += s >= y
                    if held[s] == HELD_NONE or comp[s] != y:
                        break
                seq[j] = s
        u_ids.append(f"u{u:05d}")
        seqs.append(seq)
        kinds_all.append(kinds)
    if fallbacks:
        log.debug("%s: %d compositional step(s) out of held-out items replaced by memorization steps", name, fallbacks)

    # timestamps and the dataset
    day = 86_400
    events: dict[str, list[tuple[str, float]]] = {}
    for uid, seq in zip(u_ids, seqs):
        t0 = 1_600_000_000 + int(rng.integers(0, 365 * day))
        ts = t0 + np.cumsum(rng.integers(3600, 30 * day, size=len(seq)))
        events[uid] = [(item_ids[i], float(t)) for i, t in zip(seq, ts)]
    order_ids = [item_ids[i] for i in np.argsort(id_rank)]
    ds = build_dataset(name, events, dict(zip(item_ids, texts)), item_order=order_ids, source=name)

    # ground truth re-indexed to dataset item indices
    to_ds = np.full(n, -1, dtype=np.int64)
    for i, iid in enumerate(item_ids):
        to_ds[i] = ds.item_index.get(iid, -1)
    from_ds = np.array([int(iid[1:]) for iid in ds.item_ids], dtype=np.int64)  # id rank
    cat_of_rank = np.argsort(id_rank)
    src = cat_of_rank[from_ds]  # catalogue index of each dataset item
    ds.synthetic = SyntheticInfo(  # type: ignore[attr-defined]
        brand=brand[src], category=category[src], attribute=attribute[src],
        compositional_next=to_ds[comp[src]], memorization_next=to_ds[mem[src]], heldout=held[src],
        kinds=kinds_all, brand_names=brand_names, category_names=[c for _, c in cats],
        attribute_names=attr_names, category_cycle=cycle)
    info = ds.synthetic
    log.info("%r; transition kinds %s; %d held-out item(s)", ds,
             {k: round(v, 3) for k, v in info.kind_shares().items()}, int((held != HELD_NONE).sum()))
    return ds


def cyclic_dataset(num_items: int = 20, num_users: int = 120, length: int = 8, seed: int = 0) -> SequenceDataset:
    """A tiny deterministic dataset for smoke tests: each user walks ``i -> i + 1 (mod num_items)``
    from a random start, so a model that learns the pattern ranks every next item first."""
    rng = np.random.default_rng(seed)
    seqs = [((rng.integers(num_items) + np.arange(length)) % num_items).astype(np.int64) for _ in range(num_users)]
    return SequenceDataset(name="cyclic", item_ids=[f"i{k}" for k in range(num_items)],
                           user_ids=[f"u{k}" for k in range(num_users)], sequences=seqs,
                           items=[ItemText(title=f"item {k}") for k in range(num_items)])


__all__ = ["make_synthetic", "generator_revision", "cyclic_dataset", "synthetic_info", "SyntheticInfo", "KIND_MEMORIZATION", "KIND_COMPOSITIONAL",
           "KIND_NOISE", "KIND_NAMES", "HELD_NONE", "HELD_VALID", "HELD_TEST", "HELD_TRAIN"]

