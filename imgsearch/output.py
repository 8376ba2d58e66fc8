"""Formatting results for people (tables that fit an 80-column terminal) and for programs (JSON, CSV).

Search results in JSON and CSV are a stable interface: one record per result, best first, with these fields
(:data:`RESULT_FIELDS`, in this order as the CSV columns; new fields may be added at the end, none removed):

===============  =================================================================================================
rank             1 for the closest product, then 2, 3... (a page further down, ``--offset`` or ``--cursor``,
                 continues the count)
sku              the product's SKU
name             product name; JSON ``null`` / CSV empty when the catalogue has none
category         product category
price            JSON number, CSV decimal text with 2 places (``14.99``); ``null`` / empty when the product has none
in_stock         JSON ``true``/``false``, CSV ``true``/``false``
distance         cosine distance to the query, 0 (same direction) to 2, smaller is closer; 6 decimals; ``null`` /
                 empty for a search by words alone
image            the image location as the catalogue recorded it (manifest images: relative to the manifest's
                 folder); ``null`` / empty when unknown
match            searches by photo: ``exact`` when local features proved that the photo shows this very product,
                 ``similar`` for a visual neighbour; ``null`` / empty for searches that verify nothing
inliers          searches by photo: keypoints of the product's photo found again in the query photo, consistent with
                 one perspective (``exact`` from 12); ``null`` / empty otherwise
box              an ``exact`` match's place in the query photo: JSON ``[left, top, right, bottom]`` in its pixels, CSV
                 the four numbers separated by spaces; ``null`` / empty otherwise
cursor           give it to the same search (``--cursor``, ``cursor``) for the results after this one
shop_product_id  the shop's own id of the product (manifest column ``shop_product_id``); ``null`` / empty if none
page_url         the product's page on the shop's site (manifest column ``page_url``); ``null`` / empty if none
attributes       the shop's attributes of the product (a manifest's other columns): a JSON object, ``{}`` if none; CSV
                 the same object as JSON text
===============  =================================================================================================

JSON is one array of objects (``[]`` when nothing matches); CSV is a header row then one row per result
(only the header when nothing matches), comma-separated, quoted where needed, UTF-8.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from decimal import Decimal

from imgsearch.attributes import attributes_text
from imgsearch.catalogue import CatalogueStats
from imgsearch.duplicates import DuplicateGroup
from imgsearch.evaluation import Evaluation
from imgsearch.feedback import Report
from imgsearch.indexes import CategoryIndex
from imgsearch.ingest import IngestReport
from imgsearch.query import SearchResult
from imgsearch.reembedding import ReembedReport, ReembedStatus, space_label
from imgsearch.scan_index import ScanIndex
from imgsearch.street_to_shop import StreetToShop
from imgsearch.tuning import SpaceStatus

FORMATS = ("table", "json", "csv")
RESULT_FIELDS = (
    "rank",
    "sku",
    "name",
    "category",
    "price",
    "in_stock",
    "distance",
    "image",
    "match",
    "inliers",
    "box",
    "cursor",
    "shop_product_id",
    "page_url",
    "attributes",
)


def printable(text: str) -> str:
    """``text`` safe for a terminal line: control characters and undecodable bytes as escapes (``\\x00``)."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode("ascii") for ch in text
    )


def _price(price: Decimal | None) -> str:
    return "" if price is None else f"{price:.2f}"


def result_dicts(results: Sequence[SearchResult]) -> list[dict[str, object]]:
    """Results as plain dicts with the documented field names, in rank order (rank starts at 1)."""
    return [
        {
            "rank": r.rank or rank,
            "sku": r.sku,
            "name": r.name,
            "category": r.category,
            "price": None if r.price is None else float(r.price),
            "in_stock": r.in_stock,
            "distance": None if r.distance is None else round(r.distance, 6),
            "image": r.image,
            "match": r.match,
            "inliers": r.inliers,
            "box": None if r.box is None else list(r.box),
            "cursor": r.cursor,
            "shop_product_id": r.shop_product_id,
            "page_url": r.page_url,
            "attributes": dict(r.attributes),
        }
        for rank, r in enumerate(results, start=1)
    ]


def _truncate(text: str, width: int, keep_end: bool = False) -> str:
    if len(text) <= width:
        return text
    if keep_end:
        return "…" + text[len(text) - max(width - 1, 0) :]
    return text[: max(width - 1, 0)] + "…"


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int = 80,
    shrink: Sequence[int] = (),
    keep_end: Sequence[int] = (),
) -> str:
    """A plain-text table no wider than ``width``; columns listed in ``shrink`` are truncated to make it fit.

    ``shrink`` is an order of sacrifice: the first column listed is narrowed (down to its header, at least 6
    characters) before the next one is touched, so the columns people act on (a SKU) are cut last. Truncated
    cells end with an ellipsis, except in the columns listed in ``keep_end`` (file paths, whose end tells
    files apart), which lose their beginning instead.
    """
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    total = sum(widths) + 2 * (len(widths) - 1)
    shrinkable = list(shrink)
    while total > width and shrinkable:
        i = shrinkable[0]
        floor = max(len(headers[i]), 6)
        if widths[i] <= floor:
            shrinkable.pop(0)
            continue
        widths[i] -= 1
        total -= 1
    numeric = {i for i, h in enumerate(headers) if h in ("#", "price", "distance", "products", "in stock")}

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            text = _truncate(cell, widths[i], keep_end=i in keep_end)
            parts.append(text.rjust(widths[i]) if i in numeric else text.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def format_results(results: Sequence[SearchResult], fmt: str = "table", width: int = 80) -> str:
    """Render search results as ``table``, ``json`` (a list of objects) or ``csv`` (with a header row)."""
    if fmt == "json":
        return json.dumps(result_dicts(results), indent=2, ensure_ascii=False)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=RESULT_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row, result in zip(result_dicts(results), results, strict=True):
            box = "" if result.box is None else " ".join(f"{v:g}" for v in result.box)
            writer.writerow(
                {
                    **row,
                    "price": _price(result.price),
                    "in_stock": str(result.in_stock).lower(),
                    "box": box,
                    "attributes": json.dumps(row["attributes"], ensure_ascii=False, separators=(",", ":")),
                }
            )
        return buffer.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    headers = ["#", "sku", "name", "category", "price", "stock", "distance", "image"]
    rows = [
        [
            str(r.rank or rank),
            r.sku,
            r.name or "",
            r.category,
            _price(r.price),
            "yes" if r.in_stock else "no",
            "" if r.distance is None else f"{r.distance:.4f}",
            r.image or "",
        ]
        for rank, r in enumerate(results, start=1)
    ]
    image = 7
    if any(r.match is not None for r in results):
        # Searches by photo say which results are the photographed product itself, and how sure that is.
        headers.insert(7, "match")
        for row, r in zip(rows, results, strict=True):
            row.insert(7, f"exact {r.inliers}" if r.match == "exact" else (r.match or ""))
        image = 8
    shrink: tuple[int, ...] = (image, 2, 3, 1)
    if any(r.attributes for r in results):
        # The shop's attributes last, the first column to narrow (JSON and CSV carry them whole).
        headers.append("attributes")
        for row, r in zip(rows, results, strict=True):
            row.append(attributes_text(r.attributes))
        shrink = (len(headers) - 1, *shrink)
    return table(headers, rows, width=width, shrink=shrink, keep_end=(image,))


def format_stats(stats: CatalogueStats, tuned: SpaceStatus | None = None, fmt: str = "table") -> str:
    """Render catalogue statistics (and the tuned search space, if one is active) as a table or JSON."""
    space = stats.space
    if fmt == "json":
        return json.dumps(
            {
                "products": stats.products,
                "in_stock": stats.in_stock,
                "photos": stats.photos,
                "categories": {c: {"products": n, "in_stock": s} for c, (n, s) in stats.by_category.items()},
                "embedding_space": None
                if space is None
                else {
                    "model": space.model_name,
                    "weights_id": space.weights_id,
                    "preprocessing": space.preprocessing_version,
                    "dimension": space.dimension,
                },
                "index": {"name": stats.index_name, "size_bytes": stats.index_size_bytes},
                "scan_index": None
                if stats.scan_lists is None
                else {"lists": stats.scan_lists, "size_bytes": stats.scan_size_bytes},
                "table_size_bytes": stats.table_size_bytes,
                "search_space": _search_space_json(tuned),
            },
            indent=2,
        )
    rows = [[c, str(n), str(s)] for c, (n, s) in stats.by_category.items()]
    rows.append(["total", str(stats.products), str(stats.in_stock)])
    lines = [table(["category", "products", "in stock"], rows, shrink=(0,))]
    lines.append(f"photos: {stats.photos}")
    if space is None:
        lines.append("embedding space: none yet (nothing ingested)")
    else:
        lines.append(
            f"embedding space: {space.model_name}, {space.dimension}-d, preprocessing {space.preprocessing_version}, "
            f"weights {space.weights_id[:12]}"
        )
    if stats.index_name:
        lines.append(f"vector index: {stats.index_name} (HNSW, cosine), {format_size(stats.index_size_bytes or 0)}")
    else:
        lines.append("vector index: missing (run `imgsearch db upgrade`)")
    if stats.scan_lists is not None:
        size = format_size(stats.scan_size_bytes or 0)
        lines.append(f"scan index: {stats.scan_lists} lists (IVF, for shoppers' photos), {size}")
    lines.append(f"table size: {format_size(stats.table_size_bytes)}")
    lines.append(_search_space_line(tuned))
    return "\n".join(lines)


def _search_space_json(tuned: SpaceStatus | None) -> dict[str, object]:
    if tuned is None:
        return {"tuned": False}
    space = tuned.space
    return {
        "tuned": True,
        "id": space.id,
        "created_at": space.created_at.isoformat(),
        "method": space.method,
        "parameters": space.parameters,
        "learnt_from": {"products": space.products, "photos": space.photos, "categories": space.categories},
        "unseen_products": tuned.unseen_products,
        "unseen_categories": list(tuned.unseen_categories),
        "retune_suggested": tuned.retune_suggested,
    }


def _search_space_line(tuned: SpaceStatus | None) -> str:
    if tuned is None:
        return "search space: raw VGG16 (imgsearch tune learns one from the categories)"
    space = tuned.space
    line = (
        f"search space: tuned #{space.id} ({space.method}, {space.created_at:%Y-%m-%d %H:%M}), learnt from "
        f"{space.products} products in {space.categories} categories; not seen: {tuned.unseen_products} products "
        f"({tuned.unseen_share:.0%})"
    )
    if tuned.unseen_categories:
        shown = ", ".join(tuned.unseen_categories[:5]) + (", ..." if len(tuned.unseen_categories) > 5 else "")
        line += f", {len(tuned.unseen_categories)} categories ({shown})"
    if tuned.retune_suggested:
        line += "; run imgsearch tune again"
    return line


def format_category_indexes(category_indexes: Sequence[CategoryIndex], fmt: str = "table") -> str:
    """Render the category indexes as a table (with a total) or JSON."""
    if fmt == "json":
        return json.dumps(
            [
                {"category": i.category, "index": i.index_name, "products": i.products, "size_bytes": i.size_bytes}
                for i in category_indexes
            ],
            indent=2,
        )
    if not category_indexes:
        return "no category indexes: searches filtered by category use the catalogue-wide index"
    rows = [[i.category, str(i.products), format_size(i.size_bytes)] for i in category_indexes]
    rows.append(
        [
            "total",
            str(sum(i.products for i in category_indexes)),
            format_size(sum(i.size_bytes for i in category_indexes)),
        ]
    )
    return table(["category", "products", "index size"], rows, shrink=(0,))


def format_size(n: int) -> str:
    """A byte count for people: ``512 B``, ``21.0 MiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_scan_index(index: ScanIndex) -> str:
    """The photos' IVF index in one line (``imgsearch index scan``, and ingestion when it built one)."""
    return f"scan index: {index.lists} lists over {index.photos} photos ({format_size(index.size_bytes)})"


def format_reembed_status(status: ReembedStatus | None) -> str:
    """The re-embedding under way in one line (``imgsearch reembed --status``)."""
    if status is None:
        return "no re-embedding is under way"
    started = f"{status.started_at:%Y-%m-%d %H:%M}"
    return (
        f"re-embedding from {space_label(status.current)} to {space_label(status.target)}, started {started}: "
        f"{status.embedded} of {status.photos} photos embedded"
    )


def format_reembed_report(report: ReembedReport) -> str:
    """What ``imgsearch reembed`` did, in a line or two."""
    lines = [f"{report.embedded} photos embedded in {report.seconds:.1f} s, {len(report.failures)} failed"]
    target = space_label(report.target)
    if report.switched:
        held = ""
        if report.held_seconds is not None and report.writers_held_seconds is not None:
            held = (
                f"; searches waited {report.held_seconds * 1000:.0f} ms, writers "
                f"{report.writers_held_seconds * 1000:.0f} ms"
            )
        lines.append(f"switched: the catalogue's vectors are {target}{held}")
    else:
        why = "photos failed" if report.failures else "--no-switch"
        lines.append(f"not switched ({why}): {report.pending} photos still to embed for {target}")
    return "\n".join(lines)


def format_ingest_summary(report: IngestReport) -> str:
    """Added, updated, unchanged, failed, how many photos were embedded at what rate; pruning if any."""
    rate = report.embedded / report.seconds if report.seconds > 0 else 0.0
    lines = [
        f"added {report.added}, updated {report.updated}, unchanged {report.unchanged}, failed {report.failed} "
        f"({report.embedded} images embedded in {report.seconds:.1f} s, {rate:.1f} images/s)"
    ]
    if report.photos_pruned:
        lines.append(f"pruned {report.photos_pruned} photo{'s' if report.photos_pruned != 1 else ''} no longer listed")
    if report.vocabulary is not None:
        v = report.vocabulary
        lines.append(
            f"visual words: a vocabulary of {v.words} words learnt from {v.sample_photos} photos, given to "
            f"{v.photos} photos ({v.learn_s + v.index_s:.0f} s)"
        )
    if report.scan_index is not None:
        lines.append(format_scan_index(report.scan_index))
    pruned = report.pruned
    if pruned is not None and not pruned.refused:
        what = "removed" if pruned.mode == "remove" else "marked sold out"
        lines.append(f"{what} {pruned.changed} of {pruned.catalogue} products missing from the source")
    return "\n".join(lines)


#: Fields of one listing in the CSV of ``imgsearch duplicates`` (one row per listing, groups numbered from 1).
DUPLICATE_FIELDS = ("group", "spread", "sku", "name", "category", "price", "in_stock", "image")


def format_duplicates(groups: Sequence[DuplicateGroup], fmt: str = "table", width: int = 80) -> str:
    """Near-duplicate groups for people (a table per group) or programs (JSON: a list of groups; CSV: a row per
    listing), biggest price spread first, cheapest listing first within a group."""
    money = lambda value: None if value is None else float(value)  # noqa: E731
    if fmt == "json":
        return json.dumps(
            [
                {
                    "group": number,
                    "spread": money(group.spread),
                    "max_distance": round(group.max_distance, 6),
                    "products": [
                        {
                            "sku": item.sku,
                            "name": item.name,
                            "category": item.category,
                            "price": money(item.price),
                            "in_stock": item.in_stock,
                            "image": item.image,
                        }
                        for item in group.listings
                    ],
                }
                for number, group in enumerate(groups, start=1)
            ],
            indent=2,
        )
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(DUPLICATE_FIELDS)
        for number, group in enumerate(groups, start=1):
            for item in group.listings:
                writer.writerow(
                    [
                        number,
                        _price(group.spread),
                        item.sku,
                        item.name or "",
                        item.category,
                        _price(item.price),
                        "true" if item.in_stock else "false",
                        item.image or "",
                    ]
                )
        return buffer.getvalue().rstrip("\n")
    blocks = []
    for number, group in enumerate(groups, start=1):
        spread = "no price spread" if group.spread is None else f"price spread {group.spread:.2f}"
        head = f"group {number}: {len(group.listings)} products, {spread}, distance up to {group.max_distance:.4f}"
        rows = [
            [item.sku, item.name or "", _price(item.price), "yes" if item.in_stock else "SOLD OUT", item.image or ""]
            for item in group.listings
        ]
        blocks.append(head + "\n" + table(["sku", "name", "price", "stock", "image"], rows, width, (4, 1, 0), (4,)))
    return "\n\n".join(blocks)


def format_evaluation(evaluation: Evaluation, fmt: str = "table") -> str:
    """An :class:`~imgsearch.evaluation.Evaluation` as a table for people or JSON (``Evaluation.as_dict``)."""
    if fmt == "json":
        return json.dumps(evaluation.as_dict(), indent=2)
    s, t = evaluation.scores, evaluation.tuned
    header = ["metric", "micro", "macro"]
    if t is not None:
        header += ["tuned micro", "tuned macro"]
    rows = []
    for c in s.precision_micro:
        row = [f"precision@{c}", f"{s.precision_micro[c]:.3f}", f"{s.precision_macro[c]:.3f}"]
        if t is not None:
            row += [f"{t.precision_micro[c]:.3f}", f"{t.precision_macro[c]:.3f}"]
        rows.append(row)
    row = [f"mAP@{s.k}", f"{s.map_micro:.3f}", f"{s.map_macro:.3f}"]
    if t is not None:
        row += [f"{t.map_micro:.3f}", f"{t.map_macro:.3f}"]
    rows.append(row)
    lines = [table(header, rows)]
    lines += [
        "",
        f"recall@{s.k} of the HNSW index vs exact search: {evaluation.recall:.3f}",
        f"images: {s.queries}, labels: {s.labels}, ingest failures: {len(evaluation.ingest_failures)}",
        f"ingest: {evaluation.ingest_seconds:.1f} s ({evaluation.images_per_second:.1f} images/s), "
        f"search: {evaluation.search_seconds:.1f} s",
        f"embedding: {evaluation.model_name}, preprocessing {evaluation.preprocessing_version}",
    ]
    if t is not None:
        lines.append(
            f"tuned: {evaluation.folds}-fold cross-validation over products (each fold searched in a space learnt "
            "without it)"
        )
    return "\n".join(lines)


def format_street_to_shop(reports: Sequence[StreetToShop], fmt: str = "table") -> str:
    """Street-to-shop evaluations (:mod:`imgsearch.street_to_shop`), one per query file: a table per kind each,
    or a JSON list."""
    if fmt == "json":
        return json.dumps([r.as_dict() for r in reports], indent=2)
    header = ["kind", "queries", "R@1", "R@5", "R@10", "MRR", "global R@1", "global R@10", "exact 1st", "right"]
    blocks = []
    for report in reports:
        data = report.as_dict()
        rows = []
        for kind, d in [("all", data), *data["by_kind"].items()]:  # type: ignore[union-attr]
            recall, global_recall, precision = d["recall"], d["global_recall"], d["exact_first_precision"]
            rows.append(
                [
                    kind,
                    str(d["queries"]),
                    f"{recall['@1']:.3f}",
                    f"{recall['@5']:.3f}",
                    f"{recall['@10']:.3f}",
                    f"{d['mrr']:.3f}",
                    f"{global_recall['@1']:.3f}",
                    f"{global_recall['@10']:.3f}",
                    f"{d['exact_first_rate']:.3f}",
                    "-" if precision is None else f"{precision:.3f}",
                ]
            )
        blocks.append(
            "\n".join(
                [
                    f"queries: {data['queries_file']}",
                    table(header, rows, width=120),
                    f"per query: p50 {data['query_seconds_p50']:.3f} s, p90 {data['query_seconds_p90']:.3f} s "
                    f"(embedding, local features, search); failures: {len(report.failures)}",
                ]
            )
        )
    first = reports[0].as_dict() if reports else {"products": 0, "candidates": 0}
    blocks.append(
        f"catalogue: {first['products']} products; {first['candidates']} candidates verified per photo. global: the "
        "VGG16 vector alone, same run; exact 1st: share of photos whose first result is a verified match; right: "
        "how often that match is the photographed product"
    )
    return "\n\n".join(blocks)


#: The formats of ``imgsearch report``.
REPORT_FORMATS = ("table", "json", "html")


def format_report(report: Report, fmt: str = "table") -> str:
    """The shoppers' report for people (tables), programs (JSON) or a browser (HTML with charts:
    :mod:`imgsearch.report_page`)."""
    if fmt == "json":
        return json.dumps(report.as_dict(), indent=2)
    if fmt == "html":
        from imgsearch.report_page import render

        return render(report)
    pct = lambda rate: f"{100 * rate:.1f}%"  # noqa: E731
    lines = [f"events from {report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC"]
    if not report.total.impressions and not report.total.clicks:
        return "\n".join([*lines, "no events in this window"])
    lines += [
        "",
        "variant      searches  impressions  clicks  CTR     searches clicked  MRR    carts/search  conversion",
    ]
    for m in [*report.variants, report.total]:
        name = "(all)" if m.variant is None else (m.variant or '""')
        lines.append(
            f"{printable(name)[:12]:<12} {m.searches:>8}  {m.impressions:>11}  {m.clicks:>6}  "
            f"{pct(m.click_through):<6}  {pct(m.searches_clicked):>16}  {m.mean_reciprocal_rank:.3f}  "
            f"{m.add_to_cart_rate:>12.3f}  {pct(m.conversion):>10}"
        )
    for c in report.comparisons:
        lines += ["", f"{printable(c.b)} against {printable(c.a)} (difference, 95% interval):"]
        for label, d, scale in (
            ("searches clicked", c.searches_clicked, 100),
            ("mean reciprocal rank", c.mean_reciprocal_rank, 1),
            ("conversion", c.conversion, 100),
        ):
            unit = " points" if scale == 100 else ""
            sure = "" if d.low <= 0 <= d.high else "  (significant)"
            lines.append(
                f"  {label:<21} {scale * d.value:+.3f}{unit} [{scale * d.low:+.3f}, {scale * d.high:+.3f}]{sure}"
            )
    lines += ["", "rank  impressions  clicks  CTR"]
    lines += [f"{rank:>4}  {shown:>11}  {clicks:>6}  {pct(ctr)}" for rank, shown, clicks, ctr in report.by_rank]
    lines += ["", "category              impressions  clicks  CTR     purchases"]
    lines += [
        f"{printable(name or '(none)')[:20]:<20}  {shown:>11}  {clicks:>6}  {pct(ctr):<6}  {bought:>9}"
        for name, shown, clicks, ctr, bought in report.by_category
    ]
    return "\n".join(lines)
