-- Full-text search under row-level security (issue 10).
--
-- Inside a tenant transaction (role tenantgate_tenant, migration 0004) Postgres evaluates a condition before
-- the row-level security policy only if its function is LEAKPROOF. `tsvector @@ tsquery` (ts_match_vq) is not
-- marked so, so the GIN index on chunks.tsv could not serve a tenant's text search: every query scanned all
-- chunks of the stores searched (264 ms p50 at 100k chunks). ts_match_vq raises no error that depends on its
-- arguments' contents and returns only the match, so it reveals nothing a policy should hide: marking it
-- LEAKPROOF lets the index find the matching rows first, then the policy still filters them.
--
-- Only a superuser may mark a function LEAKPROOF. The embedded Postgres connects as one; on a server where
-- the gateway's role is not, a DBA runs the ALTER below once (README, "Retrieval"); until then text search
-- works, only slower.
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        ALTER FUNCTION ts_match_vq(tsvector, tsquery) LEAKPROOF;
    ELSE
        RAISE WARNING 'tenantgate: text search under row-level security is slow until a superuser runs: '
                      'ALTER FUNCTION ts_match_vq(tsvector, tsquery) LEAKPROOF';
    END IF;
END
$$;
