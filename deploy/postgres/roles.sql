-- Least-privilege roles for the realtime layer (README "Least privilege").
--
-- Run once, in the application's database, as the owner of its tables (or
-- an admin role that is a member of that owner):
--
--   psql "$OWNER_URL" -v db=app -v ingestor_password='…' -v gateway_password='…' \
--        -f deploy/postgres/roles.sql
--
-- tests/tests/least_privilege.rs runs exactly this file, then the whole
-- pipeline with the two roles, so this file is what is known to work.
-- Table names are the Oikion defaults; list your routed tables instead.

-- The ingestor: reads the replication slot, nothing else. REPLICATION
-- lets it create the slot and stream it (RDS/Aurora: GRANT rds_replication;
-- Cloud SQL: ALTER ROLE … WITH REPLICATION as cloudsqlsuperuser).
CREATE ROLE realtime_ingestor LOGIN REPLICATION PASSWORD :'ingestor_password';
GRANT CONNECT ON DATABASE :"db" TO realtime_ingestor;
-- Heartbeats (pg_logical_emit_message(false, 'realtime-heartbeat', '')).
-- EXECUTE is granted to PUBLIC by default; this keeps it working where an
-- admin revoked that.
GRANT EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean, text, text)
  TO realtime_ingestor;

-- The publication and REPLICA IDENTITY FULL both need ownership of the
-- tables, which the ingestor does not have: the owner sets them up once.
-- The ingestor then uses this publication as it is (it never alters a
-- publication it does not own) and refuses to start if a routed table is
-- missing from it. Set REALTIME_MANAGE_REPLICA_IDENTITY=false (the default).
CREATE PUBLICATION realtime
  FOR TABLE properties, listings, addresses, media_assets, organization_members,
            organizations, activities, clients, tasks, notes, interactions;
ALTER TABLE properties REPLICA IDENTITY FULL;
ALTER TABLE listings REPLICA IDENTITY FULL;
ALTER TABLE addresses REPLICA IDENTITY FULL;
ALTER TABLE media_assets REPLICA IDENTITY FULL;
ALTER TABLE organization_members REPLICA IDENTITY FULL;
ALTER TABLE organizations REPLICA IDENTITY FULL;
ALTER TABLE activities REPLICA IDENTITY FULL;
ALTER TABLE clients REPLICA IDENTITY FULL;
ALTER TABLE tasks REPLICA IDENTITY FULL;
ALTER TABLE notes REPLICA IDENTITY FULL;
ALTER TABLE interactions REPLICA IDENTITY FULL;
-- Child rows (listings, notes, …) take their organization from their parent
-- row; the ingestor reads it for parents that did not change while it ran:
-- the id and organization columns, through row-level security.
GRANT USAGE ON SCHEMA public TO realtime_ingestor;
GRANT SELECT (id, "organizationId") ON properties, clients TO realtime_ingestor;
CREATE POLICY realtime_ingestor_reads ON properties FOR SELECT TO realtime_ingestor USING (true);
CREATE POLICY realtime_ingestor_reads ON clients FOR SELECT TO realtime_ingestor USING (true);
-- `SELECT realtime.set_actor(<user id>)` in an app transaction names who
-- made its changes (updatedBy/invitedBy). The ingestor installs it when it
-- may create a schema; here the owner does.
CREATE SCHEMA IF NOT EXISTS realtime;
GRANT USAGE ON SCHEMA realtime TO PUBLIC;
CREATE OR REPLACE FUNCTION realtime.set_actor(actor text) RETURNS void
    LANGUAGE sql VOLATILE STRICT
    AS $$ SELECT pg_logical_emit_message(true, 'realtime-actor', actor) $$;

-- The gateway: reads the columns its membership and session queries use,
-- and publishes through pg_logical_emit_message (POST /api/realtime/publish,
-- POST /api/realtime/stream). No REPLICATION needed.
CREATE ROLE realtime_gateway LOGIN PASSWORD :'gateway_password';
GRANT CONNECT ON DATABASE :"db" TO realtime_gateway;
GRANT USAGE ON SCHEMA public TO realtime_gateway;
GRANT SELECT ("userId", "organizationId") ON organization_members TO realtime_gateway;
GRANT SELECT (id, name) ON organizations TO realtime_gateway;
GRANT SELECT ("sessionToken", "userId", expires) ON sessions TO realtime_gateway;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean, text, text)
  TO realtime_gateway;
