-- Run once by the postgres image when the data volume is new (as the superuser "postgres").
-- The auth login pgstepup uses to look up SCRAM verifiers, without superuser rights
-- (README.md, "Identity: what a DBA sets up"):
SET password_encryption = 'scram-sha-256';
CREATE ROLE pgstepup_auth LOGIN PASSWORD 'auth-change-me';
CREATE SCHEMA pgstepup;
CREATE FUNCTION pgstepup.get_auth(p_user text) RETURNS text
  LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
  $$ SELECT rolpassword FROM pg_authid
     WHERE rolname = p_user AND rolcanlogin
       AND (rolvaliduntil IS NULL OR rolvaliduntil > now()) $$;
REVOKE ALL ON FUNCTION pgstepup.get_auth(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA pgstepup TO pgstepup_auth;
GRANT EXECUTE ON FUNCTION pgstepup.get_auth(text) TO pgstepup_auth;

-- The registered security keys of every replica (table pgstepup_credentials, created by
-- pgstepup on first use). Back it up: pg_dump -d pgstepup -t pgstepup_credentials.
CREATE ROLE pgstepup_keys LOGIN PASSWORD 'keys-change-me';
CREATE DATABASE pgstepup OWNER pgstepup_keys;

-- A user and a database to try it with: reads flow, writes wait for alice's approval.
CREATE ROLE alice LOGIN PASSWORD 'alice';
CREATE DATABASE app OWNER alice;
\connect app
SET ROLE alice;
CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL);
INSERT INTO orders VALUES (1, 'keyboard'), (2, 'monitor'), (7, 'security key');
