"""imgsearch.Catalogue: the one handle a Python program (and the CLI and the service) uses."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from imgsearch import Catalogue, Settings, indexes
from imgsearch.api import PruneRefusedError
from imgsearch.errors import ImageError, UnknownCategoryError

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "catalogue"


def _shop(root: Path, per_category: int) -> Path:
    for category in ("dress", "shoes", "hat"):
        (root / category).mkdir(parents=True)
        for photo in sorted((SAMPLE / category).glob("*.jpg"))[:per_category]:
            shutil.copy(photo, root / category / photo.name)
    return root


@pytest.fixture
def shop(database_url: str, fake_weights: str) -> Iterator[Catalogue]:
    settings = Settings(weights=fake_weights, category_index_min_products=4)
    with Catalogue(database_url, settings=settings) as handle:
        yield handle


def test_a_python_ingest_gets_what_the_command_gets(shop: Catalogue, engine: Engine, tmp_path: Path) -> None:
    folder = _shop(tmp_path / "shop", per_category=6)
    built: list[str] = []
    report = shop.ingest(folder, on_index=lambda index: built.append(index.category))
    assert (report.added, report.failed) == (18, 0)
    # Category indexes are kept where they pay, as after `imgsearch ingest` (6 products each, threshold 4).
    assert sorted(built) == ["dress", "hat", "shoes"]
    assert sorted(i.category for i in indexes.list_category_indexes(engine)) == ["dress", "hat", "shoes"]
    # A photo of the catalogue finds its own product first, verified.
    photo = sorted(folder.glob("hat/*.jpg"))[2]
    first = shop.search_image(photo, 3)[0]
    assert (first.sku, first.match) == (f"hat/{photo.stem}", "exact")
    alike = shop.similar(first.sku, 3)
    assert len(alike) == 3 and first.sku not in [r.sku for r in alike]
    assert shop.get(first.sku) is not None and not shop.is_empty()
    assert shop.stats().products == 18
    assert shop.drop_indexes(["hat"]) == 1
    with pytest.raises(UnknownCategoryError, match="no category index for 'hat'"):
        shop.drop_indexes(["hat", "dress"])
    assert sorted(i.category for i in shop.list_indexes()) == ["dress", "shoes"]


def test_a_truncated_feed_is_refused_before_anything_changes(shop: Catalogue, tmp_path: Path) -> None:
    folder = _shop(tmp_path / "shop", per_category=4)
    shop.ingest(folder, index=False)
    for photo in [*sorted((folder / "dress").glob("*.jpg")), *sorted((folder / "shoes").glob("*.jpg"))]:
        photo.unlink()
    with pytest.raises(PruneRefusedError, match="nothing was changed"):
        shop.sync(folder, index=False)  # 8 of 12 products would go: more than the allowed share
    assert shop.stats().products == 12
    report = shop.sync(folder, force=True, index=False)
    assert report.pruned is not None and report.pruned.changed == 8 and shop.stats().products == 4


def test_a_stock_file_applies_its_good_rows_and_returns_the_rest(shop: Catalogue, tmp_path: Path) -> None:
    folder = _shop(tmp_path / "shop", per_category=1)
    shop.ingest(folder, index=False)
    skus = [f"{p.parent.name}/{p.stem}" for p in sorted(folder.glob("*/*.jpg"))]
    stock = tmp_path / "stock.csv"
    stock.write_text("sku,in_stock,price\n" + "".join(f"{sku},false,9.50\n" for sku in skus) + "NO-SUCH,false,1\n")
    report = shop.apply_stock_file(stock)
    assert (report.changed, report.given, report.unknown) == (3, 4, 1)
    assert [f.reason for f in report.failures] == ["unknown SKU"]
    assert shop.stats().in_stock == 0


def test_a_bad_photo_fails_before_the_network_is_loaded(database_url: str, tmp_path: Path) -> None:
    # Weights that do not exist: loading the network would fail differently.
    handle = Catalogue(database_url, settings=Settings(weights=str(tmp_path / "missing.h5")))
    with pytest.raises(ImageError):
        handle.search_image(io.BytesIO(b"not a photo"), 5)
    assert handle._featurizer is None
    handle.close()
