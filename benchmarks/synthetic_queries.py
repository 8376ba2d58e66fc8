"""Synthetic street-to-shop queries: catalogue photos made to look like a shopper's phone photo of the product.

Why: the question "a shopper photographs a product in a shop or at home; which catalogue product is it?" needs
query photos whose true product is known. Real ones are scarce (the Grocery Store Dataset and the Stanford MVS
DVD covers have them), so this script makes more from any catalogue, deterministically, with the nuisances a
phone photo has and a studio photo lacks. For ``--products`` products chosen with a fixed ``--seed`` it writes
``--per-product`` JPEGs each:

* the product is cut out of a plain studio backdrop when its border is uniform and light (``--cutout auto``;
  use ``--cutout never`` for full-bleed pictures such as covers, whose light parts touching the border would be
  cut away), then warped by a random moderate homography
  (each corner moved by up to ``--perspective`` of the side), rotated by up to ``--max-rotation`` degrees and
  scaled so that its bounding box spans 30-80% of the frame (``--scale``), at a random place in the frame;
* the background is clutter: a random crop of an unrelated photo (``--backgrounds``, e.g. the CC0 clothing
  sample), defocused, with a few more blurred patches of other photos, or random multi-scale textured noise
  (always when no background photos are given), plus a soft shadow under the product;
* the whole frame is relit (brightness, contrast, gamma, a colour cast, an uneven light gradient), blurred
  (defocus or a short motion streak), given sensor noise and recompressed as JPEG at quality 40-80.

It writes ``<out>/images/*.jpg``, ``<out>/queries.csv`` (``image,sku,kind``: absolute path, true SKU, the
``--kind`` label), ``<out>/transforms.csv`` (the parameters drawn for every query) and ``<out>/catalogue.csv``,
an imgsearch manifest (``sku,name,category,price,in_stock,image``) of the whole catalogue the queries are
searched against. The catalogue is a folder tree (every image below it is a product: SKU = file name stem,
category = its first folder) or a manifest CSV with at least ``sku`` and ``image`` (relative paths are taken
from the CSV's folder). The same arguments give byte-identical files (for a given Pillow/libjpeg). Only Pillow
and NumPy are needed::

    .venv/bin/python -m benchmarks.synthetic_queries ../shared/datasets/myntra-fashion-products \\
        --out /tmp/synthetic-fashion --products 300 --kind synthetic-fashion \\
        --backgrounds ../shared/datasets/clothing-cc0-sample
"""

from __future__ import annotations

import argparse
import csv
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
MANIFEST_COLUMNS = ["sku", "name", "category", "price", "in_stock", "image"]


@dataclass(frozen=True)
class Product:
    """One catalogue product and its (first) photo."""

    sku: str
    name: str
    category: str
    price: str
    in_stock: str
    image: Path


@dataclass(frozen=True)
class Settings:
    """The ranges the random nuisances are drawn from."""

    frame: int = 800
    scale: tuple[float, float] = (0.30, 0.80)
    perspective: float = 0.12
    max_rotation: float = 12.0
    quality: tuple[int, int] = (40, 80)
    noise_background: float = 0.25
    cutout: str = "auto"


def read_catalogue(source: Path) -> list[Product]:
    """Products of a folder tree (SKU = file stem, category = first folder) or of a manifest CSV."""
    products: list[Product] = []
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            parts = path.relative_to(source).parts
            category = parts[0] if len(parts) > 1 else ""
            products.append(Product(path.stem, path.stem, category, "10.00", "yes", path.resolve()))
    else:
        with source.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                image = Path(row["image"])
                if not image.is_absolute():
                    image = source.parent / image
                products.append(
                    Product(
                        sku=row["sku"],
                        name=row.get("name") or row["sku"],
                        category=row.get("category") or "",
                        price=row.get("price") or "10.00",
                        in_stock=row.get("in_stock") or "yes",
                        image=image.resolve(),
                    )
                )
    skus = [p.sku for p in products]
    if len(set(skus)) != len(skus):
        raise SystemExit(f"{source}: SKUs are not unique")
    if not products:
        raise SystemExit(f"{source}: no products")
    return products


def list_images(folders: Sequence[Path]) -> list[Path]:
    """Every image file below the given folders, in a stable order."""
    found: list[Path] = []
    for folder in folders:
        found.extend(sorted(p.resolve() for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
    return found


def open_rgb(path: Path) -> Image.Image:
    """Decode a photo upright (EXIF orientation applied) as RGB."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def product_mask(image: Image.Image, mode: str) -> Image.Image:
    """Alpha mask of the product: everything, or everything but a uniform light studio backdrop."""
    full = Image.new("L", image.size, 255)
    if mode == "never":
        return full
    a = np.asarray(image, dtype=np.float32)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    backdrop = np.median(border, axis=0)
    spread = np.mean(np.abs(border - backdrop).max(axis=1) < 18)
    if mode == "auto" and (spread < 0.85 or backdrop.min() < 200):
        return full
    distance = np.abs(a - backdrop).max(axis=2)
    # Backdrop = backdrop-coloured pixels connected to the border, so light parts inside the product stay.
    marks = Image.fromarray(((distance > 18) * 255).astype(np.uint8))
    marks = marks.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.MinFilter(3))  # close pinholes in outlines
    w, h = marks.size
    for x, y in (
        [(x, 0) for x in range(w)]
        + [(x, h - 1) for x in range(w)]
        + [(0, y) for y in range(h)]
        + [(w - 1, y) for y in range(h)]
    ):
        if marks.getpixel((x, y)) == 0:
            ImageDraw.floodfill(marks, (x, y), 128)
    mask = marks.point(lambda v: 0 if v == 128 else 255)
    if np.asarray(mask).mean() < 255 * 0.05:  # nothing found: keep the whole photo
        return full
    return mask.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.GaussianBlur(1.0))  # no light fringe


def solve_homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 homography taking the four ``src`` points to the four ``dst`` points."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    h = np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def place(
    size: tuple[int, int], frame: tuple[int, int], rng: np.random.Generator, s: Settings
) -> tuple[np.ndarray, dict[str, float]]:
    """Random homography from the product photo into the frame: perspective, rotation, scale, position."""
    w, h = size
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    jitter = rng.uniform(-s.perspective, s.perspective, size=(4, 2)) * np.array([w, h])
    moved = corners + jitter
    angle = float(rng.uniform(-s.max_rotation, s.max_rotation))
    theta = math.radians(angle)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    moved = (moved - moved.mean(axis=0)) @ rotation.T
    span = moved.max(axis=0) - moved.min(axis=0)
    scale = float(rng.uniform(*s.scale))
    factor = scale / max(span[0] / frame[0], span[1] / frame[1])
    moved = (moved - moved.min(axis=0)) * factor
    room = np.array(frame, dtype=np.float64) - (moved.max(axis=0))
    offset = rng.uniform(0, 1, size=2) * np.maximum(room, 0)
    moved += offset
    params = {"scale": scale, "rotation": angle, "perspective": float(np.abs(jitter / [w, h]).max())}
    return solve_homography(corners, moved), params


def warp(image: Image.Image, homography: np.ndarray, frame: tuple[int, int]) -> Image.Image:
    """The image seen through ``homography`` in a frame of the given size (outside: black/transparent)."""
    inverse = np.linalg.inv(homography)
    inverse /= inverse[2, 2]
    coefficients = tuple(float(c) for c in inverse.flatten()[:8])
    return image.transform(frame, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC)


def textured_noise(frame: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Random multi-scale coloured noise with a few soft blobs: a stand-in for an unknown cluttered scene."""
    w, h = frame
    canvas = np.zeros((h, w, 3), dtype=np.float32)
    for cells, weight in ((3, 0.5), (12, 0.3), (48, 0.15), (160, 0.05)):
        grid = rng.uniform(0, 255, size=(cells, max(2, cells * w // h), 3)).astype(np.uint8)
        layer = Image.fromarray(grid).resize(frame, Image.Resampling.BICUBIC)
        canvas += weight * np.asarray(layer, dtype=np.float32)
    grey = canvas.mean(axis=2, keepdims=True)
    canvas = grey + float(rng.uniform(0.2, 0.6)) * (canvas - grey)  # muted colours, like a real room
    base = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    for _ in range(int(rng.integers(3, 9))):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        bw, bh = int(rng.integers(w // 10, w // 2)), int(rng.integers(h // 10, h // 2))
        blob = Image.new("L", frame, 0)
        blob.paste(255, (x0, y0, x0 + bw, y0 + bh))
        blob = blob.filter(ImageFilter.GaussianBlur(float(rng.uniform(4, 20))))
        base = Image.composite(Image.new("RGB", frame, colour), base, blob.point(lambda v: v * 0.6))
    return base


def random_crop(photo: Image.Image, frame: tuple[int, int], rng: np.random.Generator, zoom: float) -> Image.Image:
    """A random crop of ``photo`` with the frame's aspect ratio, ``zoom`` of its largest fitting size."""
    pw, ph = photo.size
    aspect = frame[0] / frame[1]
    cw = min(pw, ph * aspect) * zoom
    ch = cw / aspect
    x0 = float(rng.uniform(0, pw - cw))
    y0 = float(rng.uniform(0, ph - ch))
    return photo.resize(frame, Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))


def background(
    frame: tuple[int, int], rng: np.random.Generator, photos: Sequence[Path], s: Settings
) -> tuple[Image.Image, str]:
    """Clutter: a defocused crop of an unrelated photo with a few more blurred patches, or textured noise."""
    if not photos or rng.uniform() < s.noise_background:
        return textured_noise(frame, rng), "noise"
    first = int(rng.integers(len(photos)))
    base = random_crop(open_rgb(photos[first]), frame, rng, float(rng.uniform(0.5, 1.0)))
    used = [photos[first].name]
    for _ in range(int(rng.integers(0, 4))):
        pick = int(rng.integers(len(photos)))
        pw = int(frame[0] * rng.uniform(0.15, 0.45))
        ph = int(frame[1] * rng.uniform(0.15, 0.45))
        patch = random_crop(open_rgb(photos[pick]), (pw, ph), rng, float(rng.uniform(0.4, 1.0)))
        base.paste(patch, (int(rng.integers(0, frame[0] - pw)), int(rng.integers(0, frame[1] - ph))))
        used.append(photos[pick].name)
    base = base.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 4.0))))
    return base, "+".join(used)


def relight(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict[str, float]]:
    """Brightness, contrast, gamma, a colour cast and an uneven light gradient over the whole frame."""
    a = np.asarray(image, dtype=np.float32) / 255.0
    brightness = float(rng.uniform(0.65, 1.25))
    contrast = float(rng.uniform(0.7, 1.2))
    gamma = float(rng.uniform(0.75, 1.35))
    cast = rng.uniform(0.88, 1.12, size=3).astype(np.float32)
    a = (a - 0.5) * contrast + 0.5
    a = np.clip(a * brightness * cast, 0, 1) ** gamma
    h, w = a.shape[:2]
    direction = float(rng.uniform(0, 2 * math.pi))
    strength = float(rng.uniform(0.0, 0.35))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xs / w - 0.5) * math.cos(direction) + (ys / h - 0.5) * math.sin(direction)) * strength
    a = np.clip(a * (1.0 + ramp)[..., None], 0, 1)
    params = {"brightness": brightness, "contrast": contrast, "gamma": gamma, "light_gradient": strength}
    return Image.fromarray((a * 255 + 0.5).astype(np.uint8)), params


def motion_kernel(rng: np.random.Generator) -> ImageFilter.Kernel:
    """A 5x5 kernel smearing along a random direction: a short hand-shake streak."""
    k = np.zeros((5, 5), dtype=np.float64)
    angle = float(rng.uniform(0, math.pi))
    for t in np.linspace(-2, 2, 9):
        k[round(2 + t * math.sin(angle)), round(2 + t * math.cos(angle))] += 1
    return ImageFilter.Kernel((5, 5), [float(v) for v in k.flatten()], scale=float(k.sum()))


def degrade(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict[str, float]]:
    """Defocus or motion blur, then Gaussian sensor noise (luminance and some chroma)."""
    if rng.uniform() < 0.3:
        image = image.filter(motion_kernel(rng))
        blur = -1.0
    else:
        blur = float(rng.uniform(0.0, 1.6))
        image = image.filter(ImageFilter.GaussianBlur(blur))
    sigma = float(rng.uniform(2.0, 9.0))
    a = np.asarray(image, dtype=np.float32)
    noise = rng.normal(0, sigma, size=a.shape[:2])[..., None] + rng.normal(0, sigma * 0.4, size=a.shape)
    out = np.clip(a + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(out), {"blur": blur, "noise_sigma": sigma}


def make_query(
    product: Product, rng: np.random.Generator, photos: Sequence[Path], s: Settings
) -> tuple[Image.Image, int, dict[str, object]]:
    """One synthetic shopper photo of ``product`` and the JPEG quality to save it at."""
    landscape = rng.uniform() < 0.5
    frame = (s.frame, s.frame * 3 // 4) if landscape else (s.frame * 3 // 4, s.frame)
    photo = open_rgb(product.image)
    mask = product_mask(photo, s.cutout)
    box = mask.point(lambda v: 255 if v > 8 else 0).getbbox()
    if box is not None and box != (0, 0, *photo.size):  # scale the product itself, not the studio margin
        pad = 4
        box = (
            max(0, box[0] - pad),
            max(0, box[1] - pad),
            min(photo.width, box[2] + pad),
            min(photo.height, box[3] + pad),
        )
        photo, mask = photo.crop(box), mask.crop(box)
    homography, params = place(photo.size, frame, rng, s)
    warped = warp(photo, homography, frame)
    warped_mask = warp(mask, homography, frame)
    scene, source = background(frame, rng, photos, s)
    shadow = warped_mask.filter(ImageFilter.GaussianBlur(float(rng.uniform(6, 16))))
    dx, dy = (int(v) for v in rng.integers(-12, 13, size=2))
    shadow = ImageOps.expand(shadow, border=12, fill=0).crop((12 - dx, 12 - dy, 12 - dx + frame[0], 12 - dy + frame[1]))
    darkness = float(rng.uniform(0.25, 0.55))
    scene = Image.composite(Image.new("RGB", frame, (0, 0, 0)), scene, shadow.point(lambda v: int(v * darkness)))
    scene = Image.composite(warped, scene, warped_mask)
    scene, light = relight(scene, rng)
    scene, noise = degrade(scene, rng)
    quality = int(rng.integers(s.quality[0], s.quality[1] + 1))
    cut = bool(np.asarray(mask).min() < 255)
    params = {**params, **light, **noise, "cutout": cut, "background": source, "frame": f"{frame[0]}x{frame[1]}"}
    return scene, quality, params


def query_rng(seed: int, sku: str, copy: int) -> np.random.Generator:
    """A generator for one query that depends only on the seed, the SKU and the copy number."""
    return np.random.default_rng([seed, zlib.crc32(sku.encode("utf-8")), copy])


def choose(products: Sequence[Product], count: int, seed: int) -> list[Product]:
    """``count`` products drawn without replacement with a fixed seed (all of them if there are fewer)."""
    if count >= len(products):
        return list(products)
    picks = np.random.default_rng(seed).choice(len(products), size=count, replace=False)
    return [products[int(i)] for i in sorted(picks)]


def safe_name(sku: str) -> str:
    """A file-name-safe form of a SKU."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in sku)


def write_outputs(
    products: Sequence[Product], chosen: Sequence[Product], out: Path, args: argparse.Namespace, s: Settings
) -> int:
    """Write the catalogue manifest, the query JPEGs, queries.csv and transforms.csv; return the query count."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    with (out / "catalogue.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        for p in products:
            writer.writerow([p.sku, p.name, p.category, p.price, p.in_stock, str(p.image)])
    photos = [p for p in list_images(args.backgrounds) if p not in {q.image for q in products}]
    queries: list[list[str]] = []
    details: list[dict[str, object]] = []
    for n, product in enumerate(chosen, 1):
        for copy in range(args.per_product):
            rng = query_rng(args.seed, product.sku, copy)
            scene, quality, params = make_query(product, rng, photos, s)
            suffix = f"_{copy + 1}" if args.per_product > 1 else ""
            path = (images / f"{safe_name(product.sku)}{suffix}.jpg").resolve()
            scene.save(path, "JPEG", quality=quality)
            queries.append([str(path), product.sku, args.kind])
            details.append({"image": str(path), "sku": product.sku, "quality": quality, **params})
        if n % 50 == 0:
            print(f"{n}/{len(chosen)} products")
    with (out / "queries.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "sku", "kind"])
        writer.writerows(queries)
    with (out / "transforms.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(details[0]))
        writer.writeheader()
        for row in details:
            writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    return len(queries)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: read the catalogue, choose products, write the synthetic queries."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("catalogue", type=Path, help="folder tree of product photos, or an imgsearch manifest CSV")
    parser.add_argument("--out", type=Path, required=True, help="output folder (images/, queries.csv, ...)")
    parser.add_argument("--products", type=int, default=300, help="how many products get queries (default 300)")
    parser.add_argument("--per-product", type=int, default=1, help="queries per chosen product (default 1)")
    parser.add_argument("--seed", type=int, default=20240611, help="random seed (default 20240611)")
    parser.add_argument("--kind", default="synthetic", help="value of the queries.csv kind column")
    parser.add_argument("--backgrounds", type=Path, nargs="*", default=[], help="folders of unrelated photos")
    parser.add_argument("--frame", type=int, default=800, help="long side of the query photo in pixels")
    parser.add_argument("--perspective", type=float, default=0.12, help="max corner shift, fraction of side")
    parser.add_argument("--max-rotation", type=float, default=12.0, help="max in-plane rotation in degrees")
    parser.add_argument("--cutout", choices=["auto", "always", "never"], default="auto", help="remove backdrop")
    args = parser.parse_args(argv)
    settings = Settings(
        frame=args.frame, perspective=args.perspective, max_rotation=args.max_rotation, cutout=args.cutout
    )
    products = read_catalogue(args.catalogue)
    chosen = choose(products, args.products, args.seed)
    count = write_outputs(products, chosen, args.out, args, settings)
    print(f"{len(products)} catalogue products, {len(chosen)} chosen, {count} queries -> {args.out}")


if __name__ == "__main__":
    main()
