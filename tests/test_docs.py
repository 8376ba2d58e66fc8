"""The README's Python examples run as written, against a real database (with the stand-in network)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text(encoding="utf-8"))


def test_the_readmes_python_examples_run(
    database_url: str, fake_weights: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = python_blocks(REPO / "README.md")
    assert blocks, "the README has Python examples"
    # The files the examples name, in the folder they run in: the sample catalogue, a feed and a stock file like
    # it, and a shopper's photo large enough for the example's crop box.
    (tmp_path / "examples").symlink_to(REPO / "examples")
    products = (REPO / "examples" / "products.csv").read_text(encoding="utf-8")
    (tmp_path / "feed.csv").write_text(products.replace(",catalogue/", ",examples/catalogue/"), encoding="utf-8")
    (tmp_path / "stock.csv").write_text("sku,in_stock\nshoes-253dc2b9,false\n", encoding="utf-8")
    sample = next((REPO / "examples" / "catalogue" / "shoes").glob("*.jpg"))
    with Image.open(sample) as photo:
        photo.convert("RGB").resize((1000, 1200)).save(tmp_path / "photo.jpg", quality=90)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMGSEARCH_DATABASE_URL", database_url)
    monkeypatch.setenv("IMGSEARCH_VGG16_WEIGHTS", fake_weights)
    rng = np.random.default_rng(0)
    namespace: dict[str, object] = {"vector": rng.random(512), "vectors": rng.random((3, 512))}  # "you already have"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # the documentation's own code
    shop = namespace["shop"]
    # What the example did is in the catalogue: 120 products loaded, one removed, one marked sold out.
    assert shop.stats().products == 119  # type: ignore[attr-defined]
    assert shop.get("shoes-24535295") is None and not shop.get("shoes-253dc2b9").in_stock  # type: ignore[attr-defined]
