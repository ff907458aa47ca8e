"""Shape scenes for the synthetic caption sets: sampling, rendering and captioning.

The synthetic sets exist so the whole pipeline (calibration, Gap-Init, LoRA fine-tuning, caption
metrics) can run in seconds without COCO. They have to be learnable (the captions are a pure
function of what is drawn), and the two variants have to differ the way a real downstream task
differs from pre-training data, so that fine-tuning has something to adapt to:

* ``pretrain``: black background; colours red/green/blue/yellow; shapes circle/square/triangle;
  sizes small/large; positions "at the top left", "on the left", "in the center"...; captions like
  "a small red circle on the left" or "a red circle at the top left of the image".
* ``downstream``: white background; adds the colours purple/orange and the shapes star/diamond;
  sizes little/big; positions "upper left part", "middle part", "lower right part"...; new
  phrasing like "there is one red circle located in the left part of the picture".
* ``restyle``: the ``pretrain`` images (same palette, shapes and black background) with the
  ``downstream`` phrasing and words: a shift in caption style only, the kind of adaptation a
  rank-1 LoRA on the language model can make while the vision tower stays frozen (the quickstart's
  task; ``downstream`` also changes what the frozen vision tower sees).

An image holds one or two shapes on a 3x3 grid of cells (never two in one cell, never touching), so
every position word is unambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

from gapinit_ray.data._random import StableRandom

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255)}


@dataclass(frozen=True)
class Vocabulary:
    """Everything that distinguishes one variant from the other."""

    background: str
    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    sizes: tuple[str, str]  # (small word, large word)
    cells: tuple[tuple[str, ...], ...]  # position phrase of each 3x3 grid cell, row by row


_PRETRAIN = Vocabulary(
    background="black",
    colours=("red", "green", "blue", "yellow"),
    shapes=("circle", "square", "triangle"),
    sizes=("small", "large"),
    cells=(
        ("at the top left", "at the top", "at the top right"),
        ("on the left", "in the center", "on the right"),
        ("at the bottom left", "at the bottom", "at the bottom right"),
    ),
)
_DOWNSTREAM = Vocabulary(
    background="white",
    colours=("red", "green", "blue", "yellow", "purple", "orange"),
    shapes=("circle", "square", "triangle", "star", "diamond"),
    sizes=("little", "big"),
    cells=(
        ("upper left", "upper middle", "upper right"),
        ("left", "middle", "right"),
        ("lower left", "lower middle", "lower right"),
    ),
)
VARIANTS = {
    "pretrain": _PRETRAIN,
    # the pretraining world (palette, shapes, black background) captioned in the downstream phrasing: a
    # caption-style shift with the visual world unchanged (what a frozen vision tower can still see)
    "restyle": replace(_PRETRAIN, sizes=_DOWNSTREAM.sizes, cells=_DOWNSTREAM.cells),
    "downstream": _DOWNSTREAM,
}

# Unit star outline (5 points, inner radius 0.45), written out so no libm rounding can change pixels.
_STAR = (
    (0.0, -1.0), (0.2645, -0.3641), (0.9511, -0.309), (0.428, 0.1391), (0.5878, 0.809),
    (0.0, 0.45), (-0.5878, 0.809), (-0.428, 0.1391), (-0.9511, -0.309), (-0.2645, -0.3641),
)  # fmt: skip


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    row: int
    col: int
    cx: int
    cy: int
    radius: int

    def as_json(self, vocab: Vocabulary) -> dict:
        return {
            "shape": self.kind, "colour": self.colour, "size": self.size,
            "position": vocab.cells[self.row][self.col], "center": [self.cx, self.cy], "radius": self.radius,
        }  # fmt: skip


def radii(image_size: int) -> tuple[int, int]:
    """(small, large) radius in pixels: large stays a pixel inside its cell, so shapes never touch."""
    cell = image_size / 3
    small = max(2, int(cell * 0.2))
    return small, max(small + 2, int(cell * 0.4))


def sample_scene(rng: StableRandom, vocab: Vocabulary, image_size: int) -> list[Shape]:
    """One or two shapes in distinct grid cells, each with a random colour, kind, size and jitter."""
    cell = image_size / 3
    count = 1 + rng.below(2)
    cells = rng.permutation(9)[:count]
    small, large = radii(image_size)
    shapes = []
    for index in sorted(cells):  # reading order, so captions list shapes top-left first
        row, col = divmod(index, 3)
        big = rng.below(2) == 1
        radius = large if big else small
        jitter = max(0, int(cell / 2 - radius - 1))
        shapes.append(
            Shape(
                kind=rng.choice(vocab.shapes),
                colour=rng.choice(vocab.colours),
                size=vocab.sizes[big],
                row=row,
                col=col,
                cx=int((col + 0.5) * cell) + rng.integer(-jitter, jitter),
                cy=int((row + 0.5) * cell) + rng.integer(-jitter, jitter),
                radius=radius,
            )
        )
    return shapes


def render(shapes: list[Shape], vocab: Vocabulary, image_size: int) -> Image.Image:
    """Draw the scene without anti-aliasing, so every shape pixel has exactly its colour's RGB."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUNDS[vocab.background])
    draw = ImageDraw.Draw(img)
    for s in shapes:
        fill = COLOURS[s.colour]
        x, y, r = s.cx, s.cy, s.radius
        if s.kind == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif s.kind == "square":
            draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
        elif s.kind == "triangle":
            draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
        elif s.kind == "diamond":
            draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
        elif s.kind == "star":
            draw.polygon([(round(x + u * r), round(y + v * r)) for u, v in _STAR], fill=fill)
        else:  # pragma: no cover - the vocabularies above only name the shapes handled here
            raise ValueError(f"unknown shape kind {s.kind!r}")
    return img


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _pretrain_captions(shapes: list[Shape], vocab: Vocabulary) -> list[str]:
    where = [vocab.cells[s.row][s.col] for s in shapes]
    return [
        " and ".join(f"{_a(s.size)} {s.colour} {s.kind} {w}" for s, w in zip(shapes, where, strict=True)),
        " and ".join(f"{_a(s.colour)} {s.kind} {w}" for s, w in zip(shapes, where, strict=True))
        + " of the image",
        "an image of " + " and ".join(f"{_a(s.size)} {s.colour} {s.kind}" for s in shapes),
    ]


def _downstream_captions(shapes: list[Shape], vocab: Vocabulary) -> list[str]:
    where = [vocab.cells[s.row][s.col] for s in shapes]
    located = [f"{s.colour} {s.kind} located in the {w} part" for s, w in zip(shapes, where, strict=True)]
    plain = [f"{_a(s.size)} {s.colour} {s.kind}" for s in shapes]
    if len(shapes) == 1:
        only = shapes[0]
        first = f"there is one {located[0]} of the picture"
        third = f"one {only.size} {only.colour} {only.kind} on a {vocab.background} background"
    else:
        first = "there are two shapes in the picture: one " + " and one ".join(located)
        third = f"two shapes on a {vocab.background} background, " + " and ".join(plain)
    shows = " together with ".join(
        f"{_a(s.size)} {s.kind} colored {s.colour} in the {w} part"
        for s, w in zip(shapes, where, strict=True)
    )
    return [first, "this picture shows " + shows, third]


def captions(rng: StableRandom, shapes: list[Shape], variant: str, count: int) -> list[str]:
    """``count`` captions in distinct phrasings (cycling once the phrasings run out)."""
    vocab = VARIANTS[variant]
    phrasings = (
        _pretrain_captions(shapes, vocab) if variant == "pretrain" else _downstream_captions(shapes, vocab)
    )
    order = rng.permutation(len(phrasings))
    return [phrasings[order[j % len(order)]] for j in range(count)]
