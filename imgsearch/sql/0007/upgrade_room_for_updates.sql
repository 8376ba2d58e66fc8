-- Room in every page of products for updated rows: a stock flag flipped (in_stock is in no index) then stays
-- on its page as a heap-only (HOT) update, with no new index entries. Applies to pages written from now on
-- (loads, updates); VACUUM (FULL) products rewrites an existing catalogue's pages (docs/operations.md).
ALTER TABLE products SET (fillfactor = 80);
