-- What shoppers did with the results: each impression, click, add to cart and purchase that a shop's website
-- reports (imgsearch/feedback.py), so that the quality of the search is measured on real shoppers and not only
-- offline. One row per event; event_id is the website's own id, so a batch sent twice is stored once.
-- Run by revision 0012 inside imgsearch's schema (the first of the search_path).

CREATE TABLE search_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id text NOT NULL,
    -- impression: a result was shown; click: opened; add_to_cart, purchase: what followed
    kind text NOT NULL,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    -- the search the event belongs to (the website's id for one list of results shown)
    search_id text NOT NULL,
    -- who searched (any stable pseudonymous id: it only groups a shopper's searches and splits traffic)
    shopper text,
    -- the result the event is about, its position in the list (1 = first) and its category
    sku text,
    rank integer,
    category text,
    -- which search served the list (a search space or an A/B arm)
    variant text NOT NULL DEFAULT '',
    -- a purchase's amount
    value numeric(14, 2),
    CONSTRAINT uq_search_events_event_id UNIQUE (event_id),
    CONSTRAINT ck_search_events_kind CHECK (kind IN ('impression', 'click', 'add_to_cart', 'purchase')),
    CONSTRAINT ck_search_events_ids CHECK (
        length(event_id) BETWEEN 1 AND 200 AND length(search_id) BETWEEN 1 AND 200
        AND coalesce(length(shopper), 0) <= 200 AND coalesce(length(sku), 0) <= 200
        AND coalesce(length(category), 0) <= 200 AND length(variant) <= 100
    ),
    CONSTRAINT ck_search_events_rank CHECK (rank BETWEEN 1 AND 10000),
    CONSTRAINT ck_search_events_value CHECK (value >= 0)
);
-- Events arrive in time order: a BRIN index finds a report's window for a few pages of index, and costs the
-- writers next to nothing.
CREATE INDEX ix_search_events_occurred_at ON search_events USING brin (occurred_at);

-- The report reads these two instead of every event, so that its time does not grow with the traffic: both are
-- kept by imgsearch_record_events as events arrive (a new event only: a duplicate adds nothing).
-- Events counted by hour, variant, the result's category ('' unknown), its rank (0 none) and kind.
CREATE TABLE search_event_counts (
    hour timestamptz NOT NULL,
    variant text NOT NULL,
    category text NOT NULL,
    rank integer NOT NULL,
    kind text NOT NULL,
    events bigint NOT NULL,
    -- the purchases' amounts
    value numeric NOT NULL DEFAULT 0,
    CONSTRAINT pk_search_event_counts PRIMARY KEY (hour, variant, category, rank, kind)
);
-- One row per search (a list of results shown): when its first event occurred, whether it was shown (an
-- impression), the rank of its best-placed click, its carts and whether something was bought.
CREATE TABLE search_summaries (
    search_id text PRIMARY KEY,
    variant text NOT NULL,
    started_at timestamptz NOT NULL,
    shown boolean NOT NULL,
    best_click integer,
    carts integer NOT NULL,
    bought boolean NOT NULL
);
CREATE INDEX ix_search_summaries_started_at ON search_summaries USING brin (started_at);
