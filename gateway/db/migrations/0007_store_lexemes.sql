-- How many chunks of each vector store hold each lexeme (issue 10: text search speed and ranking).
--
-- Text search takes its candidates from the query's rarer words and weighs each word by how rare it is in the
-- stores searched. Counting a word's chunks at search time visits a heap row per chunk (up to 500 a word: 2-5 ms
-- each at 100k chunks, most of a text search); this table holds the counts, kept by statement triggers on
-- `chunks` (COPY and cascaded deletes fire them too). The row with lexeme '' (no lexeme is empty) counts the
-- store's chunks. A transaction that changes a store's chunks first takes a transaction lock on the store (an
-- advisory lock, 7007 and the hash of its id): ingestion inserts a big file in several statements, each of which
-- would lock lexeme rows in an order of its own, so two such transactions could deadlock; with the store lock the
-- second waits for the first to commit.
CREATE TABLE store_lexemes (
    vector_store_id text NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    lexeme          text NOT NULL,
    tenant_id       uuid NOT NULL,
    chunks          integer NOT NULL,
    PRIMARY KEY (vector_store_id, lexeme)
);

CREATE FUNCTION store_lexemes_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7007, hashtext(id))
    FROM (SELECT DISTINCT vector_store_id AS id FROM added ORDER BY 1) AS s;
    INSERT INTO store_lexemes AS s (vector_store_id, lexeme, tenant_id, chunks)
    SELECT vector_store_id, lexeme, tenant_id, count(*)
    FROM (SELECT vector_store_id, tenant_id, unnest(tsvector_to_array(tsv)) AS lexeme FROM added
          UNION ALL SELECT vector_store_id, tenant_id, '' FROM added) AS l
    GROUP BY vector_store_id, tenant_id, lexeme ORDER BY vector_store_id, lexeme
    ON CONFLICT (vector_store_id, lexeme) DO UPDATE SET chunks = s.chunks + excluded.chunks;
    RETURN NULL;
END
$$;

CREATE FUNCTION store_lexemes_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7007, hashtext(id))
    FROM (SELECT DISTINCT vector_store_id AS id FROM removed ORDER BY 1) AS s;
    UPDATE store_lexemes AS s SET chunks = s.chunks - r.chunks
    FROM (SELECT vector_store_id, lexeme, count(*) AS chunks
          FROM (SELECT vector_store_id, unnest(tsvector_to_array(tsv)) AS lexeme FROM removed
                UNION ALL SELECT vector_store_id, '' FROM removed) AS l
          GROUP BY vector_store_id, lexeme ORDER BY vector_store_id, lexeme) AS r
    WHERE s.vector_store_id = r.vector_store_id AND s.lexeme = r.lexeme;
    RETURN NULL;
END
$$;

CREATE TRIGGER chunks_lexemes_added AFTER INSERT ON chunks
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION store_lexemes_add();
CREATE TRIGGER chunks_lexemes_removed AFTER DELETE ON chunks
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION store_lexemes_remove();

INSERT INTO store_lexemes (vector_store_id, lexeme, tenant_id, chunks)
SELECT vector_store_id, lexeme, tenant_id, count(*)
FROM (SELECT vector_store_id, tenant_id, unnest(tsvector_to_array(tsv)) AS lexeme FROM chunks
      UNION ALL SELECT vector_store_id, tenant_id, '' FROM chunks) AS l
GROUP BY vector_store_id, tenant_id, lexeme;

GRANT SELECT, INSERT, UPDATE, DELETE ON store_lexemes TO tenantgate_tenant;
ALTER TABLE store_lexemes ENABLE ROW LEVEL SECURITY;
ALTER TABLE store_lexemes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON store_lexemes TO tenantgate_tenant
    USING (tenant_id = nullif(current_setting('tenantgate.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = nullif(current_setting('tenantgate.tenant_id', true), '')::uuid);
