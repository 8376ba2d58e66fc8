"""A hostile catalogue, made on the spot: every kind of file, manifest row and stock row that shops' exports and
folders have been seen to hold, each with what must happen to it (lands, or fails with a reason).

The files are generated rather than committed because some cannot live in git (a FIFO, links to devices, a
link that points at itself) and the large ones (a decompression bomb) would bloat the repository.
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "catalogue"
PHOTO = sorted((SAMPLE / "dress").glob("*.jpg"))[0]


@dataclass(frozen=True)
class Expected:
    """What must become of one item: ``reason`` is None if it lands, else a regex of its failure's reason."""

    reason: str | None


def _save(image: Image.Image, path: Path, **kwargs: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def image_folder(root: Path) -> dict[str, Expected]:
    """A ``<category>/<image>`` folder of odd but usable images and of bad files; SKU -> expected outcome."""
    photo = Image.open(PHOTO).convert("RGB")
    good, bad = root / "dress", root / "shoes"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    cases: dict[str, Expected] = {}

    def lands(name: str) -> None:
        cases[f"dress/{Path(name).stem}"] = Expected(None)

    shutil.copy(PHOTO, good / "real.jpg")
    lands("real.jpg")
    _save(Image.new("RGB", (1, 1), (200, 30, 30)), good / "one-pixel.png")
    lands("one-pixel.png")
    _save(Image.new("RGB", (100_000, 1), (10, 200, 10)), good / "very-wide.png")
    lands("very-wide.png")
    _save(photo.convert("CMYK"), good / "cmyk.jpg")
    lands("cmyk.jpg")
    gray16 = Image.new("I;16", (64, 48))
    gray16.putdata([i * 20 for i in range(64 * 48)])
    _save(gray16, good / "sixteen-bit.png")
    lands("sixteen-bit.png")
    palette = photo.resize((60, 80)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    _save(palette, good / "palette-transparent.png", transparency=0)
    lands("palette-transparent.png")
    frames = [photo.resize((50, 70)), photo.resize((50, 70)).rotate(90), Image.new("RGB", (50, 70), "blue")]
    _save(frames[0], good / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    lands("animated.gif")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated 90 degrees
    _save(photo, good / "exif-rotated.jpg", exif=exif)
    lands("exif-rotated.jpg")
    shutil.copy(PHOTO, good / "robe d'été n°1.jpg")  # non-ASCII, quote, spaces
    lands("robe d'été n°1.jpg")
    shutil.copy(PHOTO, good / "x'); DROP TABLE products; --.jpg")  # SQL-looking: only ever data
    lands("x'); DROP TABLE products; --.jpg")

    data = PHOTO.read_bytes()
    (bad / "empty.jpg").write_bytes(b"")
    cases["shoes/empty"] = Expected("empty")
    (bad / "text.jpg").write_text("this is not a picture")
    cases["shoes/text"] = Expected("not an image")
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 3])
    cases["shoes/truncated"] = Expected("truncated|corrupt")
    _save(Image.new("1", (15_000, 15_000)), bad / "bomb.png")  # 225 Mpixel in a few KB
    cases["shoes/bomb"] = Expected("too large|decompression")
    os.mkfifo(bad / "fifo.jpg")  # reading it would wait for a writer forever
    cases["shoes/fifo"] = Expected("not a regular file")
    (bad / "zeros.jpg").symlink_to("/dev/zero")  # endless
    cases["shoes/zeros"] = Expected("not a regular file")
    (bad / "loop.jpg").symlink_to(bad / "loop.jpg")
    cases["shoes/loop"] = Expected("symbolic link loop")
    (bad / "dangling.jpg").symlink_to(bad / "nowhere.jpg")
    cases["shoes/dangling"] = Expected("file not found")
    shutil.copy(PHOTO, bad / "twin.jpg")
    _save(photo, bad / "twin.png")  # same stem: which is the product's photo?
    cases["shoes/twin"] = Expected("2 files give this SKU")
    (bad / "loop-folder").symlink_to(root)  # a folder link back up: not followed, so no endless walk
    (bad / "notes.txt").write_text("supplier notes")
    cases["shoes/notes"] = Expected("not a supported image type")
    return cases


def manifest(folder: Path) -> tuple[bytes, list[tuple[str | None, str | None]]]:
    """A manifest CSV (bytes: a byte-order mark, LF and CRLF lines) whose images are in ``folder`` (the CSV is
    meant to be saved there), and the outcome of each row: ``(sku, None)`` lands, ``(sku, reason regex)`` fails
    (``sku`` None where the row has none to name)."""
    image = "dress/real.jpg"
    os.mkfifo(folder / "pipe.jpg")
    rows: list[tuple[bytes, str | None, str | None]] = []

    def row(text: str | bytes, sku: str | None, reason: str | None) -> None:
        rows.append((text if isinstance(text, bytes) else text.encode(), sku, reason))

    row(f"ok-1,Plain,dress,10.00,true,{image}", "ok-1", None)
    row(f'ok-2,"O\'Neil ""Best"" shoe; DROP TABLE products;--",dress,12.5,yes,{image}', "ok-2", None)
    row(f"ok-3,,dress,,,{image}", "ok-3", None)  # optional fields empty
    row(f'"ok-4","A name\nover two lines",dress,1,in stock,{image}', "ok-4", None)  # a quoted line break: fine
    row(f"ok-5,Robe d'été,dress,0,sold out,{image}\r", "ok-5", None)  # a CRLF line
    row(b"bad-utf8,caf\xe9 au lait,dress,1,true," + image.encode(), "bad-utf8", "name is not valid UTF-8")
    row(f"bad-nul\x00,Nul,dress,1,true,{image}", "bad-nul\x00", "sku contains a NUL")
    row(f"{'s' * 300},Long sku,dress,1,true,{image}", "s" * 97 + "...", "sku is 300 characters long")
    row(f"bad-cat,Long category,{'c' * 100_000},1,true,{image}", "bad-cat", "category is 100000 characters")
    row(f"bad-huge,{'n' * 200_000},dress,1,true,{image}", None, "field larger than field limit")
    row(f"bad-exp,Huge price,dress,1e400,true,{image}", "bad-exp", "price must be a number like 12.50")
    row(f"bad-nan,NaN price,dress,NaN,true,{image}", "bad-nan", "price must be a number like 12.50")
    row(f"bad-cents,Half a cent,dress,0.005,true,{image}", "bad-cents", "at most 2 decimals")
    row(f"bad-neg,Negative,dress,-1,true,{image}", "bad-neg", "price must be between")
    row(f"bad-comma,Comma,dress,1,50,true,{image}", "bad-comma", "7 fields but the header has 6")
    row(f"bad-stock,Maybe,dress,1,maybe,{image}", "bad-stock", "in_stock must be")
    row(f"two-photos,Two,dress,1,true,{image}", "two-photos", None)  # a SKU repeated with the same fields:
    row("two-photos,Two,dress,1,true,dress/cmyk.jpg", None, None)  # a second photo of the same product
    row(f"dup,First,dress,1,true,{image}", "dup", None)
    row("dup,Second,dress,2,true,dress/cmyk.jpg", "dup", "the rows of this SKU disagree: name Second here")
    row(f"dup-photo,Same,dress,1,true,{image}", "dup-photo", None)
    row(f"dup-photo,Same,dress,1,true,{image}", "dup-photo", "image given twice for this SKU")
    row(f",No sku,dress,1,true,{image}", None, "missing sku")
    row(f"no-cat,No category,,1,true,{image}", "no-cat", "missing category")
    row("no-file,Missing file,dress,1,true,dress/nope.jpg", "no-file", "file not found")
    row("fifo,A FIFO,dress,1,true,pipe.jpg", "fifo", "not a regular file")
    row(b"", None, None)  # a blank line is skipped
    # A quote left open: without a check it swallows the rows after it into one name, unreported. The
    # failure names both lines; the swallowed row cannot land.
    row(f'open-quote,"Broken name,dress,1,true,{image}', "open-quote", "runs over lines .*quote is left open")
    row(f"swallowed,Next row,dress,1,true,{image}", None, None)
    header = b"\xef\xbb\xbfsku,name,category,price,in_stock,image\n"
    body = header + b"\n".join(text for text, _, _ in rows) + b"\n"
    return body, [(sku, reason) for text, sku, reason in rows if text and (sku or reason)]


def stock_file() -> tuple[bytes, dict[str, bool], list[str]]:
    """A stock CSV (bytes) for the products ``ok-1``..``ok-3``: the changes that must land and the reasons of the
    rows that must fail, one each."""
    lines = [
        b"\xef\xbb\xbfsku,in_stock,warehouse",
        b"ok-1,false,north",
        b"ok-2,out of stock,south",
        b'"ok-3",0,"a ""quoted"" note"',
        b"caf\xe9,true,x",
        b"nul\x00,true,x",
        b"ok-9,perhaps,x",
        b"twice,true,x",
        b"twice,false,x",
        b"x" * 300 + b",true,x",
        b"big," + b"y" * 200_000 + b",x",
        b"'; DROP TABLE products; --,false,x",
        b"",
    ]
    must_land = {"ok-1": False, "ok-2": False, "ok-3": False}
    reasons = [
        "not valid UTF-8",
        "NUL",
        "in_stock must be",
        "duplicate sku",
        "duplicate sku",
        "sku is 300 characters long",
        "field larger than field limit",
        "unknown SKU",
    ]
    return b"\n".join(lines), must_land, reasons


def png_bytes(size: tuple[int, int] = (32, 32)) -> bytes:
    """A small valid PNG, for tests that need image bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, format="PNG")
    return buffer.getvalue()
