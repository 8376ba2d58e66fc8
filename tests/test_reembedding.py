"""Moving a catalogue to another pipeline in place (revision 0022, ``imgsearch reembed``): every photo embedded again
from its file, the indexes built again and swapped in, nothing else touched, searches in the new space afterwards;
resumable, refused while photos cannot be read, cancellable. The sample catalogue on a real PostgreSQL with pgvector,
the deterministic stand-in network for both pipelines."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from imgsearch import Catalogue, Settings, catalogue, db, reembedding, schema
from imgsearch.cli import main
from imgsearch.embedding import Featurizer
from imgsearch.errors import EmbeddingSpaceMismatchError, InvalidQueryError


@pytest.fixture
def shop_url(make_database: Callable[..., str], sample_catalogue) -> str:
    return make_database(template=sample_catalogue.template)


@pytest.fixture
def settings(fake_weights: str) -> Settings:
    return Settings(weights=fake_weights, scan_index_min_photos=0)


def _rows(engine: Engine) -> list[tuple]:
    """Every product and photo as stored, vectors aside."""
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT p.id, p.sku, p.name, p.category, p.price, p.in_stock, p.attributes::text, i.id, i.image, "
                    "i.image_sha256, i.position, i.colour::text, f.image_id IS NOT NULL "
                    "FROM imgsearch.products p JOIN imgsearch.product_images i ON i.product_id = p.id "
                    "LEFT JOIN imgsearch.photo_features f ON f.image_id = i.id ORDER BY i.id"
                )
            )
        ]


def _photo_indexes(engine: Engine) -> dict[str, tuple[str, bool]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'imgsearch.product_images'::regclass "
                "AND pg_get_indexdef(i.indexrelid) ~ 'embedding'"
            )
        ).all()
    return {name: (definition, valid) for name, definition, valid in rows}


def _vectors(engine: Engine) -> dict[str, np.ndarray]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT image, embedding::text FROM imgsearch.product_images")).all()
    return {image: np.array(json.loads(text), dtype=np.float32) for image, text in rows}


def test_a_catalogue_moves_to_another_pipeline_with_every_row_kept(
    shop_url: str, settings: Settings, fake_weights: str
) -> None:
    with Catalogue(shop_url, settings=settings) as shop, Catalogue(shop_url, settings=settings) as other:
        shop.build_scan_index(lists=4)
        engine = shop.engine()
        before, indexes_before = _rows(engine), _photo_indexes(engine)
        old_vectors = _vectors(engine)
        assert len(indexes_before) >= 3, indexes_before  # the graph, category indexes, the scan index
        assert shop.featurizer.pipeline.model_name == "vgg16-imagenet-gap"
        photo = next(iter(old_vectors))
        sku = shop.search_image(photo, k=1, verify=False)[0].sku
        assert other.search_image(photo, k=1, verify=False)[0].sku == sku
        told: list[tuple[int, int]] = []

        report = shop.reembed("rmac", batch=50, progress=lambda done, total: told.append((done, total)))

        assert report.switched and not report.failures and report.pending == 0
        assert report.embedded == len(old_vectors) == 120
        assert told[-1] == (120, 120) and len(told) == 3
        assert report.held_seconds is not None and report.held_seconds < 2
        rmac = Featurizer(weights=fake_weights, pipeline="rmac")
        assert catalogue.stored_space(engine) == catalogue.StoredSpace(*rmac.space.__dict__.values())
        # Every row kept, every vector the new pipeline's, nothing left of the move.
        assert _rows(engine) == before
        new_vectors = _vectors(engine)
        for image in list(new_vectors)[:5]:
            np.testing.assert_allclose(new_vectors[image], rmac.embed_image(image), atol=1e-5)
            assert float(new_vectors[image] @ old_vectors[image]) < 0.999
        assert {n: v for n, (_, v) in _photo_indexes(engine).items()} == dict.fromkeys(indexes_before, True)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(embedding_next) FROM imgsearch.product_images")).scalar() == 0
            checks = dict(
                conn.execute(
                    sa.text(
                        "SELECT conname, convalidated FROM pg_constraint "
                        "WHERE conrelid = 'imgsearch.product_images'::regclass AND contype = 'c'"
                    )
                ).all()
            )
        assert checks["ck_product_images_embedding_nonzero"] and checks["ck_product_images_embedding_next_nonzero"]
        assert shop.reembed_status() is None
        # The handle searches in the new space; so does a new one; the database still matches the migrations.
        assert shop.search_image(photo, k=1, verify=False)[0].sku == sku
        assert shop.search_image(photo, k=1)[0].match == "exact"
        # Another handle that loaded the old pipeline's network follows the catalogue to the new one.
        assert other.search_image(photo, k=1, verify=False)[0].sku == sku
        assert other.featurizer.space == rmac.space
    with Catalogue(shop_url, settings=settings) as again:
        assert again.featurizer.space == rmac.space
        assert again.search_image(photo, k=1, verify=False)[0].sku == sku
    schema.require_schema(engine)
    # Vectors of the old pipeline are refused now, by ingestion and by searches.
    with Catalogue(shop_url, settings=settings, featurizer=Featurizer(weights=fake_weights)) as stale:
        with pytest.raises(EmbeddingSpaceMismatchError):
            stale.search_image(photo, k=1)
        with pytest.raises(EmbeddingSpaceMismatchError):
            stale.ingest([catalogue_entry(photo)])


def catalogue_entry(photo: str):
    from imgsearch.sources import CatalogueEntry

    return CatalogueEntry(sku="new-one", category="dress", images=(photo,))


def test_the_triggers_watch_the_new_vectors_after_a_switch(shop_url: str, settings: Settings) -> None:
    with Catalogue(shop_url, settings=settings) as shop:
        shop.reembed("rmac")
        engine = shop.engine()
        with engine.begin() as conn:
            image_id = conn.execute(sa.text("SELECT min(id) FROM imgsearch.product_images")).scalar_one()
            conn.execute(
                sa.text(
                    "UPDATE imgsearch.product_images SET embedding_next = embedding, "
                    "embedding = (SELECT embedding FROM imgsearch.product_images WHERE id <> :i LIMIT 1) WHERE id = :i"
                ),
                {"i": image_id},
            )
            # Set together: kept. The photo's local features described the old picture: gone.
            kept = "SELECT embedding_next IS NOT NULL FROM imgsearch.product_images WHERE id = :i"
            assert conn.execute(sa.text(kept), {"i": image_id}).scalar_one()
            assert not conn.execute(
                sa.text("SELECT count(*) FROM imgsearch.photo_features WHERE image_id = :i"), {"i": image_id}
            ).scalar_one()
            conn.execute(
                sa.text(
                    "UPDATE imgsearch.product_images SET embedding = "
                    "(SELECT embedding FROM imgsearch.product_images WHERE id <> :i ORDER BY id DESC LIMIT 1) "
                    "WHERE id = :i"
                ),
                {"i": image_id},
            )
            # A new picture alone: its next vector is forgotten.
            assert conn.execute(
                sa.text("SELECT embedding_next IS NULL FROM imgsearch.product_images WHERE id = :i"), {"i": image_id}
            ).scalar_one()


def test_a_reembedding_resumes_and_embeds_a_photo_changed_meanwhile(shop_url: str, settings: Settings) -> None:
    with Catalogue(shop_url, settings=settings) as shop:
        first = shop.reembed("rmac", switch=False)
        assert not first.switched and first.embedded == 120 and first.pending == 0
        status = shop.reembed_status()
        assert status is not None and status.pending == 0 and status.target.model_name == "vgg16-imagenet-rmac"
        assert shop.featurizer.pipeline.model_name == "vgg16-imagenet-gap"  # the old space still serves
        engine = shop.engine()
        with engine.begin() as conn:  # a photo changes: a new picture, so its next vector is forgotten
            conn.execute(
                sa.text(
                    "UPDATE imgsearch.product_images SET embedding = (SELECT embedding FROM imgsearch.product_images "
                    "ORDER BY id DESC LIMIT 1) WHERE id = (SELECT min(id) FROM imgsearch.product_images)"
                )
            )
        status = shop.reembed_status()
        assert status is not None and status.pending == 1
        with pytest.raises(InvalidQueryError, match="under way"):
            shop.reembed("notebook")
        second = shop.reembed("rmac")
        assert second.switched and second.embedded == 1
        with pytest.raises(InvalidQueryError, match="already"):
            shop.reembed("rmac")


def test_the_catalogue_is_kept_as_usual_while_the_indexes_copies_exist(shop_url: str, settings: Settings) -> None:
    # Between the copies' build and the switch (a switch that could not get its locks, say), every command that
    # looks at the indexes sees the catalogue's own, once each; after the switch the copies carry their names and
    # their categories.
    with Catalogue(shop_url, settings=settings) as shop:
        categories = [i.category for i in shop.list_indexes()]
        assert categories
        assert shop.reembed("rmac", switch=False).embedded == 120
        built = reembedding.build_copies(shop.engine("owner"))
        assert len(built) == len(categories) + 1 and all(name.startswith("next_") for name in built)
        assert [i.category for i in shop.list_indexes()] == categories
        assert shop.stats().index_name == "ix_product_images_embedding"
        assert shop.maintain_indexes(12) == []  # nothing to build, nothing taken for a category index
        assert shop.reembed("rmac").switched
        after = shop.list_indexes()
        assert [i.category for i in after] == categories
        assert not any(name.startswith("next_") for name in _photo_indexes(shop.engine()))
        assert shop.search(np.ones(512), k=3, categories=[categories[0]], in_stock_only=False)


def test_a_photo_that_cannot_be_read_stops_the_switch_and_cancel_forgets(
    shop_url: str, settings: Settings, tmp_path: Path
) -> None:
    with Catalogue(shop_url, settings=settings) as shop:
        engine = shop.engine()
        with engine.connect() as conn:
            image = conn.execute(sa.text("SELECT min(image) FROM imgsearch.product_images")).scalar_one()
        saved = Path(image).read_bytes()
        Path(image).write_bytes(saved[: len(saved) // 2])  # changed since it was ingested
        try:
            report = shop.reembed("rmac")
        finally:
            Path(image).write_bytes(saved)
        assert not report.switched and report.embedded == 119 and report.pending == 1
        assert [f.source for f in report.failures] == [image]
        assert "changed since it was ingested" in report.failures[0].reason
        stored = catalogue.stored_space(engine)
        assert stored is not None and stored.model_name == "vgg16-imagenet-gap"
        assert shop.featurizer.pipeline.model_name == "vgg16-imagenet-gap"
        assert shop.cancel_reembed() and shop.reembed_status() is None
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(embedding_next) FROM imgsearch.product_images")).scalar() == 0
        assert not any(name.startswith("next_") for name in _photo_indexes(engine))
        assert not shop.cancel_reembed()


def test_the_command(shop_url: str, fake_weights: str) -> None:
    def run(*args: str) -> object:
        return CliRunner().invoke(main, ["--database-url", shop_url, "--weights", fake_weights, "reembed", *args])

    result = run("--pipeline", "rmac", "--no-switch")
    assert result.exit_code == 0, result.output
    assert "120 photos embedded" in result.output and "not switched" in result.output
    result = run("--status")
    assert result.exit_code == 0 and "vgg16-imagenet-rmac" in result.output and "120 of 120" in result.output
    result = run("--pipeline", "rmac")
    assert result.exit_code == 0, result.output
    assert "switched" in result.output
    result = run("--pipeline", "rmac")
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "already" in result.output
    result = run("--pipeline", "nonsense")
    assert result.exit_code == 2 and "nonsense" in result.output
    result = run("--status")
    assert result.exit_code == 0 and "no re-embedding" in result.output
    bad = CliRunner(env={"IMGSEARCH_PIPELINE": "bogus"}).invoke(main, ["--database-url", shop_url, "stats"])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1 and "IMGSEARCH_PIPELINE" in bad.output


def test_an_upgrade_to_0022_and_back_keeps_every_row(make_database: Callable[..., str], sample_catalogue) -> None:
    engine = db.create_engine(make_database(template=sample_catalogue.template))

    def stored() -> tuple[list[tuple], dict[str, bytes]]:  # every row, and every vector exactly
        return _rows(engine), {image: vector.tobytes() for image, vector in _vectors(engine).items()}

    before = stored()
    schema.downgrade(engine, "0021")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('imgsearch.embedding_space_next')")).scalar() is None
    assert stored() == before
    schema.upgrade(engine)
    assert stored() == before
    engine.dispose()


def test_a_service_follows_the_catalogue_to_its_new_pipeline(
    shop_url: str, settings: Settings, fake_weights: str
) -> None:
    from tests.test_service import Service

    with Catalogue(shop_url, settings=settings) as shop:
        photo = Path(shop.search(np.ones(512), k=1, in_stock_only=False)[0].image)
        before = Service(shop_url, fake_weights)
        try:
            assert before.client.get("/readyz").status_code == 200
            assert shop.reembed("rmac").switched
            # Started with the old pipeline: not ready, photo searches refused with one line, vectors still served.
            ready = before.client.get("/readyz")
            assert ready.status_code == 503 and "embedding space" in ready.json()["reason"]
            refused = before.client.post("/search", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
            assert refused.status_code == 503 and list(refused.json()) == ["error"]
            assert before.client.post("/search", json={"vector": [1.0] * 512, "k": 1}).status_code == 200
        finally:
            before.close()
        after = Service(shop_url, fake_weights)
        try:
            assert after.client.get("/readyz").status_code == 200
            found = after.client.post("/search", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
            assert found.status_code == 200 and found.json()[0]["image"] == str(photo)
        finally:
            after.close()


def test_a_catalogue_of_the_notebooks_pipeline_is_served_with_it_and_moves_to_the_default(
    engine: Engine, settings: Settings, fake_weights: str
) -> None:
    from imgsearch.embedding import NOTEBOOK_PIPELINE, PIPELINES
    from imgsearch.sources import CatalogueEntry
    from tests.conftest import SAMPLE_PHOTOS

    sample_photos = SAMPLE_PHOTOS[::6]

    url = engine.url.render_as_string(hide_password=False)
    entries = [
        CatalogueEntry(sku=f"s{i}", category=p.parent.name, images=(str(p),)) for i, p in enumerate(sample_photos)
    ]
    with Catalogue(url, settings=settings, featurizer=Featurizer(weights=fake_weights, pipeline="notebook")) as old:
        assert old.ingest(entries[:12]).embedded == 12
    with Catalogue(url, settings=settings) as shop:  # a handle that was told nothing about the pipeline
        assert shop.featurizer.pipeline is NOTEBOOK_PIPELINE
        assert shop.search_image(entries[3].images[0], k=1, verify=False)[0].sku == "s3"
        assert shop.ingest(entries[12:16]).embedded == 4  # fed with the catalogue's own pipeline
        assert shop.reembed("default").switched
        assert shop.featurizer.pipeline is PIPELINES["default"]
        assert shop.search_image(entries[14].images[0], k=1, verify=False)[0].sku == "s14"
