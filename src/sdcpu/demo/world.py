"""The demo model's synthetic world: captions, the images they describe, and an oracle that checks
a generated image against its caption by pixel statistics. numpy and Pillow only.

One shape (circle, square or triangle) of a named colour, size (small, large) and position (left,
right, top, bottom, centre) on a plain background of another named colour, 64x64 pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.11, "large": 0.2}  # half-extent as a fraction of the image side
POSITIONS = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73), "centre": (0.5, 0.5)}
PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
TEMPLATES = (
    "a {size} {colour} {shape} {where}, {bg} background",
    "{size} {colour} {shape} {where} on a {bg} background",
    "{bg} background with a {size} {colour} {shape} {where}",
    "a {colour} {shape}, {size}, {where}; {bg} background",
    "{where} a {size} {colour} {shape}, the background is {bg}",
)
ATTRIBUTES = ("shape", "colour", "size", "position", "background")


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str

    def caption(self, template: int = 0) -> str:
        return TEMPLATES[template % len(TEMPLATES)].format(
            size=self.size, colour=self.colour, shape=self.shape, where=PHRASES[self.position], bg=self.background
        )


def all_scenes() -> list[Scene]:
    return [
        Scene(s, c, z, p, b)
        for s in SHAPES
        for c in COLOURS
        for z in SIZES
        for p in POSITIONS
        for b in COLOURS
        if b != c
    ]


def split_scenes(held_out: int = 240, seed: int = 1234) -> tuple[list[Scene], list[Scene]]:
    """(training scenes, held-out scenes): the held-out attribute combinations never appear in training."""
    scenes = all_scenes()
    order = np.random.default_rng(seed).permutation(len(scenes))
    test = {int(i) for i in order[:held_out]}
    return [s for i, s in enumerate(scenes) if i not in test], [scenes[i] for i in sorted(test)]


def vocabulary() -> list[str]:
    words: set[str] = set()
    for template in TEMPLATES:
        words.update(w for w in template.replace(",", " ").replace(";", " ").split() if "{" not in w)
    for phrase in PHRASES.values():
        words.update(phrase.split())
    words.update(SHAPES, COLOURS, SIZES)
    return sorted(words | {",", ";"})


def render(scene: Scene, rng: np.random.Generator | None = None) -> Image.Image:
    """Draw the scene; `rng` jitters position and size a little (training), None draws it exactly."""
    jitter = (lambda scale: float(rng.uniform(-scale, scale))) if rng is not None else (lambda scale: 0.0)
    image = Image.new("RGB", (SIZE, SIZE), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    cx, cy = POSITIONS[scene.position]
    cx, cy = (cx + jitter(0.04)) * SIZE, (cy + jitter(0.04)) * SIZE
    r = SIZES[scene.size] * (1 + jitter(0.1)) * SIZE
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif scene.shape == "square":
        side = r * 0.9  # equal area-ish with the circle keeps the size words honest
        draw.rectangle((cx - side, cy - side, cx + side, cy + side), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    return image


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    dists = [float(np.sum((rgb - np.array(COLOURS[n])) ** 2)) for n in names]
    return names[int(np.argmin(dists))]


def judge(image: Image.Image | np.ndarray) -> dict[str, str | None]:
    """What the image shows, attribute by attribute (None where there is no shape to see)."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if pixels.shape[:2] != (SIZE, SIZE):
        pixels = np.asarray(Image.fromarray(pixels.astype(np.uint8)).resize((SIZE, SIZE)), dtype=np.float32)
    border = np.concatenate(
        [
            pixels[:3].reshape(-1, 3),
            pixels[-3:].reshape(-1, 3),
            pixels[:, :3].reshape(-1, 3),
            pixels[:, -3:].reshape(-1, 3),
        ]
    )
    bg_rgb = np.median(border, axis=0)
    seen: dict[str, str | None] = {"background": _nearest_colour(bg_rgb)}
    mask = np.sqrt(((pixels - bg_rgb) ** 2).sum(-1)) > 80
    area = int(mask.sum())
    if area < 20:
        return {**seen, "shape": None, "colour": None, "size": None, "position": None}
    ys, xs = np.nonzero(mask)
    x0, x1 = np.percentile(xs, [0.5, 99.5])
    y0, y1 = np.percentile(ys, [0.5, 99.5])
    extent = max(x1 - x0, y1 - y0) + 1
    centre = np.array([xs.mean(), ys.mean()]) / SIZE
    seen["colour"] = _nearest_colour(np.median(pixels[mask], axis=0))
    seen["size"] = "large" if extent > SIZE * (SIZES["small"] + SIZES["large"]) else "small"
    seen["shape"] = max(SHAPES, key=lambda shape: _iou(mask, _template(shape, x0, x1, y0, y1)))
    seen["position"] = min(POSITIONS, key=lambda p: float(np.sum((centre - np.array(POSITIONS[p])) ** 2)))
    return seen


def _template(shape: str, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """The ideal silhouette of `shape` filling the box, as a mask. The box is inclusive (x1 is the last
    pixel column), as Pillow draws it: on exact renders a box one pixel larger lowers the true shape's
    IoU from 0.96 to 0.86 on average and its margin over the next best shape from 0.20 to 0.06 at worst."""
    image = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=1)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=1)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=1)
    return np.asarray(image, dtype=bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def score(scene: Scene, image: Image.Image | np.ndarray) -> dict[str, bool]:
    """Per attribute: does the image show what the caption names? Plus `all`."""
    seen = judge(image)
    right = {a: seen[a] == getattr(scene, a) for a in ATTRIBUTES}
    return {**right, "all": all(right.values())}
