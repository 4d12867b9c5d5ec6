"""The toy world: a synthetic image–caption dataset of coloured shapes ("toy-shapes").

Each image shows one or two shapes (8 shapes, 8 colours, 2 sizes, on a 3x3 grid of named
positions) on a mildly varying grey background with pixel noise; each image has several
captions drawn from varied templates and synonyms. Like real captions, a caption may leave
details out (``ToyConfig.detail``: the chance that it mentions each optional detail — an
object's size, colour or shape word, where the objects are, the second object), but never
says anything false; with ``detail=1`` every caption names every object's size, colour and
shape and its position or its relation to the other object.

Everything is deterministic from ``ToyConfig.seed``. Scenes (the objects' shapes, colours,
sizes and positions; background and noise do not count) of the evaluation splits
(``test-hard``, ``test``, ``support``) are distinct within and across those splits and never
occur in a training split (``pretrain``, ``text``, ``pairs``); training splits may repeat
scenes, as real data repeats concepts. ``test-hard`` is made of groups of 2–5 scenes that
differ from the group's first scene in one attribute (a colour, a size, a shape, or two
objects' attributes swapped), so recall@5/10 do not saturate.

Generated splits are cached under ``cache_dir("toy-shapes", config.fingerprint())`` as
``{split}.json`` (scenes, captions) and ``{split}.npy`` (images), and memoised in process.
"""

from __future__ import annotations

import difflib
import functools
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xbt_bench.atomic import is_intact, write_json, write_npy
from xbt_bench.console import warn
from xbt_bench.data.base import ImageTextSet, TextCorpus, fingerprint_of
from xbt_bench.paths import cache_dir

NAME = "toy-shapes"
# Bump when generation changes, so stale caches are not reused.
GENERATOR_VERSION = 2

TOY_SPLITS: tuple[str, ...] = ("pretrain", "text", "pairs", "support", "test", "test-hard")
TRAIN_SPLITS: tuple[str, ...] = ("pretrain", "text", "pairs")
# Evaluation splits in generation order: each avoids the scenes of those before it.
EVAL_SPLITS: tuple[str, ...] = ("test-hard", "test", "support")

# Each attribute value with its caption words, the first being its name.
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangle shape", "triangular shape"),
    "diamond": ("diamond", "rhombus", "diamond shape"),
    "cross": ("cross", "plus sign", "plus shape"),
    "star": ("star", "star shape", "pointed star"),
    "ring": ("ring", "hoop", "donut shape"),
    "hexagon": ("hexagon", "hexagon shape", "hex shape"),
}
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "amber", "tangerine"),
    "yellow": ("yellow", "golden", "lemon"),
    "green": ("green", "emerald", "lime"),
    "blue": ("blue", "navy", "azure"),
    "purple": ("purple", "violet", "lilac"),
    "white": ("white", "snowy", "ivory"),
    "black": ("black", "ebony", "charcoal"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big", "huge"),
}
POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left", "at the top left", "in the upper left"),
    "top": ("at the top", "near the top edge", "in the upper middle"),
    "top right": ("in the top right", "at the top right", "in the upper right"),
    "left": ("on the left", "near the left edge", "at the left"),
    "center": ("in the center", "in the middle", "at the centre"),
    "right": ("on the right", "near the right edge", "at the right"),
    "bottom left": ("in the bottom left", "at the bottom left", "in the lower left"),
    "bottom": ("at the bottom", "near the bottom edge", "in the lower middle"),
    "bottom right": ("in the bottom right", "at the bottom right", "in the lower right"),
}
SHAPES: tuple[str, ...] = tuple(SHAPE_WORDS)
COLOURS: tuple[str, ...] = tuple(COLOUR_WORDS)
SIZES: tuple[str, ...] = tuple(SIZE_WORDS)
# A 3x3 grid, row by row.
POSITIONS: tuple[str, ...] = tuple(POSITION_WORDS)

_HORIZONTAL_WORDS = {
    -1: ("to the left of", "left of", "on the left of"),
    1: ("to the right of", "right of", "on the right of"),
}
_VERTICAL_WORDS = {-1: ("above", "over", "higher than"), 1: ("below", "under", "beneath")}
_DIAGONAL_VERTICAL = {-1: ("above", "higher than"), 1: ("below", "lower than")}
_DIAGONAL_HORIZONTAL = {-1: ("to the left of", "left of"), 1: ("to the right of", "right of")}

_COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
_RGB = np.array([_COLOUR_RGB[c] for c in COLOURS], dtype=np.float32)
# Object radius as a share of a grid cell's width.
_RADIUS = (0.26, 0.42)
_P_SINGLE_TRAIN = 0.25
# Fewer single-object scenes in evaluation splits: there are only 1152 such scenes, and
# each one reserved for evaluation is one that the training splits never show.
_P_SINGLE_EVAL = 0.1
_RENDER_CHUNK = 4096
# Out of 1152 one-object and 589824 two-object scenes.
_MAX_EVAL_SCENES = 100_000
# A scene is coded as 8 ints: (shape, colour, size, position) per object, -1 for a missing
# second object; objects are ordered by position.
_FIELDS = ("shape", "colour", "size", "position")
_N_VALUES = (len(SHAPES), len(COLOURS), len(SIZES), len(POSITIONS))


@dataclass(frozen=True)
class ToyConfig:
    """Everything the toy world depends on: the seed, image size and split sizes."""

    seed: int = 0
    image_size: int = 32
    n_pretrain: int = 40000
    n_text: int = 20000
    n_pairs: int = 8000
    n_support: int = 1000
    n_test: int = 1000
    n_test_hard: int = 1000
    captions_per_image: int = 5
    # Probability that a caption mentions each optional detail (an object's size, colour or
    # shape word, where the objects are, the second object): 1 names everything.
    detail: float = 0.9

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"ToyConfig.seed must be >= 0, got {self.seed}")
        if self.image_size < 12:
            raise ValueError(f"ToyConfig.image_size must be >= 12 pixels, got {self.image_size}")
        for split in TOY_SPLITS:
            if self.split_size(split) < 1:
                raise ValueError(f"ToyConfig.{_size_field(split)} must be >= 1")
        if self.captions_per_image < 1:
            raise ValueError("ToyConfig.captions_per_image must be >= 1")
        if not 0 <= self.detail <= 1:
            raise ValueError(f"ToyConfig.detail must be in [0, 1], got {self.detail}")
        n_eval = sum(self.split_size(split) for split in EVAL_SPLITS)
        if n_eval > _MAX_EVAL_SCENES:
            raise ValueError(
                f"ToyConfig evaluation splits ask for {n_eval} distinct scenes; at most "
                f"{_MAX_EVAL_SCENES} are allowed so that training splits keep enough scenes"
            )

    def split_size(self, split: str) -> int:
        """The number of images of ``split``."""
        return getattr(self, _size_field(_check_split(split)))

    def fingerprint(self) -> str:
        """A stable hash of this config and the generator version (the cache key)."""
        return fingerprint_of([NAME, GENERATOR_VERSION, *sorted(asdict(self).items())])


@dataclass(frozen=True)
class ToyObject:
    """One shape in a scene."""

    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class ToyScene:
    """What an image shows: one or two objects, ordered by position (row-major grid)."""

    objects: tuple[ToyObject, ...]


def _size_field(split: str) -> str:
    return f"n_{split.replace('-', '_')}"


def _check_split(split: str) -> str:
    if split not in TOY_SPLITS:
        close = difflib.get_close_matches(split, TOY_SPLITS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"unknown {NAME} split {split!r}; {hint}valid splits: {', '.join(TOY_SPLITS)}"
        )
    return split


def _rng(config: ToyConfig, split: str, stream: str) -> np.random.Generator:
    """An independent random stream per (seed, split, purpose)."""
    return np.random.default_rng(
        [config.seed, zlib.crc32(split.encode()), zlib.crc32(stream.encode())]
    )


# --- scenes -------------------------------------------------------------------------------


def _sample_codes(rng: np.random.Generator, n: int, p_single: float) -> np.ndarray:
    """``n`` random scene codes, [n, 8] int64, objects in canonical (position) order."""
    attrs = rng.integers(0, _N_VALUES[:3], size=(n, 2, 3))
    first = rng.integers(0, len(POSITIONS), size=n)
    second = (first + rng.integers(1, len(POSITIONS), size=n)) % len(POSITIONS)
    single = rng.random(n) < p_single
    objects = np.concatenate([attrs, np.stack([first, second], axis=1)[..., None]], axis=2)
    swap = second < first
    objects[swap] = objects[swap][:, ::-1]
    objects[single, 0] = np.concatenate([attrs[single, 0], first[single, None]], axis=1)
    objects[single, 1] = -1
    return objects.reshape(n, 8)


def _sample_distinct(
    rng: np.random.Generator, n: int, p_single: float, avoid: set[tuple[int, ...]]
) -> list[tuple[int, ...]]:
    """``n`` distinct scene codes not in ``avoid`` (which grows by them)."""
    out: list[tuple[int, ...]] = []
    while len(out) < n:
        for row in _sample_codes(rng, 2 * (n - len(out)) + 8, p_single).tolist():
            key = tuple(row)
            if key not in avoid:
                avoid.add(key)
                out.append(key)
                if len(out) == n:
                    break
    return out


def _vary(code: tuple[int, ...], rng: np.random.Generator) -> tuple[int, ...]:
    """``code`` with one attribute changed: a colour, size or shape, or a swap of objects."""
    two = code[4] >= 0
    kind = int(rng.integers(4 if two else 3))
    if kind == 3:
        return code[4:7] + code[3:4] + code[0:3] + code[7:8]
    field = (1, 2, 0)[kind]  # colour, size, shape
    at = 4 * int(rng.integers(2 if two else 1)) + field
    out = list(code)
    out[at] = (out[at] + int(rng.integers(1, _N_VALUES[field]))) % _N_VALUES[field]
    return tuple(out)


def _group_sizes(rng: np.random.Generator, n: int) -> list[int]:
    """Group sizes of 4–5 summing to ``n`` (the last one or two groups may be smaller)."""
    sizes: list[int] = []
    left = n
    while left > 0:
        if left <= 5:
            size = left
        elif left <= 8:
            size = left // 2
        else:
            size = int(rng.integers(4, 6))
        sizes.append(size)
        left -= size
    return sizes


def _hard_codes(
    rng: np.random.Generator, n: int, avoid: set[tuple[int, ...]]
) -> tuple[list[tuple[int, ...]], list[int]]:
    """Scene codes of groups of near-identical scenes, and each scene's group index."""
    codes: list[tuple[int, ...]] = []
    groups: list[int] = []
    for group, size in enumerate(_group_sizes(rng, n)):
        members: list[tuple[int, ...]] = []
        while len(members) < size:
            # A base whose variants keep colliding with taken scenes is replaced.
            members = _sample_distinct(rng, 1, _P_SINGLE_EVAL, set(avoid))
            for _ in range(50 * size):
                if len(members) == size:
                    break
                variant = _vary(members[0], rng)
                if variant not in avoid and variant not in members:
                    members.append(variant)
        avoid.update(members)
        codes += members
        groups += [group] * size
    return codes, groups


def _eval_codes(config: ToyConfig) -> dict[str, tuple[list[tuple[int, ...]], list[int]]]:
    """Scene codes (and test-hard groups) of the evaluation splits, mutually distinct."""
    taken: set[tuple[int, ...]] = set()
    rng = _rng(config, "test-hard", "scenes")
    out = {"test-hard": _hard_codes(rng, config.n_test_hard, taken)}
    for split in EVAL_SPLITS[1:]:
        rng = _rng(config, split, "scenes")
        out[split] = (_sample_distinct(rng, config.split_size(split), _P_SINGLE_EVAL, taken), [])
    return out


def _train_codes(
    rng: np.random.Generator, n: int, avoid: set[tuple[int, ...]]
) -> list[tuple[int, ...]]:
    """``n`` scene codes (repeats allowed) none of which is in ``avoid``."""
    out: list[tuple[int, ...]] = []
    while len(out) < n:
        batch = _sample_codes(rng, n - len(out) + 64, _P_SINGLE_TRAIN).tolist()
        out += [key for key in map(tuple, batch) if key not in avoid][: n - len(out)]
    return out


def _scene(code: np.ndarray) -> ToyScene:
    objects = []
    for o in range(2):
        shape, colour, size, position = (int(v) for v in code[4 * o : 4 * o + 4])
        if shape >= 0:
            objects.append(
                ToyObject(SHAPES[shape], COLOURS[colour], SIZES[size], POSITIONS[position])
            )
    return ToyScene(tuple(objects))


# --- captions -----------------------------------------------------------------------------


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _pick(options: tuple[str, ...], r: int) -> str:
    return options[r % len(options)]


_SINGLE_TEMPLATES = (
    "{a_obj} {pos}",
    "{a_col_shape}, {size}, {pos}",
    "there is {a_obj} {pos}",
    "{pos} there is {a_obj}",
    "{a_size_shape} in {colour} {pos}",
    "{a_obj} sits {pos}",
    "an image of {a_obj} {pos}",
    "{obj} {pos}",
    "{a_obj} placed {pos}",
)
_PAIR_TEMPLATES = (
    "{a} {rel} {b}",
    "{b} is {inv} {a}",
    "there is {a} {rel} {b}",
    "{a} {pos_a} and {b} {pos_b}",
    "{b} {pos_b}, {a} {pos_a}",
    "{a} with {b} {inv} it",
    "{b} {pos_b} and {a} {pos_a}",
    "{a} sits {rel} {b}",
)


def _relation(pos_a: int, pos_b: int, r: int) -> str:
    """How the object at grid cell ``pos_a`` lies relative to the one at ``pos_b``."""
    dy = int(np.sign(pos_a // 3 - pos_b // 3))
    dx = int(np.sign(pos_a % 3 - pos_b % 3))
    if dy == 0:
        return _pick(_HORIZONTAL_WORDS[dx], r)
    if dx == 0:
        return _pick(_VERTICAL_WORDS[dy], r)
    return f"{_pick(_DIAGONAL_VERTICAL[dy], r)} and {_pick(_DIAGONAL_HORIZONTAL[dx], r >> 4)}"


def _object_words(code: list[int], r: list[int]) -> tuple[str, str, str, str]:
    """(size, colour, shape, position) phrases of one object, synonyms chosen by ``r``."""
    shape, colour, size, position = code
    return (
        _pick(SIZE_WORDS[SIZES[size]], r[0]),
        _pick(COLOUR_WORDS[COLOURS[colour]], r[1]),
        _pick(SHAPE_WORDS[SHAPES[shape]], r[2]),
        _pick(POSITION_WORDS[POSITIONS[position]], r[3]),
    )


def _full_caption(code: list[int], template: int, r: list[int]) -> str:
    """A caption that names every attribute of every object, and where they are."""
    size, colour, shape, pos = _object_words(code[:4], r[:4])
    if code[4] < 0:
        return _SINGLE_TEMPLATES[template % len(_SINGLE_TEMPLATES)].format(
            obj=f"{size} {colour} {shape}",
            a_obj=_article(f"{size} {colour} {shape}"),
            a_col_shape=_article(f"{colour} {shape}"),
            a_size_shape=_article(f"{size} {shape}"),
            size=size,
            colour=colour,
            pos=pos,
        )
    size_b, colour_b, shape_b, pos_b = _object_words(code[4:], r[4:8])
    return _PAIR_TEMPLATES[template % len(_PAIR_TEMPLATES)].format(
        a=_article(f"{size} {colour} {shape}"),
        b=_article(f"{size_b} {colour_b} {shape_b}"),
        rel=_relation(code[3], code[7], r[8]),
        inv=_relation(code[7], code[3], r[8]),
        pos_a=pos,
        pos_b=pos_b,
    )


# A partial caption leaves details out, as real captions do; these templates never need them.
_UNPLACED_TEMPLATES = (
    "{a_obj}",
    "there is {a_obj}",
    "an image of {a_obj}",
    "{obj}",
    "a picture of {a_obj}",
)
_PLACED_TEMPLATES = (
    "{a_obj} {pos}",
    "there is {a_obj} {pos}",
    "{pos} there is {a_obj}",
    "{a_obj} sits {pos}",
    "an image of {a_obj} {pos}",
    "{obj} {pos}",
    "{a_obj} placed {pos}",
)
_UNPLACED_PAIR_TEMPLATES = (
    "{a} and {b}",
    "{b} and {a}",
    "there is {a} and {b}",
    "an image of {a} and {b}",
    "{a} together with {b}",
)
_GENERIC_NOUNS = ("shape", "object", "figure")
# Which details a partial caption keeps: size, colour, shape word of each object, where they
# are (a position or a relation), and the second object of a two-object scene.
_KEEP_SIZE, _KEEP_COLOUR, _KEEP_SHAPE, _KEEP_PLACE, _KEEP_SECOND, _WHICH = 0, 1, 2, 3, 8, 9
_N_KEEP = 10


def _object_phrase(words: tuple[str, str, str, str], keep: list[bool], r: int) -> str:
    """ "[size] [colour] shape" with the details ``keep`` drops; a dropped shape word becomes
    a generic noun, but never when the colour is dropped too (the phrase would say nothing)."""
    size, colour, shape, _ = words
    noun = shape if keep[_KEEP_SHAPE] or not keep[_KEEP_COLOUR] else _pick(_GENERIC_NOUNS, r)
    return " ".join([size] * keep[_KEEP_SIZE] + [colour] * keep[_KEEP_COLOUR] + [noun])


def _partial_caption(code: list[int], template: int, r: list[int], keep: list[bool]) -> str:
    """A caption of the scene that mentions only the details ``keep`` holds."""
    objects = [
        (code[4 * o : 4 * o + 4], r[4 * o : 4 * o + 4], keep[4 * o : 4 * o + 4]) for o in (0, 1)
    ]
    if code[4] < 0 or not keep[_KEEP_SECOND]:
        obj_code, obj_r, obj_keep = objects[keep[_WHICH] and code[4] >= 0]
        words = _object_words(obj_code, obj_r)
        phrase = _object_phrase(words, obj_keep, obj_r[2])
        templates = _PLACED_TEMPLATES if obj_keep[_KEEP_PLACE] else _UNPLACED_TEMPLATES
        return templates[template % len(templates)].format(
            obj=phrase, a_obj=_article(phrase), pos=words[3]
        )
    words = [_object_words(c, rr) for c, rr, _ in objects]
    a, b = (
        _article(_object_phrase(w, k, rr[2])) for w, (_, rr, k) in zip(words, objects, strict=True)
    )
    if not keep[_KEEP_PLACE]:
        return _UNPLACED_PAIR_TEMPLATES[template % len(_UNPLACED_PAIR_TEMPLATES)].format(a=a, b=b)
    return _PAIR_TEMPLATES[template % len(_PAIR_TEMPLATES)].format(
        a=a,
        b=b,
        rel=_relation(code[3], code[7], r[8]),
        inv=_relation(code[7], code[3], r[8]),
        pos_a=words[0][3],
        pos_b=words[1][3],
    )


def _captions(
    codes: np.ndarray, rng: np.random.Generator, per_image: int, detail: float
) -> list[str]:
    """``per_image`` distinct captions per scene, image-major.

    Each caption mentions each optional detail with probability ``detail`` (1: every caption
    names everything); a caption that repeats one of its image's earlier captions is redrawn,
    and after a few tries replaced by a full caption with the next unused template.
    """
    n = len(codes)
    tries = 4
    order = np.argsort(rng.random((n, max(len(_SINGLE_TEMPLATES), len(_PAIR_TEMPLATES)))), 1)
    draws = rng.integers(0, 1 << 30, size=(n, per_image, 9)).tolist()
    keeps = (rng.random((n, per_image, tries, _N_KEEP)) < detail).tolist()
    captions = []
    for code, image_order, image_draws, image_keeps in zip(
        codes.tolist(), order.tolist(), draws, keeps, strict=True
    ):
        seen: set[str] = set()
        fallback = iter(image_order * 2)
        for k, r in enumerate(image_draws):
            template = image_order[k % len(image_order)]
            for keep in image_keeps[k]:
                caption = (
                    _full_caption(code, template, r)
                    if all(keep[: 4 if code[4] < 0 else _WHICH])
                    else _partial_caption(code, template, r, keep)
                )
                if caption not in seen:
                    break
            while caption in seen:
                caption = _full_caption(code, next(fallback), r)
            seen.add(caption)
            captions.append(caption)
    return captions


# --- images -------------------------------------------------------------------------------


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of ``shape`` in coordinates scaled to its radius (y points down)."""
    a, b = np.abs(u), np.abs(v)
    rho = np.hypot(u, v)
    if shape == "circle":
        return rho <= 0.9
    if shape == "square":
        return np.maximum(a, b) <= 0.8
    if shape == "triangle":
        return (v <= 0.65) & (a <= 0.95 * (v + 1) / 1.65)
    if shape == "diamond":
        return a + b <= 1.0
    if shape == "cross":
        return ((a <= 0.32) & (b <= 0.95)) | ((b <= 0.32) & (a <= 0.95))
    if shape == "star":
        phase = np.arctan2(u, -v) * 5 / (2 * np.pi)
        return rho <= 1.0 - 1.1 * np.abs(phase - np.round(phase))
    if shape == "ring":
        return (rho <= 1.0) & (rho >= 0.5)
    if shape == "hexagon":
        return (b <= 0.866) & (1.732 * a + b <= 1.732)
    raise ValueError(f"no drawing for shape {shape!r}")


def _mask_index(shape: Any, size: Any, position: Any) -> Any:
    """Index into ``_masks`` of (shape, size, position) indices (ints or int arrays)."""
    return (shape * len(SIZES) + size) * len(POSITIONS) + position


@functools.lru_cache(maxsize=4)
def _masks(image_size: int) -> np.ndarray:
    """Anti-aliased coverage of every (shape, size, position), float32 [8*2*9+1, H, W].

    Indexed by ``_mask_index``; the last mask is empty (no object).
    """
    ss = 4
    grid = (np.arange(image_size * ss, dtype=np.float64) + 0.5) / ss
    y, x = np.meshgrid(grid, grid, indexing="ij")
    cell = image_size / 3
    masks = np.zeros((len(SHAPES) * len(SIZES) * len(POSITIONS) + 1, image_size, image_size))
    for s, shape in enumerate(SHAPES):
        for z, radius in enumerate(_RADIUS):
            for p in range(len(POSITIONS)):
                cy, cx = (p // 3 + 0.5) * cell, (p % 3 + 0.5) * cell
                inside = _shape_mask(shape, (x - cx) / (radius * cell), (y - cy) / (radius * cell))
                coverage = inside.reshape(image_size, ss, image_size, ss).mean(axis=(1, 3))
                masks[_mask_index(s, z, p)] = coverage
    return masks.astype(np.float32)


def _render(codes: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Images of the scenes ``codes``: uint8 [N, H, W, 3]."""
    n = len(codes)
    masks = _masks(image_size)
    grey = rng.uniform(105, 150, size=(n, 1))
    background = grey + rng.uniform(-12, 12, size=(n, 3))
    tint = rng.uniform(-12, 12, size=(n, 2, 3))
    sigma = rng.uniform(2, 7, size=n)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, n, _RENDER_CHUNK):
        chunk = slice(start, min(n, start + _RENDER_CHUNK))
        c = codes[chunk]
        canvas = np.broadcast_to(
            background[chunk, None, None, :], (len(c), image_size, image_size, 3)
        ).astype(np.float32)
        for o in range(2):
            shape, colour, size, position = (c[:, 4 * o + k] for k in range(4))
            index = np.where(shape >= 0, _mask_index(shape, size, position), -1)
            cover = masks[index][..., None]
            rgb = (_RGB[np.maximum(colour, 0)] + tint[chunk, o])[:, None, None, :]
            canvas += cover * (rgb - canvas)
        noise = rng.standard_normal(canvas.shape, dtype=np.float32)
        canvas += noise * sigma[chunk, None, None, None].astype(np.float32)
        images[chunk] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return images


# --- splits and caching -------------------------------------------------------------------


@dataclass(frozen=True)
class _SplitData:
    codes: np.ndarray
    captions: tuple[str, ...]
    groups: np.ndarray


def _cache_path(split: str, config: ToyConfig, suffix: str) -> Path:
    return cache_dir(NAME, config.fingerprint()) / f"{split}{suffix}"


@functools.lru_cache(maxsize=32)
def _split_data(split: str, config: ToyConfig) -> _SplitData:
    """Scenes, captions and test-hard groups of ``split``: from disk, or generated."""
    path = _cache_path(split, config, ".json")
    if path.exists() and not is_intact(path):
        warn(f"toy split file {path} fails its checksum; generating it again")
    elif path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        return _SplitData(
            np.array(saved["scenes"], dtype=np.int64).reshape(-1, 8),
            tuple(saved["captions"]),
            np.array(saved["groups"], dtype=np.int64),
        )
    if split in EVAL_SPLITS:
        codes, groups = _eval_codes(config)[split]
    else:
        reserved = {
            tuple(row) for s in EVAL_SPLITS for row in _split_data(s, config).codes.tolist()
        }
        rng = _rng(config, split, "scenes")
        codes, groups = _train_codes(rng, config.split_size(split), reserved), []
    code_array = np.array(codes, dtype=np.int64).reshape(-1, 8)
    captions = _captions(
        code_array, _rng(config, split, "captions"), config.captions_per_image, config.detail
    )
    write_json(
        path,
        {
            "dataset": NAME,
            "split": split,
            "config": asdict(config),
            "generator_version": GENERATOR_VERSION,
            "scene_fields": [f"{field}{o}" for o in range(2) for field in _FIELDS],
            "scenes": code_array.tolist(),
            "groups": list(groups),
            "captions": captions,
            "caption_image": _caption_image(len(codes), config).tolist(),
        },
        checked=True,
    )
    return _SplitData(code_array, tuple(captions), np.array(groups, dtype=np.int64))


def _caption_image(n_images: int, config: ToyConfig) -> np.ndarray:
    return np.repeat(np.arange(n_images, dtype=np.int64), config.captions_per_image)


@functools.lru_cache(maxsize=8)
def toy_images(split: str, config: ToyConfig = ToyConfig()) -> np.ndarray:
    """All images of ``split``, uint8 [N, H, W, 3] (read-only), rendered once and cached."""
    path = _cache_path(_check_split(split), config, ".npy")
    if is_intact(path):
        return np.load(path, mmap_mode="r")
    if path.exists():
        warn(f"toy images {path} fail their checksum; rendering them again")
    rng = _rng(config, split, "images")
    images = _render(_split_data(split, config).codes, config.image_size, rng)
    write_npy(path, images, checked=True)
    images.flags.writeable = False
    return images


def _load_image(split: str, config: ToyConfig, index: int) -> Image.Image:
    return Image.fromarray(np.array(toy_images(split, config)[index]))


def toy_split(split: str, config: ToyConfig = ToyConfig()) -> ImageTextSet:
    """The ``split`` of the toy world as an image–caption set (images rendered on first use)."""
    data = _split_data(_check_split(split), config)
    return ImageTextSet(
        name=NAME,
        split=split,
        n_images=len(data.codes),
        load_image=functools.partial(_load_image, split, config),
        captions=list(data.captions),
        caption_image=_caption_image(len(data.codes), config),
        fingerprint=fingerprint_of([NAME, split, config.fingerprint()]),
    )


def toy_scenes(split: str, config: ToyConfig = ToyConfig()) -> list[ToyScene]:
    """What each image of ``split`` shows, in image order."""
    return [_scene(code) for code in _split_data(_check_split(split), config).codes]


def toy_hard_groups(config: ToyConfig = ToyConfig()) -> np.ndarray:
    """The group index of each ``test-hard`` image; a group's first scene is its base."""
    return _split_data("test-hard", config).groups.copy()


def toy_text_corpus(config: ToyConfig = ToyConfig()) -> TextCorpus:
    """The deduplicated captions of the ``text`` split (no images are rendered)."""
    return TextCorpus.from_texts(
        f"{NAME}/text",
        _split_data("text", config).captions,
        source=f"captions of the {NAME} 'text' split (config {config.fingerprint()})",
    )


def caption_overlap(config: ToyConfig = ToyConfig()) -> float:
    """Share of ``test`` captions whose exact string also occurs in a training split."""
    seen = {c for split in TRAIN_SPLITS for c in _split_data(split, config).captions}
    test = _split_data("test", config).captions
    return sum(c in seen for c in test) / len(test)


def load_toy_dataset(split: str, root: Path | None = None) -> ImageTextSet:
    """The dataset-registry entry for ``toy-shapes``: generated, so ``root`` is not used."""
    return toy_split(split, ToyConfig())
