"""The ``imgsearch`` command: a thin Click layer over the library (parse, call, format)."""

from __future__ import annotations

import functools
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from imgsearch import attributes, db, embedded_server, indexes, output, query, roles, urls
from imgsearch import schema as imgsearch_schema
from imgsearch.api import Catalogue, PruneRefusedError
from imgsearch.config import PIPELINE_NAMES, PRECISIONS, RUNTIMES, Settings
from imgsearch.errors import DatabaseUnavailableError, ImgsearchError, InvalidQueryError
from imgsearch.images import Crop, parse_crop
from imgsearch.ingest import DEFAULT_MAX_PRUNE_SHARE, PRUNE_MODES, Failure, Progress

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


class _Group(click.Group):
    """Shows library errors as one line and a non-zero exit instead of a traceback."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            # The group's own options (before the command name): one line too.
            raise _OneLineUsageError(exc.format_message()) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ImgsearchError as exc:
            raise click.ClickException(str(exc)) from None
        except click.UsageError as exc:
            # Click would print the usage and a hint around the message; one line says it all.
            raise _OneLineUsageError(exc.format_message()) from None


class _OneLineUsageError(click.ClickException):
    exit_code = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager stopping us): handled like Ctrl-C, so work in progress is cleaned up."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def _handle_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


@dataclass
class App:
    """Per-invocation state: settings, and the catalogue handle (engines and network made when a command needs
    them)."""

    settings: Settings
    _catalogue: Catalogue | None = field(default=None, repr=False)

    @property
    def catalogue(self) -> Catalogue:
        """The library's handle on the configured catalogue: every command below is a thin face of it."""
        if self._catalogue is None:
            self._catalogue = Catalogue(settings=self.settings)
        return self._catalogue

    def engine(self, *, schema: bool = True, access: str = "writer") -> Engine:
        """The catalogue's engine for the database commands; by default checks the schema is migrated.

        ``access`` is the embedded server's role: ``admin`` for schema changes, grants and index DDL only.
        """
        return self.catalogue.engine(access, schema=schema)


pass_app = click.make_pass_decorator(App)


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    metavar="URL",
    help="PostgreSQL with pgvector [env IMGSEARCH_DATABASE_URL; default: the embedded server].",
)
@click.option(
    "--read-url",
    metavar="URL",
    help="A read replica for searches (search, similar, cheaper, duplicates, serve) [env IMGSEARCH_READ_URL].",
)
@click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path), help="Embedded server's data [env IMGSEARCH_HOME]."
)
@click.option(
    "--weights",
    metavar="PATH",
    help="VGG16 notop .h5 weights, 'imagenet', or 'fake' (a stand-in network for tests) [env IMGSEARCH_VGG16_WEIGHTS].",
)
@click.option("--batch-size", type=click.IntRange(1, 1024), help="Images per forward pass [env IMGSEARCH_BATCH_SIZE].")
@click.option("--precision", type=click.Choice(PRECISIONS), help="Model precision [env IMGSEARCH_PRECISION].")
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    help="What runs the model: auto, tensorflow or onnxruntime (float32) [env IMGSEARCH_RUNTIME].",
)
@click.option(
    "--schema",
    metavar="NAME",
    help="PostgreSQL schema of imgsearch's tables [env IMGSEARCH_SCHEMA; default imgsearch].",
)
@click.version_option(package_name="imgsearch")
@click.pass_context
def main(ctx: click.Context, **options: Any) -> None:
    """Visual product search: find products that look alike, by photo or by SKU.

    \b
    Start here:
      imgsearch db upgrade                      # create the schema
      imgsearch ingest examples/catalogue       # load a folder of category/*.jpg
      imgsearch search photo.jpg -k 5           # products that look like a photo
      imgsearch cheaper SKU                     # similar, in stock and cheaper
    """
    _handle_sigterm()
    ctx.obj = App(Settings.from_env(**options))


# --- database -------------------------------------------------------------------------------------------------


@main.group(cls=_Group)
def db_group() -> None:
    """Manage the database: the embedded server and the schema."""


main.add_command(db_group, name="db")


def _url_options(func: Any = None, *, default_access: str = "writer") -> Any:
    if func is None:
        return lambda f: _url_options(f, default_access=default_access)
    func = click.option("--show-password", is_flag=True, help="Print the password instead of ***.")(func)
    func = click.option(
        "--access",
        type=click.Choice(list(embedded_server.ACCESS_ROLES)),
        default=default_access,
        show_default=True,
        help="The embedded server's role: reader (search only), writer (products), owner (indexes, tuning), "
        "admin (superuser).",
    )(func)
    return click.option(
        "--sqlalchemy", "sqlalchemy_form", is_flag=True, help="SQLAlchemy form (postgresql+psycopg://...)."
    )(func)


def _format_url(url: str, sqlalchemy_form: bool, show_password: bool) -> str:
    if sqlalchemy_form:
        return urls.sqlalchemy_url(url, show_password=show_password)
    return urls.libpq_url(url, show_password=show_password)


@db_group.command("start")
@_url_options
@pass_app
def db_start(app: App, sqlalchemy_form: bool, show_password: bool, access: str) -> None:
    """Start the embedded PostgreSQL (it keeps running until `imgsearch db stop`) and print its URL.

    The URL is libpq's form, for psql and any backend: psql "$(imgsearch db start)".
    """
    url = embedded_server.url_for(embedded_server.start(app.settings.home), access)
    click.echo(_format_url(url, sqlalchemy_form, show_password))


@db_group.command("stop")
@pass_app
def db_stop(app: App) -> None:
    """Stop the embedded PostgreSQL."""
    stopped = embedded_server.stop(app.settings.home)
    click.echo("stopped" if stopped else "not running")


@db_group.group("replica", cls=_Group)
def replica_group() -> None:
    """A read replica of the embedded server, for search traffic (a PostgreSQL hot standby).

    \b
    Examples:
      imgsearch db replica start
      IMGSEARCH_READ_URL="$(imgsearch db replica url --show-password)" imgsearch serve
    """


@replica_group.command("start")
@_url_options(default_access="reader")
@pass_app
def replica_start(app: App, sqlalchemy_form: bool, show_password: bool, access: str) -> None:
    """Start the replica (copied from the running server on first use) and print its URL.

    It follows every write to the server within moments, the vector and category indexes included, and refuses
    writes. Searches go to it when IMGSEARCH_READ_URL (or --read-url) is its URL.
    """
    url = embedded_server.url_for(embedded_server.start_replica(app.settings.home), access)
    click.echo(_format_url(url, sqlalchemy_form, show_password))


@replica_group.command("stop")
@pass_app
def replica_stop(app: App) -> None:
    """Stop the replica (its copy is kept and catches up when started again)."""
    click.echo("stopped" if embedded_server.stop_replica(app.settings.home) else "not running")


@replica_group.command("status")
@pass_app
def replica_status(app: App) -> None:
    """Say whether the replica runs, and how far behind the server it is."""
    state = embedded_server.replica_status(app.settings.home)
    server = state.server
    click.echo(f"replica: {f'running (pid {server.pid})' if server.running else 'stopped'}")
    click.echo(f"data directory: {server.data_dir}")
    if server.url:
        click.echo(f"url: {urls.libpq_url(embedded_server.url_for(server.url, 'reader'))}")
    if state.lag_bytes is not None:
        behind = max(state.lag_bytes, 0)
        click.echo(f"replayed: {state.replayed_lsn} (server at {state.primary_lsn}, {behind} bytes behind)")


@replica_group.command("url")
@_url_options(default_access="reader")
@pass_app
def replica_url(app: App, sqlalchemy_form: bool, show_password: bool, access: str) -> None:
    """Print the running replica's URL (the reader role by default: searches need no more)."""
    server = embedded_server.replica_status(app.settings.home).server
    if not server.running or server.url is None:
        _fail("the replica is not running: imgsearch db replica start")
    click.echo(_format_url(embedded_server.url_for(server.url, access), sqlalchemy_form, show_password))


def _revision_line(engine: Engine) -> str:
    current = imgsearch_schema.current_revision(engine)
    newest = imgsearch_schema.head_revision()
    return f"schema {db.schema_of(engine)} at revision {current or 'none'} (newest {newest})"


@db_group.command("status")
@pass_app
def db_status(app: App) -> None:
    """Say whether the embedded server runs, where its data is, and the schema revision."""
    if app.settings.database_url:
        engine = app.engine(schema=False, access="admin")
        click.echo(f"external database: {urls.libpq_url(app.settings.database_url)}")
        click.echo(_revision_line(engine))
        return
    status = embedded_server.status(app.settings.home)
    if status.state == "stopping":
        state = f"shutting down (pid {status.pid}): waiting for its open sessions to end (imgsearch db stop ends them)"
    else:
        state = f"running (pid {status.pid})" if status.running else "stopped"
    click.echo(f"embedded server: {state}")
    click.echo(f"data directory: {status.data_dir}")
    if status.url:
        click.echo(f"url: {urls.libpq_url(status.url)}")
        engine = db.create_engine(status.url, schema=app.settings.schema)
        click.echo(_revision_line(engine))
        engine.dispose()


@db_group.command("url")
@_url_options
@pass_app
def db_url(app: App, sqlalchemy_form: bool, show_password: bool, access: str) -> None:
    """Print the connection URL (starting the embedded server if needed), e.g. for psql or a backend.

    \b
    Examples:
      psql "$(imgsearch db url --show-password)"
      imgsearch db url --sqlalchemy
    """
    click.echo(_format_url(db.resolve_url(app.settings, access), sqlalchemy_form, show_password))


@db_group.command("upgrade")
@click.argument("revision", default="head")
@pass_app
def db_upgrade(app: App, revision: str) -> None:
    """Create or update the schema (the vector extension, tables, indexes, SQL functions)."""
    engine = app.engine(schema=False, access="admin")
    imgsearch_schema.upgrade(engine, revision)
    click.echo(_revision_line(engine))


@db_group.command("downgrade")
@click.argument("revision", default="-1")
@click.option("--yes", is_flag=True, help="Confirm: downgrading below the first revision deletes the catalogue.")
@pass_app
def db_downgrade(app: App, revision: str, yes: bool) -> None:
    """Step the schema back (default one revision; 'base' drops everything)."""
    if not yes:
        _fail("downgrading can delete catalogue data: pass --yes to confirm")
    engine = app.engine(schema=False, access="admin")
    imgsearch_schema.downgrade(engine, revision)
    click.echo(_revision_line(engine))


@db_group.command("reset")
@click.option("--yes", is_flag=True, help="Confirm deleting every product.")
@pass_app
def db_reset(app: App, yes: bool) -> None:
    """Delete every product, the recorded embedding space and any tuned search space (to re-ingest with
    another model)."""
    if not yes:
        _fail("this deletes every product: pass --yes to confirm")
    app.catalogue.reset()
    click.echo("catalogue emptied")


def _grant_message(result: roles.GrantResult, what: str) -> str:
    created = (
        f"created role {result.role} without login (give it one: ALTER ROLE {result.role} LOGIN PASSWORD '...'); "
        if result.created
        else ""
    )
    return f"{created}{result.role} {what} in schema {result.schema}"


@db_group.command("grant-reader")
@click.argument("role")
@pass_app
def db_grant_reader(app: App, role: str) -> None:
    """Let ROLE search the catalogue and nothing else (for the website backend); creates ROLE if missing.

    \b
    Example:
      imgsearch db grant-reader shop_web
    """
    result = roles.grant_reader(app.engine(access="admin"), role)
    click.echo(_grant_message(result, "can search (read-only)"))


@db_group.command("grant-writer")
@click.argument("role")
@pass_app
def db_grant_writer(app: App, role: str) -> None:
    """Let ROLE search and change products (ingest, stock, remove), not the schema; creates ROLE if missing."""
    result = roles.grant_writer(app.engine(access="admin"), role)
    click.echo(_grant_message(result, "can search and change products"))


@db_group.command("revoke-writer")
@click.argument("role")
@pass_app
def db_revoke_writer(app: App, role: str) -> None:
    """Take back ROLE's write privileges (it can still search)."""
    result = roles.revoke_writer(app.engine(access="admin"), role)
    click.echo(_grant_message(result, "can no longer change products"))


@db_group.command("revoke-reader")
@click.argument("role")
@pass_app
def db_revoke_reader(app: App, role: str) -> None:
    """Take back everything imgsearch granted ROLE (the role itself is not dropped)."""
    result = roles.revoke_reader(app.engine(access="admin"), role)
    click.echo(_grant_message(result, "has no access"))


@main.group(cls=_Group)
def index_group() -> None:
    """Category indexes: keep searches filtered to one large category fast.

    A search filtered to one category normally walks the catalogue-wide index; when the query photo looks
    nothing like that category, the walk can take hundreds of milliseconds. A category index holds only the
    category's products and is used automatically for such searches. Building one blocks writes to the
    catalogue (not searches) while it runs. See docs/filtered-search.md.
    """


main.add_command(index_group, name="index")


@index_group.command("create")
@click.argument("categories", nargs=-1)
@click.option(
    "--min-products",
    type=click.IntRange(min=1),
    help="Index every category with at least this many products (missing ones only).",
)
@pass_app
def index_create(app: App, categories: tuple[str, ...], min_products: int | None) -> None:
    """Build category indexes for CATEGORIES, or for every category of --min-products or more.

    Every category named must have products, or nothing is built. Each index is kept as soon as it is built.

    \b
    Examples:
      imgsearch index create sneakers watches
      imgsearch index create --min-products 1000
    """
    if bool(categories) == (min_products is not None):
        _fail("give CATEGORIES or --min-products (not both)")
    built = app.catalogue.create_indexes(categories, min_products=min_products, on_created=_report_index)
    if min_products is not None and not built:
        click.echo(f"nothing to do: every category of {min_products} or more products has its index")


def _report_index(index: indexes.CategoryIndex) -> None:
    click.echo(f"indexed {index.category} ({index.products} products, {output.format_size(index.size_bytes)})")


@index_group.command("auto")
@click.option(
    "--min-products",
    type=click.IntRange(min=1),
    help="Index categories of at least this many products [env IMGSEARCH_CATEGORY_INDEX_MIN_PRODUCTS, 2000].",
)
@click.option(
    "--max-share",
    type=click.FloatRange(0, 1, min_open=True),
    default=indexes.AUTO_INDEX_MAX_SHARE,
    show_default=True,
    help="...holding at most this share of the catalogue (larger ones are served by the catalogue-wide index).",
)
@pass_app
def index_auto(app: App, min_products: int | None, max_share: float) -> None:
    """Keep category indexes where they pay (what every ingest does): build the missing ones, drop shrunk ones.

    Builds and drops CONCURRENTLY: writes and searches go on meanwhile.
    """
    threshold = min_products or app.settings.category_index_min_products or None
    if threshold is None:
        _fail("IMGSEARCH_CATEGORY_INDEX_MIN_PRODUCTS is 0 (automatic category indexes are off): give --min-products")
    built = app.catalogue.maintain_indexes(threshold, max_share=max_share, on_created=_report_index)
    if not built:
        click.echo(f"nothing to build: every category of {threshold} or more products has its index")


@index_group.command("words")
@pass_app
def index_words(app: App) -> None:
    """Learn the visual vocabulary again from the catalogue's photos, and index every photo's words.

    A search by photo verifies the products nearest by the global vector and those sharing the most visual words
    (quantised local features) with the photo. Ingestion learns the vocabulary by itself (once there are 20
    photos, again when the catalogue has grown fourfold); run this after a large change of assortment. Searches
    keep the previous vocabulary until the new one is ready.

    \b
    Example:
      imgsearch index words
    """
    built = app.catalogue.build_visual_words()
    if built is None:
        _fail("no photo has local features yet: ingest the catalogue first")
    assert built is not None
    click.echo(
        f"visual words: a vocabulary of {built.words} words learnt from {built.descriptors} descriptors of "
        f"{built.sample_photos} photos in {built.learn_s:.0f} s; {built.photos} photos indexed in {built.index_s:.0f} s"
    )


@index_group.command("scan")
@click.option(
    "--lists",
    type=click.IntRange(1, 32768),
    help="Lists of the index [default: one per 1,000 photos; the square root of the photos above a million].",
)
@click.option("--drop", is_flag=True, help="Drop the index instead (photo searches use the HNSW walk alone).")
@pass_app
def index_scan(app: App, lists: int | None, drop: bool) -> None:
    """Build the photos' IVF index now, or again: a photo search's second source of nearest products.

    A shopper's phone photo is unlike the catalogue's photos, and among many look-alike products the HNSW walk
    can miss the product photographed; the IVF index reads whole lists of photos around the photo instead.
    Ingestion builds it by itself once the catalogue has IMGSEARCH_SCAN_INDEX_MIN_PHOTOS photos (10,000) and
    again when it has grown twofold.
    Builds CONCURRENTLY, beside the old index: writes and searches go on meanwhile.

    \b
    Examples:
      imgsearch index scan
      imgsearch index scan --drop
    """
    if drop:
        if lists is not None:
            _fail("give --lists or --drop (not both)")
        dropped = app.catalogue.drop_scan_index()
        click.echo("dropped the photos' scan index" if dropped else "nothing to drop: there is no scan index")
        return
    built = app.catalogue.build_scan_index(lists)
    click.echo(output.format_scan_index(built))


@index_group.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_app
def index_list(app: App, fmt: str) -> None:
    """List the category indexes: category, products, size."""
    click.echo(output.format_category_indexes(app.catalogue.list_indexes(), fmt))


@index_group.command("drop")
@click.argument("categories", nargs=-1, required=True)
@click.option("--missing-ok", is_flag=True, help="Ignore categories that have no index.")
@pass_app
def index_drop(app: App, categories: tuple[str, ...], missing_ok: bool) -> None:
    """Drop category indexes (searches in those categories go back to the catalogue-wide index)."""
    dropped = app.catalogue.drop_indexes(categories, missing_ok=missing_ok)
    click.echo(f"dropped {dropped} category index{'es' if dropped != 1 else ''}")


# --- catalogue ------------------------------------------------------------------------------------------------


class _IngestProgress:
    """Ingestion's progress on stderr, counted in photos: a bar with position, rate and ETA on a terminal
    (click's progressbar, redrawn as each photo is embedded), a line every 5 s in a log."""

    def __init__(self, enabled: bool) -> None:
        self.line = _ProgressLine(enabled)
        self.bar: Any = None

    def __call__(self, p: Progress) -> None:
        """Show ``p`` (photos handled of all the source's photos; unchanged ones count as handled)."""
        if not self.line.enabled:
            return
        rate = p.embedded / p.seconds if p.seconds > 0 else 0.0
        if self.line.tty and p.total_photos:
            if self.bar is None:
                self.bar = click.progressbar(
                    length=p.total_photos,
                    label="photos",
                    file=sys.stderr,
                    show_pos=True,
                    show_eta=True,
                    item_show_func=lambda item: item,
                )
            label = f"{p.done}/{p.total} products, {rate:.1f} images/s"
            if p.photos > self.bar.pos:
                self.bar.update(p.photos - self.bar.pos, label)
            else:  # a batch committed: the products moved, not the photos
                self.bar.current_item = label
                self.bar.render_progress()
            return
        total = f"/{p.total_photos}" if p.total_photos else ""
        text = f"{p.photos}{total} photos ({p.done}/{p.total or '?'} products)  {rate:.1f} images/s"
        handled_rate = p.photos / p.seconds if p.seconds > 0 else 0.0
        if p.total_photos and handled_rate > 0:
            remaining = max(p.total_photos - p.photos, 0) / handled_rate
            text += f"  ETA {int(remaining // 60)}m{int(remaining % 60):02d}s"
        self.line.show(text, final=p.total_photos is not None and p.photos >= p.total_photos)

    def close(self) -> None:
        """End the display before anything else is printed."""
        if self.bar is not None:
            self.bar.render_finish()
            self.bar = None
        self.line.close()


class _ProgressLine:
    """A one-line progress display on stderr: rewritten in place on a terminal, every 5 s in a log."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.open = False

    def show(self, text: str, *, final: bool = False) -> None:
        """Show ``text`` as the current progress (in a log, at most every 5 s unless ``final``)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not self.tty and now - self.last < 5 and not final:
            return
        self.last = now
        self.open = self.tty
        click.echo(("\r" + text.ljust(70)) if self.tty else text, err=True, nl=not self.tty)

    def close(self) -> None:
        """End the line (on a terminal) before anything else is printed."""
        if self.open:
            click.echo("", err=True)
            self.open = False


@main.command()
@click.argument("folder", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--manifest",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV: sku,name,category,price,in_stock,image (and/or images: a|b|c).",
)
@click.option(
    "--errors", "errors_path", type=click.Path(dir_okay=False, path_type=Path), help="Write failures to this CSV."
)
@click.option(
    "--commit-every",
    type=click.IntRange(1, 100_000),
    default=256,
    show_default=True,
    help="Products per committed batch.",
)
@click.option(
    "--ignore-column",
    "ignore_columns",
    multiple=True,
    metavar="NAME",
    help="A manifest column that is not an attribute of the product (internal notes, cost price, a photo's alt "
    "text): left out of the catalogue and of every answer (repeatable).",
)
@click.option("--prune-images", is_flag=True, help="Delete stored photos of a product that the source no longer lists.")
@click.option(
    "--prune",
    type=click.Choice(PRUNE_MODES),
    is_flag=False,
    flag_value="remove",
    help="Full sync: remove products missing from the source (--prune=sold-out: mark them sold out).",
)
@click.option(
    "--max-prune-share",
    type=click.FloatRange(0, 1),
    default=DEFAULT_MAX_PRUNE_SHARE,
    show_default=True,
    help="Refuse a --prune that would touch more than this share of the catalogue (a truncated feed).",
)
@click.option("--force", is_flag=True, help="Prune even beyond --max-prune-share.")
@click.option(
    "--image-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Store photo files under this folder by their path relative to it [env IMGSEARCH_IMAGE_ROOT].",
)
@click.option(
    "--no-index",
    "no_index",
    is_flag=True,
    help="Do not build or drop category indexes after loading (see imgsearch index auto).",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    metavar="[ADDRESS]",
    help="Embed on a Ray cluster (ray://host:10001; alone: a local Ray instance). Needs imgsearch[ray].",
)
@click.option("--ray-concurrency", type=click.IntRange(1), help="Model actors on Ray [default: one per 2 CPUs].")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@pass_app
def ingest(
    app: App,
    folder: Path | None,
    manifest: Path | None,
    errors_path: Path | None,
    commit_every: int,
    ignore_columns: tuple[str, ...],
    prune_images: bool,
    prune: str | None,
    max_prune_share: float,
    force: bool,
    image_root: Path | None,
    no_index: bool,
    ray_address: str | None,
    ray_concurrency: int | None,
    quiet: bool,
) -> None:
    """Load or update products from a FOLDER or a --manifest CSV; photos may be files or http(s) URLs.

    A FOLDER holds <category>/<image> (one photo per product, SKU <category>/<file name>) or
    <category>/<sku>/<image>... (several photos). A manifest lists one product per row, or repeats the SKU on
    several rows (same fields) to give several photos, or lists them in an images column separated by |.

    Idempotent: unchanged photos are not embedded again (URLs are not even downloaded again when the server
    says so), changed metadata is updated. Each batch is committed, so an interrupted run resumes where it
    stopped. Failures are listed and the exit status is 1 if any.

    \b
    Examples:
      imgsearch ingest examples/catalogue
      imgsearch ingest --manifest products.csv --errors failed.csv
      imgsearch ingest --manifest feed.csv --prune            # the catalogue becomes the feed
      imgsearch ingest --manifest feed.csv --prune=sold-out   # missing products are marked sold out
      imgsearch ingest examples/catalogue --ray               # the network runs on Ray (local here)
    """
    if (folder is None) == (manifest is None):
        _fail("give either a FOLDER or --manifest CSV (not both)")
    if force and prune is None:
        _fail("--force only applies to --prune")
    if errors_path is not None:
        _check_writable(errors_path)
    warn = lambda message: click.echo(f"warning: {message}", err=True)  # noqa: E731
    progress = _IngestProgress(enabled=not quiet)
    source = manifest if manifest is not None else folder
    assert source is not None
    try:
        report = app.catalogue.ingest(
            source,
            prune=prune,
            prune_images=prune_images,
            max_prune_share=max_prune_share,
            force=force,
            commit_every=commit_every,
            image_root=image_root,
            progress=progress,
            warn=warn,
            ray=ray_address,
            ray_concurrency=ray_concurrency,
            ignore_columns=ignore_columns,
            index=not no_index,
            on_index=lambda index: (progress.close(), _report_index(index)),
        )
    except PruneRefusedError as exc:
        progress.close()
        _fail(f"{exc} (--force to prune anyway)")
    except KeyboardInterrupt as exc:
        progress.close()
        click.echo("interrupted: batches already committed are kept; run the same command again to resume", err=True)
        sys.exit(143 if isinstance(exc, Terminated) else 130)
    except DatabaseUnavailableError as exc:
        progress.close()
        _fail(f"{exc}; every batch committed before is kept: run the same command again when the database is back")
    except ImgsearchError:
        progress.close()  # the one-line error (a Ray worker lost for good, say) on a line of its own
        raise
    progress.close()
    _report_failures(report.failures, errors_path)
    click.echo(output.format_ingest_summary(report))
    if report.pruned is not None and report.pruned.refused:
        _fail(f"{report.pruned.refused}: nothing was pruned (--force to prune anyway)")
    if report.failed:
        sys.exit(1)


def _check_writable(path: Path) -> None:
    """Fail before any work is done if a report file cannot be written."""
    try:
        with path.open("a"):
            pass
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror or exc}")


def _report_failures(failures: list[Failure], errors_path: Path | None) -> None:
    """One stderr line per failure, and the --errors CSV if asked for."""
    from imgsearch.ingest import write_failures

    for failure in failures:
        line = f"failed: {failure.sku or '-'} ({failure.source}): {failure.reason}"
        click.echo(output.printable(line), err=True)
    if errors_path is not None:
        try:
            write_failures(failures, errors_path)
        except OSError as exc:
            _fail(f"cannot write {errors_path}: {exc.strerror or exc} (the failures are listed above)")


@main.command()
@click.argument("skus", nargs=-1)
@click.option("--in/--out", "in_stock", default=None, help="Mark the SKUs in stock or sold out.")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with sku and in_stock, price or both, applied in one transaction.",
)
@click.option(
    "--errors", "errors_path", type=click.Path(dir_okay=False, path_type=Path), help="Write failures to this CSV."
)
@pass_app
def stock(
    app: App, skus: tuple[str, ...], in_stock: bool | None, csv_path: Path | None, errors_path: Path | None
) -> None:
    """Mark products in or out of stock, or change prices (from a --csv), in one transaction.

    SKUs named on the command line are all or nothing: an unknown one changes nothing. A --csv file (an
    export of the shop's stock system: sku and in_stock, price or both) is applied except for its unusable rows
    and unknown SKUs, which are listed (and written to --errors); the exit status is then 1. Only the products'
    small rows change, never their photos or the vector index.

    \b
    Examples:
      imgsearch stock --out shoes/123 shoes/456
      imgsearch stock --csv stock.csv --errors stock-errors.csv     # sku,in_stock,price
    """
    if csv_path is None:
        if not skus or in_stock is None:
            _fail("give SKUs and --in or --out (or --csv FILE)")
        changed = app.catalogue.set_stock(dict.fromkeys(skus, in_stock))
        click.echo(_stock_summary(changed, len(skus)))
        return
    if skus or in_stock is not None:
        _fail("use either --csv or SKUs with --in/--out")
    if errors_path is not None:
        _check_writable(errors_path)
    report = app.catalogue.apply_stock_file(csv_path)
    _report_failures(report.failures, errors_path)
    summary = _stock_summary(report.changed, report.given - report.unknown)
    click.echo(summary + (f", {len(report.failures)} failed" if report.failures else ""))
    if report.failures:
        sys.exit(1)


def _stock_summary(changed: int, given: int) -> str:
    return f"{changed} product{'s' if changed != 1 else ''} changed, {given - changed} already as given"


@main.command()
@click.argument("skus", nargs=-1, required=True)
@click.option("--missing-ok", is_flag=True, help="Ignore SKUs that are not in the catalogue.")
@pass_app
def remove(app: App, skus: tuple[str, ...], missing_ok: bool) -> None:
    """Delete products by SKU (all or nothing unless --missing-ok).

    \b
    Example:
      imgsearch remove shoes/123 shoes/456
    """
    removed = app.catalogue.remove(skus, missing_ok=missing_ok)
    click.echo(f"removed {removed} product{'s' if removed != 1 else ''}")


@main.command("text-language")
@click.argument("language")
@pass_app
def text_language(app: App, language: str) -> None:
    """Read the products' words (names, categories, text attributes, descriptions) in LANGUAGE, a PostgreSQL
    text search configuration: english (the default), german, french, simple (no stemming)... Every product's
    words are computed again.

    \b
    Example:
      imgsearch text-language german
    """
    changed = app.catalogue.set_text_language(language)
    click.echo(f"words in {language}: {changed} product{'s' if changed != 1 else ''} changed")


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_app
def stats(app: App, fmt: str) -> None:
    """Products by category and stock, the embedding space and the vector index.

    \b
    Example:
      imgsearch stats --format json
    """
    click.echo(output.format_stats(app.catalogue.stats(), app.catalogue.tuning_status(), fmt))


@main.command()
@click.option("--drop", is_flag=True, help="Go back to the raw VGG16 space (the tuned vectors are removed).")
@click.option(
    "--sample",
    type=click.IntRange(min=2),
    default=100_000,
    show_default=True,
    help="Learn from at most this many products (drawn at random, reproducibly with --seed).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="The draw of the sample.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@pass_app
def tune(app: App, drop: bool, sample: int, seed: int, quiet: bool) -> None:
    """Learn a search space from the catalogue's own categories, and search in it from now on.

    A linear map learnt from the products' categories makes searches favour products of the query's type while
    keeping colour, pattern and shape. Searches (CLI, Python, HTTP, SQL) use it at once and photos ingested later
    are projected too; the raw vectors stay as they are. Run it again when the catalogue has changed much
    (imgsearch stats says when). Searches go on while it runs. See docs/quality.md.

    \b
    Examples:
      imgsearch tune
      imgsearch tune --drop
    """
    from imgsearch import tuning

    if drop:
        retired = app.catalogue.untune()
        click.echo("searches use the raw VGG16 space" + (f" (tuned space #{retired.id} retired)" if retired else ""))
        return
    started = time.monotonic()
    line = _ProgressLine(enabled=not quiet)

    def progress(p: tuning.TuneProgress) -> None:
        if quiet:
            return
        if p.step == "project":
            line.show(f"projecting photos: {p.done}/{p.total}", final=p.done >= p.total)
        else:
            line.close()
            click.echo({"learn": "learning", "index": "indexing", "activate": "activating"}[p.step] + "...", err=True)

    space = app.catalogue.tune(sample=sample, seed=seed, progress=progress)
    line.close()
    click.echo(
        f"tuned space #{space.id} active: learnt from {space.products} products ({space.photos} photos) in "
        f"{space.categories} categories in {time.monotonic() - started:.0f} s"
    )


@main.command()
@click.option(
    "--pipeline",
    type=click.Choice(PIPELINE_NAMES),
    help="The pipeline the catalogue's photos should be embedded with.",
)
@click.option("--no-switch", is_flag=True, help="Only embed the photos: switch in a later run.")
@click.option("--status", "show_status", is_flag=True, help="Show the re-embedding under way, if any.")
@click.option("--cancel", is_flag=True, help="Abandon the re-embedding under way (its vectors are forgotten).")
@click.option("--errors", "errors_path", type=click.Path(path_type=Path), help="Write the photos that failed as CSV.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@pass_app
def reembed(
    app: App,
    pipeline: str | None,
    no_switch: bool,
    show_status: bool,
    cancel: bool,
    errors_path: Path | None,
    quiet: bool,
) -> None:
    """Move the catalogue to another pipeline's vectors, while searches and ingestion go on.

    Every photo is embedded again from the file or URL it was ingested from, into room beside its current vector;
    the indexes are built again over the new vectors; then one short transaction switches (searches wait for its
    last milliseconds). Interrupted, it resumes where it stopped. Photos that cannot be read again (moved, changed
    since they were ingested, vectors given without a photo) are listed and stop the switch: sync or remove them
    and run it again. A tuned search space is retired by the switch: run imgsearch tune again.

    \b
    Examples:
      imgsearch reembed --pipeline rmac
      imgsearch reembed --status
      imgsearch reembed --cancel
    """
    if sum((pipeline is not None, show_status, cancel)) != 1:
        _fail("give one of --pipeline, --status or --cancel")
    shop = app.catalogue
    if show_status:
        click.echo(output.format_reembed_status(shop.reembed_status()))
        return
    if cancel:
        cancelled = shop.cancel_reembed()
        click.echo("re-embedding cancelled" if cancelled else "nothing to cancel: no re-embedding is under way")
        return
    assert pipeline is not None
    line = _ProgressLine(enabled=not quiet)
    report = shop.reembed(
        pipeline,
        switch=not no_switch,
        progress=lambda done, total: line.show(f"embedding photos: {done}/{total}", final=done >= total),
    )
    line.close()
    _report_failures(report.failures, errors_path)
    click.echo(output.format_reembed_report(report))
    if report.failures:
        raise SystemExit(1)


# --- search ---------------------------------------------------------------------------------------------------


class _CropType(click.ParamType):
    """A box LEFT,TOP,RIGHT,BOTTOM in pixels of the photo."""

    name = "box"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Crop:
        if isinstance(value, tuple):
            return value  # type: ignore[return-value]
        try:
            return parse_crop(value)
        except InvalidQueryError as exc:
            self.fail(f"{value!r}: {exc}", param, ctx)


class _PriceType(click.ParamType):
    """A non-negative decimal price, kept exact (no float rounding on the way to SQL)."""

    name = "price"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Decimal:
        if isinstance(value, Decimal):
            return value
        try:
            price = Decimal(str(value).strip())
        except ArithmeticError:
            self.fail(f"{value!r} is not a number", param, ctx)
        if not price.is_finite() or price < 0:
            self.fail(f"{value!r} is not a price (a number >= 0)", param, ctx)
        return price


#: The units of a lifetime or an age on the command line (90d, 12h, 30m).
_AGE_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def _age(text: str) -> timedelta | None:
    """A number and a unit of :data:`_AGE_UNITS` (``90d``, ``12h``, ``30m``) as a timedelta; None if it is not one."""
    if len(text) < 2 or text[-1] not in _AGE_UNITS or not text[:-1].isdigit():
        return None
    return timedelta(**{_AGE_UNITS[text[-1]]: int(text[:-1])})


class _DurationType(click.ParamType):
    """A lifetime: a number and a unit, d(ays), h(ours) or m(inutes): 90d, 12h, 30m."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        lifetime = _age(str(value).strip().lower())
        if not lifetime:  # None, or zero
            self.fail(f"{value!r} is not a duration such as 90d, 12h or 30m", param, ctx)
        return lifetime


@dataclass(frozen=True)
class _Filters:
    """--category, --include-out-of-stock, --max-price, --exclude and --max-distance, as the query functions take
    them."""

    categories: tuple[str, ...]
    include_out_of_stock: bool
    max_price: Decimal | None
    exclude: tuple[str, ...] = ()
    max_distance: float | None = None

    @property
    def given(self) -> bool:
        return (
            bool(self.categories)
            or self.include_out_of_stock
            or self.max_price is not None
            or bool(self.exclude)
            or self.max_distance is not None
        )

    def query_args(self) -> dict[str, Any]:
        return {
            "categories": list(self.categories) or None,
            "in_stock_only": not self.include_out_of_stock,
            "max_price": self.max_price,
            "exclude_skus": list(self.exclude) or None,
            "max_distance": self.max_distance,
        }


@dataclass(frozen=True)
class _Output:
    """Where and how results go: the stdout format and the optional pictures."""

    fmt: str
    sheet: Path | None
    histogram: Path | None
    image_roots: tuple[Path, ...]


def _filter_options(func: Any) -> Any:
    @functools.wraps(func)
    def wrapper(
        *args: Any,
        categories: tuple[str, ...],
        include_out_of_stock: bool,
        max_price: Any,
        exclude: tuple[str, ...],
        max_distance: float | None,
        **kwargs: Any,
    ) -> Any:
        chosen = _Filters(categories, include_out_of_stock, max_price, exclude, max_distance)
        return func(*args, filters=chosen, **kwargs)

    options = [
        click.option("--category", "categories", multiple=True, help="Only this category (repeatable)."),
        click.option("--include-out-of-stock", is_flag=True, help="Also show sold-out products."),
        click.option("--max-price", type=_PriceType(), help="Price ceiling (inclusive)."),
        click.option("--exclude", multiple=True, metavar="SKU", help="Never return this SKU (repeatable)."),
        click.option(
            "--max-distance",
            type=click.FloatRange(0, 2),
            help="Only results this close (cosine distance, 0-2): fewer than k, or none, if nothing is. "
            "Verified matches of a photo are always kept.",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _where(_ctx: click.Context, param: click.Parameter, conditions: tuple[str, ...]) -> dict[str, object] | None:
    """--where conditions as the searches' attribute filters (a usage error for one that says nothing)."""
    try:
        return attributes.parse_where(conditions)
    except InvalidQueryError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def _search_options(func: Any) -> Any:
    @functools.wraps(func)
    def wrapper(
        *args: Any,
        fmt: str,
        sheet: Path | None,
        histogram: Path | None,
        image_roots: tuple[Path, ...],
        offset: int,
        cursor: str | None,
        search_space: str | None,
        where: dict[str, object] | None,
        **kwargs: Any,
    ) -> Any:
        # What every search command passes on as it is: the page, the space and the attribute filters.
        ranking = {"offset": offset, "cursor": cursor, "search_space": search_space, "filters": where}
        return func(*args, out=_Output(fmt, sheet, histogram, image_roots), ranking=ranking, **kwargs)

    options = [
        click.option(
            "-k", "k", type=click.IntRange(1, query.MAX_K), default=8, show_default=True, help="How many results."
        ),
        click.option(
            "--where",
            multiple=True,
            metavar="CONDITION",
            callback=_where,
            help="Only products whose attributes say so (repeatable, all must hold): KEY=VALUE, KEY=A|B (any of), "
            "KEY>=N, KEY<=N, KEY>N, KEY<N, KEY (has it), !KEY (has it not).",
        ),
        click.option(
            "--offset",
            type=click.IntRange(0, query.MAX_K - 1),
            default=0,
            help="Skip that many results first: the next page is --offset k (offset + k at most 1000).",
        ),
        click.option(
            "--cursor",
            default=None,
            help="A result's cursor (--format json or csv): the results after it, however the catalogue changed since.",
        ),
        click.option(
            "--search-space",
            type=click.Choice(query.SEARCH_SPACES),
            default=None,
            help="raw: search the raw VGG16 vectors while a tuned space is active (default: the active space).",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(output.FORMATS),
            default="table",
            show_default=True,
            help="table for people; json or csv for programs (fields: rank, sku, name, category, price, "
            "in_stock, distance, image, match, inliers, box, cursor, shop_product_id, page_url, attributes).",
        ),
        click.option(
            "--sheet",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Write a PNG contact sheet: the query, then the results in rank order.",
        ),
        click.option(
            "--histogram",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Write a PNG histogram of the results' cosine distances.",
        ),
        click.option(
            "--image-root",
            "image_roots",
            multiple=True,
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            help="Folder that relative image paths are relative to, for --sheet (repeatable; tried after the "
            "current directory). A manifest's images are relative to the manifest's folder.",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _require_products(shop: Catalogue) -> None:
    if shop.is_empty():
        _fail("the catalogue is empty: load products with `imgsearch ingest` first")


def _roots(out: _Output) -> list[Path]:
    """Where relative photo paths are looked up: --image-root folders, then IMGSEARCH_IMAGE_ROOT."""
    configured = click.get_current_context().find_object(App)
    root = configured.settings.image_root if configured is not None else None
    return [*out.image_roots, *([root] if root is not None else [])]


def _emit(
    shop: Catalogue,
    results: list[query.SearchResult],
    out: _Output,
    *,
    query_image: Path | bytes | str | None,
    query_label: str,
) -> None:
    if not results:
        # An empty catalogue is a mistake to report; no match for the filters is an answer (an empty list).
        _require_products(shop)
    notes = []
    # The pictures are written before anything is printed, so a failed write leaves no half-reported run.
    if out.sheet is not None:
        from imgsearch.sheet import write_contact_sheet

        write_contact_sheet(
            results, out.sheet, query_image=query_image, query_label=query_label, image_roots=_roots(out)
        )
        notes.append(f"contact sheet: {out.sheet}")
    if out.histogram is not None:
        from imgsearch.sheet import write_distance_histogram

        write_distance_histogram(results, out.histogram)
        notes.append(f"distance histogram: {out.histogram}")
    if results or out.fmt != "table":
        click.echo(output.format_results(results, out.fmt, width=_table_width()))
    else:
        notes.insert(0, "no products match the filters")
    for note in notes:
        click.echo(note, err=True)


def _table_width() -> int:
    # 80 columns whenever the output may be read by a program or pasted; a wider terminal shows more of
    # the names and image paths.
    if not sys.stdout.isatty():
        return 80
    import shutil

    return max(60, shutil.get_terminal_size((80, 24)).columns)


def _read_query(image: str) -> tuple[Any, Path | bytes, str]:
    """The photo to decode, the same photo for the contact sheet, and its label; '-' means stdin, an http(s)://
    address is downloaded (bounded in size and time, like the catalogue's photo URLs)."""
    from imgsearch.fetch import Fetcher, is_url

    if is_url(image):
        with Fetcher(workers=1) as fetcher:
            fetched = fetcher.fetch(image)
        if fetched.data is None:
            _fail(fetched.error or f"{image}: nothing downloaded")
        return _named_bytes(fetched.data, image), fetched.data, image.rsplit("/", 1)[-1] or image
    if image != "-":
        return Path(image), Path(image), Path(image).name
    stream = sys.stdin.buffer
    if stream.isatty():
        _fail("'-' reads the photo from stdin, but stdin is a terminal: pipe an image in (cat photo.jpg | ...)")
    from imgsearch.images import MAX_FILE_BYTES

    # Bounded: a pipe that never ends (or a huge file) is an error at the limit, not all of memory.
    data = stream.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        _fail(f"stdin: image data too large (over {MAX_FILE_BYTES} bytes)")
    return _named_bytes(data, "stdin"), data, "stdin"


def _named_bytes(data: bytes, name: str) -> Any:
    import io

    stream = io.BytesIO(data)
    # Decoding errors name their source by the stream's name, which a plain BytesIO lacks.
    stream.name = name  # type: ignore[attr-defined]
    return stream


def _by_sku(shop: Catalogue, run: Any) -> list[query.SearchResult]:
    from imgsearch.errors import UnknownSkuError

    try:
        return run()
    except UnknownSkuError:
        _require_products(shop)  # "unknown SKU" would hide the real problem: there is nothing at all
        raise


def _stored_image(shop: Catalogue, sku: str) -> str | None:
    product = shop.get(sku)
    return product.image if product else None


@main.command()
@click.argument("images", metavar="[IMAGE]...", nargs=-1)
@click.option(
    "--text",
    default=None,
    help='Words too ("linen shirt", "slim fit" a phrase, -red without): their ranking is fused with the photo\'s; '
    "with no photo, a search by words alone.",
)
@click.option("--text-filter", is_flag=True, help="Only products matching the --text words (a filter, not a ranking).")
@click.option(
    "--text-weight",
    type=click.FloatRange(0, 1),
    default=None,
    help="How much the words' ranking counts against the photo's, 0 to 1 (default 0.5, by measurement).",
)
@click.option(
    "--crop",
    type=_CropType(),
    default=None,
    help="Search only this box of the photo: LEFT,TOP,RIGHT,BOTTOM in its pixels (as shown, upright).",
)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Rank by the global vector only: no check with local features (faster; no exact matches).",
)
@_filter_options
@_search_options
@pass_app
def search(
    app: App,
    images: tuple[str, ...],
    text: str | None,
    text_filter: bool,
    text_weight: float | None,
    crop: Crop | None,
    no_verify: bool,
    filters: _Filters,
    k: int,
    out: _Output,
    ranking: dict[str, Any],
) -> None:
    """Products that look like the photo IMAGE (JPEG, PNG, WebP, GIF, BMP, TIFF; a file, an http(s):// address,
    or '-' for stdin), or like several photos of one thing (up to 5: the front and the back, a label).

    In-stock products only unless --include-out-of-stock. The nearest products by the global vector are
    checked with local features: the ones the photo provably shows (a shopper's photo of a product of the
    shop) come first, as match "exact N" (N keypoints agree); the others follow by cosine distance (smaller is
    closer) as "similar".

    \b
    Examples:
      imgsearch search photo.jpg -k 5
      imgsearch search photo.jpg --crop 120,80,900,1100 --format json
      imgsearch search photo.jpg --category shoes --max-price 50 --no-verify
      imgsearch search https://cdn.example.com/look.jpg -k 5
      cat photo.jpg | imgsearch search - --sheet results.png
      imgsearch search front.jpg back.jpg -k 5
      imgsearch search photo.jpg -k 20 --offset 20
      imgsearch search photo.jpg --text "linen" --where brand=Acme
      imgsearch search --text "red linen shirt" --max-price 60
    """
    if not images:
        # Words alone: no photo, no network.
        if text is None:
            raise click.UsageError("give a photo (IMAGE), or words with --text")
        if crop is not None or filters.max_distance is not None:
            _fail("--crop and --max-distance need a photo")
        shop = app.catalogue
        args = filters.query_args()
        args.pop("max_distance")
        ranking.pop("search_space")
        results = shop.search_words(text, k, **args, **ranking)
        _emit(shop, results, out, query_image=None, query_label=text)
        return
    words = {"text": text, "text_filter": text_filter, "text_weight": text_weight}
    if len(images) > query.MAX_QUERY_PHOTOS:
        _fail(f"give at most {query.MAX_QUERY_PHOTOS} photos of one thing, got {len(images)}")
    if len(images) > 1 and crop is not None:
        _fail("--crop is a box of one photo: give one photo with it")
    if images.count("-") > 1:
        _fail("standard input ('-') can be read once")
    shop = app.catalogue
    if len(images) == 1:
        source, picture, label = _read_query(images[0])
        results = shop.search_image(
            source, k, crop=crop, verify=not no_verify, **filters.query_args(), **ranking, **words
        )
    else:
        read = [_read_query(image) for image in images]
        sources = [source for source, _, _ in read]
        picture, label = read[0][1], f"{len(images)} photos"
        results = shop.search_images(sources, k, verify=not no_verify, **filters.query_args(), **ranking, **words)
    _emit(shop, results, out, query_image=picture, query_label=label)


@main.command()
@click.argument("sku")
@click.option("--cheaper", is_flag=True, help="Only in-stock products strictly cheaper than SKU, same category.")
@_filter_options
@_search_options
@pass_app
def similar(
    app: App, sku: str, cheaper: bool, filters: _Filters, k: int, out: _Output, ranking: dict[str, Any]
) -> None:
    """Products that look like catalogue product SKU (its stored vector; SKU itself excluded).

    \b
    Examples:
      imgsearch similar shoes-24535295 -k 5
      imgsearch similar shoes-24535295 --category shoes --include-out-of-stock
      imgsearch similar shoes-24535295 --cheaper --sheet cheaper.png
    """
    shop = app.catalogue
    if cheaper:
        if filters.given:
            _fail("--cheaper already means same category, in stock and cheaper: drop the other filters")
        results = _by_sku(shop, lambda: shop.cheaper(sku, k, **ranking))
    else:
        results = _by_sku(shop, lambda: shop.similar(sku, k, **filters.query_args(), **ranking))
    _emit(shop, results, out, query_image=_stored_image(shop, sku) if out.sheet else None, query_label=sku)


@main.command()
@click.argument("sku")
@click.option("--any-category", is_flag=True, help="Also suggest products of other categories.")
@_search_options
@pass_app
def cheaper(app: App, sku: str, any_category: bool, k: int, out: _Output, ranking: dict[str, Any]) -> None:
    """Visually similar products that are in stock and strictly cheaper than SKU (same category by default).

    \b
    Examples:
      imgsearch cheaper dress-19e4de0d -k 3
      imgsearch cheaper dress-19e4de0d --sheet cheaper.png --image-root examples
    """
    shop = app.catalogue
    results = _by_sku(shop, lambda: shop.cheaper(sku, k, same_category=not any_category, **ranking))
    _emit(shop, results, out, query_image=_stored_image(shop, sku) if out.sheet else None, query_label=sku)


@main.command()
@click.option(
    "--max-distance",
    type=click.FloatRange(0, 2),
    default=None,
    help="Photos this close (VGG16 cosine distance) may be the same product [default: measured, docs/quality.md].",
)
@click.option(
    "--max-colour-distance",
    type=click.FloatRange(0, 2),
    default=None,
    help="...and their colours this close (colour signatures, L2) [default: measured, docs/quality.md].",
)
@click.option("--category", "categories", multiple=True, help="Only this category (repeatable).")
@click.option("--min-price-gap", type=_PriceType(), help="Only groups whose prices differ by at least this much.")
@click.option("--format", "fmt", type=click.Choice(output.FORMATS), default="table", show_default=True)
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG: each group side by side.")
@click.option(
    "--image-root",
    "image_roots",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder that relative image paths are relative to, for --sheet (repeatable).",
)
@pass_app
def duplicates(
    app: App,
    max_distance: float | None,
    max_colour_distance: float | None,
    categories: tuple[str, ...],
    min_price_gap: Decimal | None,
    fmt: str,
    sheet: Path | None,
    image_roots: tuple[Path, ...],
) -> None:
    """Groups of near-identical products (the same item listed twice), the biggest price spread first.

    Each group's products have photos within --max-distance of each other and of the same colours (directly
    or through one another), in the same category. In-stock and sold-out products are both listed; sold-out
    ones are marked.

    \b
    Examples:
      imgsearch duplicates
      imgsearch duplicates --category shoes --min-price-gap 10 --sheet duplicates.png
      imgsearch duplicates --format csv > duplicates.csv
    """
    groups = app.catalogue.duplicates(
        max_distance,
        max_colour_distance=max_colour_distance,
        categories=list(categories) or None,
        min_price_gap=min_price_gap,
    )
    if sheet is not None:
        from imgsearch.sheet import write_duplicates_sheet

        root = app.settings.image_root
        write_duplicates_sheet(groups, sheet, image_roots=[*image_roots, *([root] if root is not None else [])])
    if groups or fmt != "table":
        click.echo(output.format_duplicates(groups, fmt, width=_table_width()))
    else:
        click.echo("no near-duplicate products found", err=True)
    if sheet is not None:
        click.echo(f"contact sheet: {sheet}", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (127.0.0.1: this machine).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Processes (each loads the model)."
)
@click.option(
    "--image-root",
    "image_roots",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder whose photos the page may show (repeatable; plus IMGSEARCH_IMAGE_ROOT). Nothing else is served.",
)
@click.option("--max-upload-mb", type=click.FloatRange(0.01, 1000), default=20, show_default=True)
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=30, show_default=True, help="Seconds per request.")
@click.option(
    "--queue", type=click.IntRange(1, 10_000), default=16, show_default=True, help="Photos waiting for the model."
)
@click.option(
    "--rate-limit",
    type=click.IntRange(0, 1_000_000),
    default=0,
    show_default=True,
    help="Requests a minute per API key, per worker (0: no limit); over it: 429 with Retry-After.",
)
@click.option(
    "--allow-private-urls",
    is_flag=True,
    help="Let image_url searches fetch from loopback, private and link-local addresses (refused by default).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    help="A web origin whose pages may call the API from the browser, e.g. https://shop.example (repeatable).",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(0, 3600),
    default=30,
    show_default=True,
    help="On SIGTERM or Ctrl-C, seconds the requests under way get to finish (no new ones are taken meanwhile).",
)
@pass_app
def serve(
    app: App,
    host: str,
    port: int,
    workers: int,
    image_roots: tuple[Path, ...],
    max_upload_mb: float,
    timeout: float,
    queue: int,
    rate_limit: int,
    allow_private_urls: bool,
    cors_origins: tuple[str, ...],
    shutdown_timeout: float,
) -> None:
    """Serve searches over HTTP (JSON for backends in any language) and a web page to try them.

    Needs the extra: pip install 'imgsearch[serve]'. Read-only: it connects as a reader (the embedded
    server's imgsearch_reader role). Once an API key exists (imgsearch keys create), and always when listening
    beyond loopback, every endpoint but the probes, metrics and the API description needs one
    (Authorization: Bearer KEY). Endpoints: POST /search, GET /products/SKU/similar, GET
    /products/SKU/cheaper, POST /embed, GET /livez, GET /readyz, GET /metrics; the OpenAPI description at
    /openapi.json, the page at /.

    \b
    Examples:
      imgsearch serve --image-root /srv/shop/photos
      imgsearch serve --host 0.0.0.0 --port 8080 --workers 2
      imgsearch serve --cors-origin https://shop.example --cors-origin https://www.shop.example
    """
    try:
        import uvicorn
    except ImportError:
        _fail("imgsearch serve needs the extra: pip install 'imgsearch[serve]'")
    import os

    from imgsearch.service import check_origin

    for origin in cors_origins:
        check_origin(origin)

    settings = app.settings
    environment = {
        "IMGSEARCH_MAX_UPLOAD_BYTES": str(int(max_upload_mb * 2**20)),
        "IMGSEARCH_REQUEST_TIMEOUT": str(timeout),
        "IMGSEARCH_MODEL_QUEUE": str(queue),
        "IMGSEARCH_SERVE_IMAGE_ROOTS": os.pathsep.join(str(r.resolve()) for r in image_roots),
        "IMGSEARCH_CORS_ORIGINS": " ".join(cors_origins),
        "IMGSEARCH_RATE_LIMIT": str(rate_limit),
        "IMGSEARCH_ALLOW_PRIVATE_URLS": "1" if allow_private_urls else "0",
        # Beyond loopback every request needs an API key, even before the first one is made.
        "IMGSEARCH_SERVE_PUBLIC": "0" if host in ("127.0.0.1", "::1", "localhost") else "1",
        "IMGSEARCH_SCHEMA": settings.schema,
        "IMGSEARCH_VGG16_WEIGHTS": settings.weights,
        "IMGSEARCH_PRECISION": settings.precision,
        "IMGSEARCH_RUNTIME": settings.runtime,
        "IMGSEARCH_HOME": str(settings.home),
    }
    if settings.database_url:
        environment["IMGSEARCH_DATABASE_URL"] = settings.database_url
    os.environ.update(environment)  # the workers build their application from it
    # The database first, so that a wrong URL is one line here rather than an error in every worker.
    db.check_connection(db.create_engine(db.resolve_url(settings, "reader"), schema=settings.schema))
    click.echo(f"serving on http://{host}:{port} (page at /, API description at /openapi.json)", err=True)
    uvicorn.run(
        "imgsearch.service:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        timeout_graceful_shutdown=shutdown_timeout,
    )


def run() -> None:
    """Entry point for ``python cli.py``."""
    main(prog_name="imgsearch")


# --- evaluation -----------------------------------------------------------------------------------------------


@main.command("eval")
@click.argument("folder", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--queries",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Street-to-shop mode: a CSV of shoppers' photos (image,sku[,kind]) searched against FOLDER's products "
    "(FOLDER may then be a manifest CSV too); repeatable, one report each.",
)
@click.option(
    "--distractors",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="With --queries: more products (a folder tree or a manifest) in the same catalogue (repeatable).",
)
@click.option(
    "--candidates",
    type=click.IntRange(1, query.MAX_K),
    default=query.VERIFY_CANDIDATES,
    show_default=True,
    help="With --queries: products verified with local features per photo.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="With --queries: at most this many photos of each query file, drawn at random (the same every run).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("-k", type=click.IntRange(1, 100), default=10, show_default=True, help="Evaluation depth.")
@click.option(
    "--pipeline",
    type=click.Choice(PIPELINE_NAMES),
    default="default",
    show_default=True,
    help="How photos become vectors: imgsearch's default, the original notebooks' (the baseline), or R-MAC at "
    "320 px with the aspect ratio kept (better on shoppers' photos: docs/quality.md).",
)
@click.option(
    "--tuned",
    "folds",
    type=click.IntRange(min=2),
    is_flag=False,
    flag_value=5,
    help="Also in tuned search spaces, by k-fold cross-validation over products (default 5 folds).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
@pass_app
def eval_command(
    app: App,
    folder: Path,
    queries: tuple[Path, ...],
    distractors: tuple[Path, ...],
    candidates: int,
    limit: int | None,
    as_json: bool,
    k: int,
    pipeline: str,
    folds: int | None,
    quiet: bool,
) -> None:
    """Measure search quality on a labelled folder tree FOLDER/<label>/<image>, or with --queries how often
    shoppers' photos find the product they show.

    The images go into a throwaway database created on the same server (never your catalogue) and dropped
    afterwards. Every image is searched for with the real search path (the HNSW index), itself excluded;
    a result is relevant when it has the query's label. Prints precision@1/5/10 (micro: mean over images;
    macro: mean over labels), mAP@k and the recall@k of the index against exact search. With --tuned, the same
    metrics beside them in tuned search spaces (imgsearch tune), each product searched in a space learnt
    without its fold.

    With --queries, FOLDER (or a manifest) is the catalogue and every query photo is searched as the web page
    searches it (local features verify the nearest products): R@1/5/10 and MRR, with and without verification,
    how often the first result is an exact match and how often that is right, per kind. See docs/quality.md.

    \b
    Examples:
      imgsearch eval ../shared/datasets/myntra-fashion-products
      imgsearch eval examples/catalogue --json
      imgsearch eval ../shared/datasets/myntra-fashion-products --tuned
      imgsearch eval ../shared/datasets/myntra-fashion-products --pipeline notebook
      imgsearch eval catalogue.csv --queries photos.csv --distractors ../shared/datasets/myntra-fashion-products
    """
    from imgsearch.embedding import Featurizer

    shop = app.catalogue
    if pipeline != "default":
        s = app.settings
        featurizer = Featurizer(
            weights=s.weights, batch_size=s.batch_size, precision=s.precision, pipeline=pipeline, runtime=s.runtime
        )
        shop = Catalogue(settings=s, featurizer=featurizer)
    progress = None if quiet else (lambda message: click.echo(message, err=True))
    if queries:
        if folds:
            _fail("--tuned measures catalogue-to-catalogue search: run it without --queries")
        reports = shop.evaluate_queries(
            [folder, *distractors], queries, k=k, candidates=candidates, limit=limit, progress=progress
        )
        for failure in {(f.source, f.reason): f for r in reports for f in r.failures}.values():
            click.echo(f"failed: {failure.source}: {failure.reason}", err=True)
        click.echo(output.format_street_to_shop(reports, "json" if as_json else "table"))
        return
    if distractors:
        _fail("--distractors goes with --queries")
    if not folder.is_dir():
        _fail(f"{folder} is not a folder: a labelled folder tree FOLDER/<label>/<image> (or use --queries)")
    result = shop.evaluate(folder, k=k, folds=folds or 0, progress=progress)
    for failure in result.ingest_failures:
        click.echo(f"failed: {failure.source}: {failure.reason}", err=True)
    click.echo(output.format_evaluation(result, "json" if as_json else "table"))


class _TimeType(click.ParamType):
    """A point in time: an ISO 8601 date or time (UTC unless it says otherwise), or an age such as 7d, 24h, 30m."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if text == "now":
            return datetime.now(UTC)
        age = _age(text)
        if age is not None:
            return datetime.now(UTC) - age
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is neither an ISO 8601 date/time nor an age like 7d, 24h or 30m", param, ctx)
        return when if when.tzinfo else when.replace(tzinfo=UTC)


@main.command()
@click.option("--since", type=_TimeType(), default="30d", show_default=True, help="Start of the window (or an age).")
@click.option("--until", type=_TimeType(), default="now", show_default=True, help="End of the window (exclusive).")
@click.option("--format", "fmt", type=click.Choice(output.REPORT_FORMATS), default="table", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report to this file.")
@pass_app
def report(app: App, since: datetime, until: datetime, fmt: str, out: Path | None) -> None:
    """What shoppers did with the results: click-through by rank, mean reciprocal rank of the clicks, add-to-cart
    and conversion per search, by category and by variant (search space or A/B arm), and every variant against
    the first with 95% intervals.

    The website reports the events (POST /events, Catalogue.record_events, imgsearch_record_events, or
    imgsearch events record).

    \b
    Examples:
      imgsearch report
      imgsearch report --since 2026-11-01 --until 2026-12-01 --format json
      imgsearch report --since 7d --format html --out report.html
    """
    if out is not None:
        _check_writable(out)
    text = output.format_report(app.catalogue.report(since, until), fmt)
    if out is None:
        click.echo(text)
    else:
        out.write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")
        click.echo(f"report: {out}", err=True)


@main.group(cls=_Group)
def events_group() -> None:
    """Shoppers' events (impressions, clicks, carts, purchases) that measure the search: load and retention."""


main.add_command(events_group, name="events")


@events_group.command("record")
@click.argument("file", type=click.File("rb"))
@pass_app
def events_record(app: App, file: Any) -> None:
    """Store the events of FILE (JSON lines: one event object a line; '-' reads stdin), in batches of 1000;
    events already stored (same event_id) are skipped.

    \b
    Example:
      imgsearch events record clicks.jsonl
    """
    import json

    from imgsearch.feedback import MAX_EVENTS
    from imgsearch.sources import MAX_LINE_CHARS

    stored = duplicates = 0
    batch: list[Any] = []

    def flush() -> None:
        nonlocal stored, duplicates
        done = app.catalogue.record_events(batch)
        stored, duplicates = stored + done.stored, duplicates + done.duplicates
        batch.clear()

    for number, raw in enumerate(iter(lambda: file.readline(MAX_LINE_CHARS + 1), b""), start=1):
        if len(raw) > MAX_LINE_CHARS:
            _fail(f"line {number} is longer than {MAX_LINE_CHARS} characters: not JSON lines of events")
        if not raw.strip():
            continue
        try:
            batch.append(json.loads(raw))
        except (ValueError, RecursionError):
            _fail(f"line {number} is not a JSON object (events are JSON lines)")
        if len(batch) == MAX_EVENTS:
            flush()
    if batch:
        flush()
    click.echo(f"stored {stored} events, {duplicates} already stored")


@events_group.command("forget")
@click.option("--days", type=click.IntRange(1), help="Keep this many days [default: IMGSEARCH_EVENT_RETENTION_DAYS].")
@pass_app
def events_forget(app: App, days: int | None) -> None:
    """Delete events older than the retention (run it daily, e.g. from cron)."""
    gone = app.catalogue.forget_events(days)
    click.echo(f"deleted {gone} events older than {days or app.settings.event_retention_days} days")


@main.group(cls=_Group)
def keys_group() -> None:
    """API keys of the HTTP service: once one exists, every search needs a key (Authorization: Bearer KEY)."""


main.add_command(keys_group, name="keys")


@keys_group.command("create")
@click.argument("name")
@click.option(
    "--scope",
    type=click.Choice(["search", "write", "admin"]),
    default="search",
    show_default=True,
    help="search: the search endpoints; write: also POST /events; admin: everything.",
)
@click.option(
    "--expires-in",
    type=_DurationType(),
    default=None,
    metavar="DURATION",
    help="It stops working after this long: 90d, 12h, 30m (default: never).",
)
@pass_app
def keys_create(app: App, name: str, scope: str, expires_in: timedelta | None) -> None:
    """Make an API key NAME; the key is printed alone on the last line, once (only its digest is stored).

    \b
    Examples:
      KEY=$(imgsearch keys create shop-website --scope write | tail -1)
      imgsearch keys create partner-trial --expires-in 30d
    """
    made, key = app.catalogue.create_key(name, scope, expires_in)
    until = f", until {made.expires_at:%Y-%m-%d %H:%M %Z}" if made.expires_at else ""
    click.echo(f"key {made.name} ({made.scope}{until}) made; it is shown once, keep it now:", err=True)
    click.echo(key)


@keys_group.command("list")
@pass_app
def keys_list(app: App) -> None:
    """Every key: name, scope, first characters, when made and revoked (never the keys themselves)."""
    for key in app.catalogue.list_keys():
        made = f"{key.created_at:%Y-%m-%d %H:%M}" if key.created_at else "?"
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        if key.expires_at and not key.revoked_at:
            expired = key.expires_at <= datetime.now(key.expires_at.tzinfo)
            state = f"{'expired' if expired else 'active, expires'} {key.expires_at:%Y-%m-%d %H:%M}"
        click.echo(f"{output.printable(key.name):<24} {key.scope:<7} {key.prefix}...  made {made}  {state}")


@keys_group.command("revoke")
@click.argument("name")
@pass_app
def keys_revoke(app: App, name: str) -> None:
    """Revoke the key NAME (the service refuses it within seconds)."""
    key = app.catalogue.revoke_key(name)
    click.echo(f"key {key.name} revoked")
