"""The catalogue's tables as SQLAlchemy models. Alembic migrations create the schema; a test checks the two agree."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pgvector.sqlalchemy import HALFVEC, Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    cast,
    func,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column
from sqlalchemy.types import UserDefinedType

from imgsearch.colour import COLOUR_BINS

#: Dimensions of every vector: VGG16's 512 block5 channels (the column type, and what the featurizer makes).
DIMENSION = 512

# Limits of the product fields: the schema's own (sku), or what its b-tree indexes can hold (category). Values
# are checked against them before they reach the database (imgsearch.validation).
SKU_MAX_LENGTH = 255
CATEGORY_MAX_LENGTH = 255
NAME_MAX_LENGTH = 2000
IMAGE_MAX_LENGTH = 4096
SHOP_PRODUCT_ID_MAX_LENGTH = 255
PAGE_URL_MAX_LENGTH = 4096
DESCRIPTION_MAX_LENGTH = 20000
MAX_PRICE = Decimal("9999999999.99")  # numeric(12, 2)


#: What the photos' HNSW indexes hold (revision 0008): the vectors rounded to half precision, half the memory of
#: full ones at the same recall; searches walk them with half-precision queries, then rank exactly.
PHOTO_INDEX_EXPRESSION = cast(literal_column("embedding"), HALFVEC(DIMENSION)).label("embedding_half")
PHOTO_INDEX_OPS = {"embedding_half": "halfvec_cosine_ops"}
#: The HNSW graph parameters of every photo index (pgvector's defaults).
PHOTO_INDEX_GRAPH = {"m": 16, "ef_construction": 64}


class Base(DeclarativeBase):
    """Declarative base holding the catalogue's metadata."""


class _RecordedSpace:
    """A single row naming an embedding space: the model, weights and preprocessing that make its vectors
    (catalogue.SPACE_COLUMNS)."""

    id: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    model_name: Mapped[str] = mapped_column(Text, nullable=False)
    weights_id: Mapped[str] = mapped_column(Text, nullable=False)
    preprocessing_version: Mapped[str] = mapped_column(Text, nullable=False)
    dimension: Mapped[int] = mapped_column(Integer, nullable=False)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[CheckConstraint, ...]:
        return (
            CheckConstraint("id", name=f"ck_{cls.__tablename__}_single_row"),
            CheckConstraint(f"dimension = {DIMENSION}", name=f"ck_{cls.__tablename__}_dimension"),
        )


class EmbeddingSpaceRow(_RecordedSpace, Base):
    """The single row saying which model, weights and preprocessing produced every vector in ``products``."""

    __tablename__ = "embedding_space"

    # After the space's columns (sort_order), where the migration put it.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), sort_order=1
    )


class EmbeddingSpaceNextRow(_RecordedSpace, Base):
    """The space a re-embedding under way moves the catalogue to (``imgsearch reembed``; revision 0022)."""

    __tablename__ = "embedding_space_next"

    started_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), sort_order=1
    )


class Product(Base):
    """A product of the shop: what the website shows and filters by. Its photos are :class:`ProductImage` rows."""

    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint(f"length(btrim(sku)) > 0 AND length(sku) <= {SKU_MAX_LENGTH}", name="ck_products_sku"),
        CheckConstraint("length(btrim(category)) > 0", name="ck_products_category"),
        CheckConstraint("price >= 0", name="ck_products_price"),
        CheckConstraint(
            f"length(btrim(shop_product_id)) > 0 AND length(shop_product_id) <= {SHOP_PRODUCT_ID_MAX_LENGTH}",
            name="ck_products_shop_product_id",
        ),
        CheckConstraint(
            f"page_url ~ '^https?://[^[:space:]]+$' AND length(page_url) <= {PAGE_URL_MAX_LENGTH}",
            name="ck_products_page_url",
        ),
        CheckConstraint("jsonb_typeof(attributes) = 'object'", name="ck_products_attributes"),
        CheckConstraint(f"length(description) <= {DESCRIPTION_MAX_LENGTH}", name="ck_products_description"),
        # Serve the bounded count that picks exact or index search (category, price); in_stock is in no index,
        # so that a stock sync's updates are HOT.
        Index("ix_products_category_price", "category", "price"),
        Index("ix_products_price", "price"),
        # Equality and any-of filters on the shop's attributes (revision 0018: p.attributes @@ jsonpath).
        Index(
            "ix_products_attributes",
            "attributes",
            postgresql_using="gin",
            postgresql_ops={"attributes": "jsonb_path_ops"},
        ),
        # Full-text search over the product's words (revision 0019).
        Index("ix_products_words", "words", postgresql_using="gin"),
        # Room in every page for updated rows, so that those updates stay on their page (revision 0007).
        {"postgresql_with": {"fillfactor": 80}},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    sku: Mapped[str] = mapped_column(String(SKU_MAX_LENGTH), nullable=False, unique=True)
    name: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str] = mapped_column(Text, nullable=False)
    price: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    in_stock: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    #: The shop's own id of the product and its page on the shop's site (revision 0017), to join results back.
    shop_product_id: Mapped[str | None] = mapped_column(Text)
    page_url: Mapped[str | None] = mapped_column(Text)
    #: The shop's attributes of the product (revision 0018): a JSON object of text, numbers, booleans and lists of
    #: text, which searches filter on (imgsearch_attribute_filter).
    attributes: Mapped[dict[str, object]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    #: The shop's description of the product, and the product's words for full-text search (revision 0019: name,
    #: category, text attributes and description, kept by the trigger trg_products_words).
    description: Mapped[str | None] = mapped_column(Text)
    words: Mapped[str | None] = mapped_column(TSVECTOR)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class RegConfig(UserDefinedType[str]):
    """PostgreSQL's ``regconfig``: a text search configuration, by name."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "regconfig"


class CatalogueSettings(Base):
    """Settings of the catalogue held in the database itself, one row (revision 0019)."""

    __tablename__ = "catalogue_settings"
    __table_args__ = (CheckConstraint("id", name="ck_catalogue_settings_one_row"),)

    id: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    #: The language of the products' words (imgsearch_set_text_language).
    text_language: Mapped[str] = mapped_column(RegConfig(), nullable=False, server_default=text("'english'"))


class ProductImage(Base):
    """One photo of a product, with its embedding. A product has one or more."""

    __tablename__ = "product_images"
    __table_args__ = (
        UniqueConstraint("product_id", "image", name="uq_product_images_product_image"),
        CheckConstraint("image_sha256 ~ '^[0-9a-f]{64}$'", name="ck_product_images_image_sha256"),
        # A zero vector has no direction: its cosine distance to anything is undefined (NaN).
        CheckConstraint("vector_norm(embedding) > 0", name="ck_product_images_embedding_nonzero"),
        CheckConstraint(
            "embedding_next IS NULL OR vector_norm(embedding_next) > 0", name="ck_product_images_embedding_next_nonzero"
        ),
        CheckConstraint("position >= 0", name="ck_product_images_position"),
        Index(
            "ix_product_images_embedding",
            PHOTO_INDEX_EXPRESSION,
            postgresql_using="hnsw",
            postgresql_with=PHOTO_INDEX_GRAPH,
            postgresql_ops=PHOTO_INDEX_OPS,
        ),
        Index("ix_product_images_product", "product_id", "position"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    product_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("products.id", ondelete="CASCADE"), nullable=False)
    #: Where the photo is: an absolute path, a URL, or "" for a vector given without a picture.
    image: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("''"))
    position: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)
    #: The product's category, kept in step by triggers (category indexes are partial indexes on it).
    category: Mapped[str] = mapped_column(Text, nullable=False)
    embedding: Mapped[list[float]] = mapped_column(Vector(DIMENSION), nullable=False)
    #: The photo's vector in the space a re-embedding under way moves the catalogue to (imgsearch.reembedding;
    #: revision 0022), NULL until computed and when none is under way.
    embedding_next: Mapped[list[float] | None] = mapped_column(Vector(DIMENSION))
    #: The photo's colour signature (imgsearch.colour), for telling colour variants apart; None if not computed.
    colour: Mapped[list[float] | None] = mapped_column(Vector(COLOUR_BINS))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class SearchSpaceRow(Base):
    """A map learnt by ``imgsearch tune`` (imgsearch.tuning): when, how, from what; at most one is active."""

    __tablename__ = "search_spaces"
    __table_args__ = (
        CheckConstraint(
            "products >= 0 AND photos >= products AND catalogue_products >= 0", name="ck_search_spaces_counts"
        ),
        Index("ux_search_spaces_active", "active", unique=True, postgresql_where=text("active")),
    )

    id: Mapped[int] = mapped_column(Integer, Identity(always=True), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    method: Mapped[str] = mapped_column(Text, nullable=False)
    parameters: Mapped[dict] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    products: Mapped[int] = mapped_column(Integer, nullable=False)
    photos: Mapped[int] = mapped_column(Integer, nullable=False)
    categories: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    catalogue_products: Mapped[int] = mapped_column(Integer, nullable=False)
    #: The map applied to the centre it learnt, subtracted after the map; None when it learnt no centre.
    shift: Mapped[list[float] | None] = mapped_column(Vector(DIMENSION))
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SearchSpaceMapRow(Base):
    """One output dimension of a learnt map: tuned[position] = <direction, raw vector>."""

    __tablename__ = "search_space_rows"
    __table_args__ = (CheckConstraint("position >= 0 AND position <= 511", name="ck_search_space_rows_position"),)

    space_id: Mapped[int] = mapped_column(Integer, ForeignKey("search_spaces.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    direction: Mapped[list[float]] = mapped_column(Vector(DIMENSION), nullable=False)


class TunedImage(Base):
    """A photo's vector in the active tuned space (empty without one), searched instead of the raw one."""

    __tablename__ = "tuned_images"
    __table_args__ = (
        Index(
            "ix_tuned_images_embedding",
            PHOTO_INDEX_EXPRESSION,
            postgresql_using="hnsw",
            postgresql_with=PHOTO_INDEX_GRAPH,
            postgresql_ops=PHOTO_INDEX_OPS,
        ),
        Index("ix_tuned_images_product", "product_id"),
    )

    image_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("product_images.id", ondelete="CASCADE"), primary_key=True
    )
    product_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    category: Mapped[str] = mapped_column(Text, nullable=False)
    embedding: Mapped[list[float]] = mapped_column(Vector(DIMENSION), nullable=False)


class PhotoFeatures(Base):
    """A photo's local features (imgsearch.local_features): what verifies that a shopper's photo shows it."""

    __tablename__ = "photo_features"
    __table_args__ = (
        CheckConstraint("width > 0 AND height > 0", name="ck_photo_features_size"),
        CheckConstraint(
            "octet_length(descriptors) % 128 = 0 AND octet_length(points) * 32 = octet_length(descriptors)",
            name="ck_photo_features_keypoints",
        ),
    )

    image_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("product_images.id", ondelete="CASCADE"), primary_key=True
    )
    #: How the features were made (imgsearch.local_features.EXTRACTOR).
    extractor: Mapped[str] = mapped_column(Text, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    #: Keypoint coordinates: two little-endian uint16 each, in 1/16 pixel.
    points: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    #: SIFT descriptors, 128 bytes each.
    descriptors: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class VisualVocabulary(Base):
    """A vocabulary of visual words (imgsearch.visual_words): two levels of RootSIFT centroids; one is active."""

    __tablename__ = "visual_vocabularies"
    __table_args__ = (
        CheckConstraint(
            "coarse_cells > 0 AND fine_words > 0 AND descriptors >= 0 AND photos >= 0 "
            "AND octet_length(coarse) = coarse_cells * 256 AND octet_length(fine) = coarse_cells * fine_words * 256",
            name="ck_visual_vocabularies_shape",
        ),
        Index("ux_visual_vocabularies_active", "active", unique=True, postgresql_where=text("active")),
    )

    id: Mapped[int] = mapped_column(Integer, Identity(always=True), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    extractor: Mapped[str] = mapped_column(Text, nullable=False)
    coarse_cells: Mapped[int] = mapped_column(Integer, nullable=False)
    fine_words: Mapped[int] = mapped_column(Integer, nullable=False)
    #: Descriptors it was learnt from; photos indexed when it was activated (the idf's floor).
    descriptors: Mapped[int] = mapped_column(BigInteger, nullable=False)
    photos: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    #: Centroids, little-endian float16: (coarse_cells, 128) and (coarse_cells, fine_words, 128).
    coarse: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    fine: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))


class VisualWordPhoto(Base):
    """A photo's distinct visual words under one vocabulary: their number (the postings hold the words)."""

    __tablename__ = "visual_word_photos"
    __table_args__ = (
        CheckConstraint("words > 0", name="ck_visual_word_photos_words"),
        Index("ix_visual_word_photos_vocabulary", "vocabulary_id"),
    )

    image_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("photo_features.image_id", ondelete="CASCADE"), primary_key=True
    )
    vocabulary_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("visual_vocabularies.id", ondelete="CASCADE"), primary_key=True
    )
    words: Mapped[int] = mapped_column(Integer, nullable=False)


class VisualWordPosting(Base):
    """One word of one photo: the inverted index that imgsearch_word_candidates reads."""

    __tablename__ = "visual_word_postings"
    __table_args__ = (
        ForeignKeyConstraint(
            ["image_id", "vocabulary_id"],
            ["visual_word_photos.image_id", "visual_word_photos.vocabulary_id"],
            name="fk_visual_word_postings_photo",
            ondelete="CASCADE",
        ),
        CheckConstraint("word >= 0", name="ck_visual_word_postings_word"),
        Index("ix_visual_word_postings_image", "image_id"),
    )

    vocabulary_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    word: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class VisualWordFrequency(Base):
    """How many photos had a word when its vocabulary was activated: the word search's idf comes from it."""

    __tablename__ = "visual_word_frequencies"
    __table_args__ = (CheckConstraint("word >= 0 AND photos > 0", name="ck_visual_word_frequencies_counts"),)

    vocabulary_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("visual_vocabularies.id", ondelete="CASCADE"), primary_key=True
    )
    word: Mapped[int] = mapped_column(Integer, primary_key=True)
    photos: Mapped[int] = mapped_column(BigInteger, nullable=False)


class SearchEvent(Base):
    """Something a shopper did with a list of results, as the website reported it (imgsearch.feedback)."""

    __tablename__ = "search_events"
    __table_args__ = (
        UniqueConstraint("event_id", name="uq_search_events_event_id"),
        CheckConstraint("kind IN ('impression', 'click', 'add_to_cart', 'purchase')", name="ck_search_events_kind"),
        CheckConstraint(
            "length(event_id) BETWEEN 1 AND 200 AND length(search_id) BETWEEN 1 AND 200 "
            "AND coalesce(length(shopper), 0) <= 200 AND coalesce(length(sku), 0) <= 200 "
            "AND coalesce(length(category), 0) <= 200 AND length(variant) <= 100",
            name="ck_search_events_ids",
        ),
        CheckConstraint("rank BETWEEN 1 AND 10000", name="ck_search_events_rank"),
        CheckConstraint("value >= 0", name="ck_search_events_value"),
        Index("ix_search_events_occurred_at", "occurred_at", postgresql_using="brin"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    event_id: Mapped[str] = mapped_column(Text, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    search_id: Mapped[str] = mapped_column(Text, nullable=False)
    shopper: Mapped[str | None] = mapped_column(Text)
    sku: Mapped[str | None] = mapped_column(Text)
    rank: Mapped[int | None] = mapped_column(Integer)
    category: Mapped[str | None] = mapped_column(Text)
    variant: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("''"))
    value: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))


class SearchEventCount(Base):
    """Events by hour, variant, category, rank and kind: what the report sums (kept by imgsearch_record_events)."""

    __tablename__ = "search_event_counts"

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    variant: Mapped[str] = mapped_column(Text, primary_key=True)
    category: Mapped[str] = mapped_column(Text, primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger, nullable=False)
    value: Mapped[Decimal] = mapped_column(Numeric, nullable=False, server_default=text("0"))


class SearchSummary(Base):
    """One search (a list of results shown): what the report's per-search measures read."""

    __tablename__ = "search_summaries"
    __table_args__ = (Index("ix_search_summaries_started_at", "started_at", postgresql_using="brin"),)

    search_id: Mapped[str] = mapped_column(Text, primary_key=True)
    variant: Mapped[str] = mapped_column(Text, nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    shown: Mapped[bool] = mapped_column(Boolean, nullable=False)
    best_click: Mapped[int | None] = mapped_column(Integer)
    carts: Mapped[int] = mapped_column(Integer, nullable=False)
    bought: Mapped[bool] = mapped_column(Boolean, nullable=False)


class ApiKeyRow(Base):
    """An API key of the HTTP service (imgsearch.keys): its digest, never the key."""

    __tablename__ = "api_keys"
    __table_args__ = (
        UniqueConstraint("name", name="uq_api_keys_name"),
        UniqueConstraint("key_sha256", name="uq_api_keys_key_sha256"),
        CheckConstraint("scope IN ('search', 'write', 'admin')", name="ck_api_keys_scope"),
        CheckConstraint("length(name) BETWEEN 1 AND 100", name="ck_api_keys_name"),
        CheckConstraint("octet_length(key_sha256) = 32", name="ck_api_keys_digest"),
        CheckConstraint("expires_at IS NULL OR expires_at > created_at", name="ck_api_keys_expiry"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    scope: Mapped[str] = mapped_column(Text, nullable=False)
    key_sha256: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    prefix: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When it stops working by itself (revision 0014); NULL: never.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
