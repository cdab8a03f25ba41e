"""Deterministic synthetic shop: product images, descriptions, users and interactions.

The demo cannot ship anybody's catalog, so it generates one: products are drawn shapes (one shape per
category) in a named colour with a pattern, described by templated texts built from the same
attributes, with a realistic share of missing images and texts. Users prefer a few categories and
colours and interact mostly with matching items, so a recommender has real signal to learn.

Layout of the folder written by :func:`make_sample_shop`::

    catalog.csv        item_id,text,image,title,category,colour,pattern (image relative to the folder)
    images/<id>.png    one PNG per item that has an image
    interactions.csv   user_id,item_id,timestamp (each user's timestamps increase)
    users.csv          user_id,categories,colours,pattern (the preferences the log was drawn from)
    attributes.json    attribute vocabularies and the generation settings
    manifest.json      the arguments, used to reuse a complete folder
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from dgmrec_core.atomic import atomic_folder
from dgmrec_core.errors import DataError
from dgmrec_core.jsonfiles import read_json

GENERATOR_VERSION = 2

CATEGORIES = ("t-shirt", "mug", "lamp", "chair", "bag", "shoe", "hat", "bottle", "clock", "book")
COLOURS = {
    "red": (200, 30, 35), "orange": (240, 130, 20), "yellow": (240, 210, 40),
    "green": (40, 150, 60), "blue": (40, 80, 200), "purple": (120, 50, 160),
    "pink": (240, 130, 180), "brown": (120, 75, 40), "black": (30, 30, 30),
    "white": (248, 248, 248),
}
PATTERNS = ("plain", "striped", "dotted", "checked")

# Missing-modality shares: no image (text only), no text (image only), neither.
SHARE_NO_IMAGE = 0.15
SHARE_NO_TEXT = 0.15
SHARE_NEITHER = 0.05

# Shapes in unit coordinates of the product's box: (kind, coords[, ring width as a box fraction]).
_SHAPES: dict[str, tuple[tuple, ...]] = {
    "t-shirt": (("poly", ((.3, .05), (.42, .12), (.58, .12), (.7, .05), (1, .25), (.88, .42),
                          (.78, .36), (.78, 1), (.22, 1), (.22, .36), (.12, .42), (0, .25))),),
    "mug": (("ring", (.52, .28, .98, .8), .1), ("rect", (.05, .12, .72, 1))),
    "lamp": (("poly", ((.25, 0), (.75, 0), (.95, .42), (.05, .42))), ("rect", (.45, .42, .55, .9)),
             ("ellipse", (.18, .84, .82, 1))),
    "chair": (("rect", (.1, 0, .32, .56)), ("rect", (.1, .48, .92, .64)), ("rect", (.1, .6, .24, 1)),
              ("rect", (.78, .6, .92, 1))),
    "bag": (("ring", (.27, 0, .73, .62), .08), ("poly", ((.1, .36), (.9, .36), (1, 1), (0, 1)))),
    "shoe": (("poly", ((0, .55), (.04, .28), (.3, .34), (.44, .12), (.6, .16), (.7, .44), (1, .6),
                       (1, .88), (0, .88))),),
    "hat": (("ellipse", (.25, .05, .75, .5)), ("rect", (.25, .27, .75, .75)), ("ellipse", (0, .6, 1, .9))),
    "bottle": (("rect", (.4, .04, .6, .3)), ("ellipse", (.18, .18, .82, .5)), ("rect", (.18, .34, .82, 1))),
    "clock": (("ellipse", (0, 0, 1, 1)),),
    "book": (("rect", (.08, 0, .92, 1)),),
}
# Width / height of each category's box.
_ASPECT = {"t-shirt": 1.0, "mug": 1.05, "lamp": .7, "chair": .75, "bag": 1.0, "shoe": 1.6, "hat": 1.35,
           "bottle": .5, "clock": 1.0, "book": .72}

_WORDS = {  # category: (materials, features, uses)
    "t-shirt": (("cotton", "organic cotton", "linen-blend"),
                ("with a crew neck", "with short sleeves", "with a relaxed fit", "cut from soft jersey"),
                ("everyday wear", "summer days", "casual weekends", "layering")),
    "mug": (("ceramic", "stoneware", "porcelain"),
            ("with a sturdy handle", "that holds 350 ml", "with a glossy glaze", "that is dishwasher safe"),
            ("morning coffee", "tea breaks", "hot chocolate", "the office desk")),
    "lamp": (("metal", "ceramic", "brass"),
             ("with a fabric shade", "with a slim stem", "with a weighted base", "with a warm LED bulb"),
             ("reading corners", "bedside tables", "the living room", "late-night study")),
    "chair": (("wooden", "oak", "beech"),
              ("with a high back", "with sturdy legs", "with a padded seat", "that stacks easily"),
              ("dining rooms", "the kitchen", "home offices", "cafes")),
    "bag": (("canvas", "leather", "nylon"),
            ("with a top handle", "with an inner pocket", "with a zip closure", "with reinforced seams"),
            ("shopping trips", "the daily commute", "weekend getaways", "the gym")),
    "shoe": (("leather", "suede", "canvas"),
             ("with a rubber sole", "with cushioned insoles", "with a low profile", "with lace-up fastening"),
             ("city walks", "everyday wear", "smart occasions", "long days on your feet")),
    "hat": (("wool", "felt", "straw"),
            ("with a wide brim", "with a soft crown", "with a ribbon band", "that folds flat"),
            ("sunny days", "autumn walks", "festivals", "travel")),
    "bottle": (("glass", "stainless steel", "BPA-free plastic"),
               ("with a screw cap", "that holds 750 ml", "with a leak-proof lid", "that keeps drinks cold"),
               ("hiking", "the gym", "school lunches", "road trips")),
    "clock": (("wooden", "metal", "plastic"),
              ("with clear hands", "with a silent movement", "with a round face", "with bold markers"),
              ("the kitchen", "the hallway", "classrooms", "offices")),
    "book": (("hardcover", "paperback", "clothbound"),
             ("with 320 pages", "with a sewn binding", "with a ribbon marker", "with thick cream paper"),
             ("notes and sketches", "journaling", "gift giving", "planning the week")),
}
_PATTERN_ADJ = {"plain": "plain", "striped": "striped", "dotted": "polka-dot", "checked": "checkered"}
_PATTERN_WITH = {"plain": "in a single solid tone", "striped": "with bold stripes",
                 "dotted": "covered in little dots", "checked": "in a checked print"}
_TEMPLATES = (
    "A {colour} {padj} {noun} {feature}, ideal for {use}.",
    "{Material} {noun} in {colour} with a {padj} finish. Great for {use}.",
    "This {material} {noun} in {colour} comes {pwith}; perfect for {use}.",
    "{Colour} {noun}, {padj}, {material}. {Feature}.",
    "Our best-selling {noun}: {colour}, {padj} and {material}, {feature}.",
)
_FILLERS = ("", "", " Free returns within 30 days.", " Ships in two days.", " A customer favourite.",
            " Limited stock.")


def make_sample_shop(out_dir: str | Path, *, n_items: int = 3000, n_users: int = 1500, seed: int = 0,
                     image_size: int = 96) -> Path:
    """Write a deterministic sample shop into ``out_dir`` and return that folder.

    The folder is built beside ``out_dir`` and renamed into place. A folder already holding a shop made
    with the same arguments is returned at once; one made with other arguments is replaced; any other
    non-empty folder is left alone (``DataError``).
    """
    out_dir = Path(out_dir)
    if n_items < 1 or n_users < 1 or image_size < 32:
        raise DataError(out_dir, f"need n_items >= 1, n_users >= 1 and image_size >= 32, got "
                        f"{n_items}, {n_users}, {image_size}")
    manifest = {"generator": "dgmrec-sample-shop", "version": GENERATOR_VERSION,
                "args": {"n_items": n_items, "n_users": n_users, "seed": seed, "image_size": image_size}}
    if read_json(out_dir / "manifest.json") == manifest:
        return out_dir
    if out_dir.exists() and read_json(out_dir / "manifest.json") is None and any(out_dir.iterdir()):
        raise DataError(out_dir, "folder exists and is not a sample shop; refusing to replace it")

    with atomic_folder(out_dir) as tmp:
        _build(tmp, n_items=n_items, n_users=n_users, seed=seed, image_size=image_size)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def _build(folder: Path, *, n_items: int, n_users: int, seed: int, image_size: int) -> None:
    rng = np.random.default_rng(seed)
    n_cat, n_col, n_pat = len(CATEGORIES), len(COLOURS), len(PATTERNS)
    cat = rng.integers(n_cat, size=n_items)
    col = rng.integers(n_col, size=n_items)
    pat = rng.choice(n_pat, size=n_items, p=[.4, .2, .2, .2])
    # 0 both, 1 no image, 2 no text, 3 neither.
    presence = rng.choice(4, size=n_items, p=[1 - SHARE_NO_IMAGE - SHARE_NO_TEXT - SHARE_NEITHER,
                                             SHARE_NO_IMAGE, SHARE_NO_TEXT, SHARE_NEITHER])
    has_image = (presence == 0) | (presence == 2)
    has_text = (presence == 0) | (presence == 1)
    item_ids = [f"P{i + 1:05d}" for i in range(n_items)]
    draw_params = _draw_params(rng, n_items, image_size)
    text_choices = rng.integers(0, 60, size=(n_items, 5))  # 60: divisible by every list length used

    colour_names, colour_rgbs = list(COLOURS), list(COLOURS.values())
    rows = []
    for i in range(n_items):
        category, colour, pattern = CATEGORIES[cat[i]], colour_names[col[i]], PATTERNS[pat[i]]
        rows.append({
            "item_id": item_ids[i],
            "text": _describe(category, colour, pattern, text_choices[i]) if has_text[i] else "",
            "image": f"images/{item_ids[i]}.png" if has_image[i] else "",
            "title": _title(category, colour, pattern),
            "category": category, "colour": colour, "pattern": pattern,
        })
    _write_csv(folder / "catalog.csv", list(rows[0]), rows)

    (folder / "images").mkdir()
    for i in tqdm(np.flatnonzero(has_image), desc="drawing sample shop images", unit="img"):
        image = _draw_item(CATEGORIES[cat[i]], colour_rgbs[col[i]], PATTERNS[pat[i]], draw_params[i],
                           image_size)
        image.save(folder / rows[i]["image"], optimize=False)

    users, inter = _make_users(rng, n_users, cat, col, pat, item_ids)
    _write_csv(folder / "users.csv", list(users[0]), users)
    _write_csv(folder / "interactions.csv", ["user_id", "item_id", "timestamp"], inter)
    (folder / "attributes.json").write_text(json.dumps({
        "category": list(CATEGORIES), "colour": list(COLOURS), "pattern": list(PATTERNS),
        "colour_rgb": {k: list(v) for k, v in COLOURS.items()},
        "missing_shares": {"no_image": SHARE_NO_IMAGE, "no_text": SHARE_NO_TEXT, "neither": SHARE_NEITHER},
    }, indent=2) + "\n")


def _write_csv(path: Path, header: list[str], rows: list) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([r[k] for k in header] if isinstance(r, dict) else r for r in rows)


def _title(category: str, colour: str, pattern: str) -> str:
    words = [colour.capitalize()] + ([] if pattern == "plain" else [_PATTERN_ADJ[pattern]]) + [category]
    return " ".join(words)


def _describe(category: str, colour: str, pattern: str, choice: np.ndarray) -> str:
    materials, features, uses = _WORDS[category]
    material, feature = materials[choice[1] % len(materials)], features[choice[2] % len(features)]
    template = _TEMPLATES[choice[0] % len(_TEMPLATES)]
    text = template.format(
        colour=colour, Colour=colour.capitalize(), noun=category, padj=_PATTERN_ADJ[pattern],
        pwith=_PATTERN_WITH[pattern], material=material, Material=material.capitalize(),
        feature=feature, Feature=feature[0].upper() + feature[1:], use=uses[choice[3] % len(uses)])
    return text + _FILLERS[choice[4] % len(_FILLERS)]


def _draw_params(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Per-item jitter, one row each: box size, centre x/y, background grey, background tint rgb,
    colour jitter rgb, pattern period, pattern phase, stripe orientation, lighting slope (14 columns)."""
    return np.column_stack([
        rng.uniform(.55, .85, n) * size,                 # 0 longest side of the product's box
        rng.uniform(-.08, .08, (n, 2)) * size,           # 1-2 centre offset
        rng.uniform(190, 240, n),                        # 3 background grey
        rng.uniform(-10, 10, (n, 3)),                    # 4-6 background tint
        rng.uniform(-14, 14, (n, 3)),                    # 7-9 product colour jitter
        rng.uniform(.09, .15, n) * size,                 # 10 pattern period
        rng.uniform(0, 1, n),                            # 11 pattern phase (fraction of a period)
        rng.integers(0, 3, n),                           # 12 stripe orientation
        rng.uniform(-.12, .12, n),                       # 13 background lighting slope
    ])


def _draw_item(category: str, rgb: tuple[int, int, int], pattern: str, p: np.ndarray,
               size: int) -> Image.Image:
    """Render one product: background, patterned shape, dark outline and category details."""
    aspect = _ASPECT[category]
    side = p[0]
    w, h = (side, side / aspect) if aspect >= 1 else (side * aspect, side)
    cx, cy = size / 2 + p[1], size / 2 + p[2]
    box = (cx - w / 2, cy - h / 2, w, h)

    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for shape in _SHAPES[category]:
        _draw_shape(draw, shape, box)
    inside = np.asarray(mask) > 127
    edge = inside & ~(np.asarray(mask.filter(ImageFilter.MinFilter(3))) > 127)

    base = np.clip(np.array(rgb, dtype=np.float32) + p[7:10], 0, 255)
    ink = np.array([70, 70, 70] if base.mean() > 170 else [245, 245, 240], dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period, phase = p[10], p[11] * p[10]
    if pattern == "striped":
        coord = (yy, xx, xx + yy)[int(p[12])]
        marked = (coord + phase) % period < period * .45
    elif pattern == "dotted":
        dx, dy = (xx + phase) % period - period / 2, (yy + phase) % period - period / 2
        marked = dx * dx + dy * dy < (period * .27) ** 2
    elif pattern == "checked":
        marked = ((((xx + phase) // period) + ((yy + phase) // period)) % 2) == 0
    else:
        marked = np.zeros_like(inside)

    light = 1 + p[13] * (yy[..., None] / size - .5)             # soft top-to-bottom lighting
    pixels = np.clip(p[3] + p[4:7], 0, 255).astype(np.float32) * light
    pixels[inside] = base
    pixels[inside & marked] = ink
    pixels[edge] = base * .45
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    _draw_details(ImageDraw.Draw(image), category, box, dark=base.mean() > 60)
    return image


def _to_px(box: tuple[float, float, float, float], coords) -> list[tuple[float, float]]:
    x0, y0, w, h = box
    return [(x0 + x * w, y0 + y * h) for x, y in coords]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: tuple, box: tuple[float, float, float, float]) -> None:
    kind, coords = shape[0], shape[1]
    if kind == "poly":
        draw.polygon(_to_px(box, coords), fill=255)
        return
    (ax, ay), (bx, by) = _to_px(box, (coords[:2], coords[2:]))
    if kind == "rect":
        draw.rectangle((ax, ay, bx, by), fill=255)
    elif kind == "ellipse":
        draw.ellipse((ax, ay, bx, by), fill=255)
    else:  # ring: a handle
        draw.ellipse((ax, ay, bx, by), outline=255, width=max(2, round(shape[2] * box[2])))


def _draw_details(draw: ImageDraw.ImageDraw, category: str, box: tuple[float, float, float, float],
                  dark: bool) -> None:
    """Details that make some shapes recognisable (clock hands, book spine, shoe sole, bottle cap), dark
    on light products and light on dark ones."""
    x0, y0, w, h = box
    dark = (40, 40, 40) if dark else (225, 225, 225)
    if category == "clock":
        cx, cy = x0 + w / 2, y0 + h / 2
        draw.line((cx, cy, cx, y0 + h * .18), fill=dark, width=2)
        draw.line((cx, cy, x0 + w * .72, cy + h * .1), fill=dark, width=2)
        draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=dark)
    elif category == "book":
        draw.line((x0 + w * .2, y0, x0 + w * .2, y0 + h), fill=dark, width=2)
        draw.rectangle((x0 + w * .84, y0 + h * .03, x0 + w * .9, y0 + h * .97), fill=(235, 230, 215))
    elif category == "shoe":
        draw.rectangle((x0, y0 + h * .8, x0 + w, y0 + h * .88), fill=dark)
    elif category == "bottle":
        draw.rectangle((x0 + w * .37, y0, x0 + w * .63, y0 + h * .1), fill=dark)


def _make_users(rng: np.random.Generator, n_users: int, cat: np.ndarray, col: np.ndarray, pat: np.ndarray,
                item_ids: list[str]) -> tuple[list[dict], list[list]]:
    """Users with 1-2 favourite categories and colours and one favourite pattern; each picks 20-60 items
    without replacement with weights favouring matches (Gumbel top-k), at increasing timestamps."""
    n_items = len(item_ids)
    n_cat, n_col, n_pat = len(CATEGORIES), len(COLOURS), len(PATTERNS)
    like_cat = _random_subsets(rng, n_users, n_cat, rng.integers(1, 3, n_users))
    like_col = _random_subsets(rng, n_users, n_col, rng.integers(1, 3, n_users))
    like_pat = rng.integers(n_pat, size=n_users)
    counts = rng.integers(20, 61, n_users)
    popularity = rng.normal(0, .5, n_items).astype(np.float32)

    match_cat = like_cat[:, cat]                                   # users x items, bool
    match_col = like_col[:, col]
    logits = 3.0 * match_cat + 3.0 * match_col + 1.0 * (match_cat & match_col) \
        + 0.7 * (like_pat[:, None] == pat[None, :]) + popularity[None, :]
    keys = logits.astype(np.float32) + rng.gumbel(size=(n_users, n_items)).astype(np.float32)
    top = min(int(counts.max()), n_items)
    picked = np.argpartition(-keys, top - 1, axis=1)[:, :top]
    picked = np.take_along_axis(picked, np.argsort(-np.take_along_axis(keys, picked, 1), axis=1), 1)

    start = rng.uniform(1.60e9, 1.70e9, n_users)
    gaps = rng.exponential(86400.0, (n_users, top))
    stamps = (start[:, None] + np.cumsum(gaps, axis=1)).astype(np.int64)
    keep = np.arange(top)[None, :] < counts[:, None]
    u_idx, slot = np.nonzero(keep)
    order = np.argsort(stamps[u_idx, slot], kind="stable")
    u_idx, slot = u_idx[order], slot[order]
    user_ids = [f"U{u + 1:05d}" for u in range(n_users)]
    inter = [[user_ids[u], item_ids[i], int(t)]
             for u, i, t in zip(u_idx, picked[u_idx, slot], stamps[u_idx, slot])]
    colours = list(COLOURS)
    users = [{"user_id": user_ids[u],
              "categories": "|".join(CATEGORIES[c] for c in np.flatnonzero(like_cat[u])),
              "colours": "|".join(colours[c] for c in np.flatnonzero(like_col[u])),
              "pattern": PATTERNS[like_pat[u]]} for u in range(n_users)]
    return users, inter


def _random_subsets(rng: np.random.Generator, n: int, size: int, k: np.ndarray) -> np.ndarray:
    """Boolean n x size matrix with k[r] random True entries in row r."""
    ranks = np.argsort(np.argsort(rng.random((n, size)), axis=1), axis=1)
    return ranks < k[:, None]
