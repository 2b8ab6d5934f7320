-- Every sink batch updates the snapshot of each application it saw: most rows of this table
-- are rewritten many times a minute. With room left on each page an update stays on its page
-- (a HOT update: no new entry in the primary key's index), which made the sink's upsert
-- 1.5 to 2 times as fast on a fleet of 100,000 applications. Applies to pages written from
-- now on; `VACUUM FULL application` rewrites the existing ones.
ALTER TABLE application SET (fillfactor = 50);
