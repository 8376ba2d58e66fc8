"""Search-quality evaluation: the metrics on a hand-made case, and `imgsearch eval` end to end."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine, make_url

from imgsearch import catalogue, evaluation
from imgsearch.cli import main
from imgsearch.embedding import NOTEBOOK_PIPELINE, EmbeddingSpace, Featurizer
from imgsearch.errors import DatabaseUnavailableError, EmbeddingSpaceMismatchError
from imgsearch.images import PREPROCESSING_VERSION

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CATALOGUE = REPO / "examples" / "catalogue"

# Six items, labels A (4 items) and B (2 items); each query's results, best first, itself excluded.
QUERY_LABELS = ["A", "A", "A", "A", "B", "B"]
RANKINGS = [
    ["A", "B", "A", "A", "B"],  # hits at 1, 3, 4
    ["A", "A", "A", "B", "B"],  # hits at 1, 2, 3
    ["B", "A", "A", "A", "B"],  # hits at 2, 3, 4
    ["B", "B", "A", "A", "A"],  # hits at 3, 4, 5
    ["B", "A", "A", "A", "A"],  # hit at 1 (its only other B)
    ["B", "A", "A", "A", "A"],  # hit at 1
]
# AP@10 by hand: sum of precision at each hit / min(10, other items with the label).
AP = [
    (1 / 1 + 2 / 3 + 3 / 4) / 3,
    (1 + 1 + 1) / 3,
    (1 / 2 + 2 / 3 + 3 / 4) / 3,
    (1 / 3 + 2 / 4 + 3 / 5) / 3,
    1.0,
    1.0,
]


def test_precision_average_precision_and_overlap_of_one_ranking() -> None:
    relevant = [True, False, True, True, False]
    assert evaluation.precision_at(relevant, 1) == 1.0
    assert evaluation.precision_at(relevant, 5) == pytest.approx(3 / 5)
    assert evaluation.precision_at(relevant, 10) == pytest.approx(3 / 10)  # missing results are misses
    assert evaluation.average_precision_at(relevant, 10, 3) == pytest.approx(AP[0])
    # Only the first k ranks count, and the divisor is capped at k.
    assert evaluation.average_precision_at(relevant, 2, 3) == pytest.approx(1 / 2)
    assert evaluation.average_precision_at(relevant, 10, 0) is None
    assert evaluation.overlap_at(["a", "b", "c"], ["c", "a", "d"], 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        evaluation.precision_at(relevant, 0)


def test_micro_and_macro_scores_on_a_hand_made_case() -> None:
    scores = evaluation.score_rankings(QUERY_LABELS, RANKINGS, k=10)
    assert (scores.queries, scores.labels) == (6, 2)
    # P@1: A has 2 of 4 right, B 2 of 2: micro 4/6, macro (1/2 + 1) / 2.
    assert scores.precision_micro[1] == pytest.approx(4 / 6)
    assert scores.precision_macro[1] == pytest.approx(0.75)
    # P@5: every A query has 3 hits in 5, every B query 1.
    assert scores.precision_micro[5] == pytest.approx((4 * 3 / 5 + 2 * 1 / 5) / 6)
    assert scores.precision_macro[5] == pytest.approx((3 / 5 + 1 / 5) / 2)
    assert scores.precision_micro[10] == pytest.approx((4 * 3 / 10 + 2 * 1 / 10) / 6)
    assert scores.map_micro == pytest.approx(sum(AP) / 6)
    assert scores.map_macro == pytest.approx((sum(AP[:4]) / 4 + 1.0) / 2)
    assert scores.per_label_precision == pytest.approx({"A": 3 / 5, "B": 1 / 5})


def _labelled_sample(dst: Path, per_label: int = 4) -> Path:
    for label in ("dress", "shoes", "hat"):
        (dst / label).mkdir(parents=True)
        for image in sorted((SAMPLE_CATALOGUE / label).glob("*.jpg"))[:per_label]:
            shutil.copy(image, dst / label / image.name)
    (dst / "hat" / "notes.txt").write_text("not an image\n")
    return dst


def _eval_databases(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT datname FROM pg_database WHERE datname LIKE 'imgsearch_eval_%'"))
        return [name for (name,) in rows]


def test_eval_command_end_to_end_leaves_nothing_behind(
    tmp_path: Path, engine: Engine, database_url: str, fake_weights: str
) -> None:
    folder = _labelled_sample(tmp_path / "labelled")
    before = _eval_databases(engine)
    result = CliRunner().invoke(
        main, ["--database-url", database_url, "--weights", fake_weights, "eval", str(folder), "--json", "-q"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 12
    assert report["labels"] == 3
    assert report["ingest_failures"] == 1
    assert "notes.txt" in report["failures"][0]["source"]
    assert set(report["precision_micro"]) == {"@1", "@5", "@10"}
    for key in ("precision_micro", "precision_macro"):
        assert all(0.0 <= v <= 1.0 for v in report[key].values())
    # 4 images per label: at most 3 relevant results, so precision@5 <= 3/5 and precision@10 <= 3/10.
    assert report["precision_micro"]["@5"] <= 0.6 + 1e-9
    assert report["precision_micro"]["@10"] <= 0.3 + 1e-9
    assert 0.0 <= report["map_micro"] <= 1.0
    assert report["recall"] == pytest.approx(1.0)  # 12 vectors: the HNSW graph finds them all
    assert report["preprocessing_version"] == PREPROCESSING_VERSION
    assert report["images_per_second"] > 0
    # The throwaway database is gone and the user's catalogue was never touched.
    assert _eval_databases(engine) == before
    assert catalogue.stats(engine).products == 0
    assert catalogue.stored_space(engine) is None


def test_eval_table_output(tmp_path: Path, database_url: str, fake_weights: str) -> None:
    folder = _labelled_sample(tmp_path / "labelled", per_label=2)
    result = CliRunner().invoke(main, ["--database-url", database_url, "--weights", fake_weights, "eval", str(folder)])
    assert result.exit_code == 0, result.output
    for text in ("precision@1", "precision@5", "precision@10", "mAP@10", "recall@10", "images: 6, labels: 3"):
        assert text in result.stdout


def test_eval_refuses_a_server_where_it_cannot_create_a_database(
    tmp_path: Path, database_url: str, fake_featurizer: Featurizer
) -> None:
    url = make_url(database_url)
    with psycopg.connect(host=url.query["host"], user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS imgsearch_eval_nocreate")
        conn.execute("CREATE ROLE imgsearch_eval_nocreate LOGIN NOCREATEDB")
    try:
        folder = _labelled_sample(tmp_path / "labelled", per_label=1)
        limited = url.set(username="imgsearch_eval_nocreate").render_as_string(hide_password=False)
        with pytest.raises(DatabaseUnavailableError, match="cannot create the throwaway evaluation database"):
            evaluation.evaluate(limited, folder, fake_featurizer)
    finally:
        with psycopg.connect(host=url.query["host"], user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS imgsearch_eval_nocreate")


def test_a_catalogue_of_the_notebook_pipeline_must_be_reingested(engine: Engine, fake_featurizer: Featurizer) -> None:
    # Catalogues built before the default pipeline changed hold notebook vectors: they are refused with a
    # request to re-ingest instead of silently mixing two kinds of vectors.
    notebook = EmbeddingSpace(
        model_name=NOTEBOOK_PIPELINE.model_name,
        weights_id=fake_featurizer.space.weights_id,
        preprocessing_version=NOTEBOOK_PIPELINE.version,
        dimension=fake_featurizer.space.dimension,
    )
    assert fake_featurizer.space.preprocessing_version == PREPROCESSING_VERSION != notebook.preprocessing_version
    catalogue.ensure_space(engine, notebook)
    with pytest.raises(EmbeddingSpaceMismatchError, match=r"different embedding space.*re-ingest"):
        catalogue.check_space(engine, fake_featurizer.space)
    with pytest.raises(EmbeddingSpaceMismatchError, match="preprocessing v1-exif-white"):
        catalogue.ensure_space(engine, fake_featurizer.space)


def test_a_killed_evaluations_database_is_dropped_by_the_next_one(
    tmp_path: Path, database_url: str, fake_featurizer: Featurizer
) -> None:
    url = make_url(database_url)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)  # a process that has exited, like an evaluation killed with SIGKILL
    owners = {
        "imgsearch_eval_killed": {"host": socket.gethostname(), "pid": dead_pid, "started": time.time() - 60},
        "imgsearch_eval_running": {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()},
    }
    with psycopg.connect(host=url.query["host"], user="postgres", dbname="postgres", autocommit=True) as conn:
        for name, owner in owners.items():
            conn.execute(f'CREATE DATABASE "{name}"')
            conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{json.dumps(owner)}'")
    try:
        evaluation.evaluate(database_url, _labelled_sample(tmp_path / "labelled", per_label=1), fake_featurizer)
        with psycopg.connect(host=url.query["host"], user="postgres", dbname="postgres") as conn:
            left = {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'imgsearch_eval_%'")}
        assert left == {"imgsearch_eval_running"}  # the killed one's is gone; a running evaluation's is kept
    finally:
        with psycopg.connect(host=url.query["host"], user="postgres", dbname="postgres", autocommit=True) as conn:
            for name in owners:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
