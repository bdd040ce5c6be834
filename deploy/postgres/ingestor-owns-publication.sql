-- Alternative to the ingestor part of roles.sql (README "Least privilege"):
-- the ingestor creates the publication itself, keeps its table list equal to
-- the routed tables, and sets REPLICA IDENTITY FULL
-- (REALTIME_MANAGE_REPLICA_IDENTITY=true). Both need ownership of the routed
-- tables, so the ingestor joins the role that owns them (:"owner", e.g. the
-- application's migration role) and may then do anything that role may: more
-- privilege than roles.sql, for convenience only.
--
--   psql "$ADMIN_URL" -v db=app -v owner=app_owner -v ingestor_password='…' \
--        -f deploy/postgres/ingestor-owns-publication.sql
CREATE ROLE realtime_ingestor LOGIN REPLICATION PASSWORD :'ingestor_password';
GRANT CONNECT, CREATE ON DATABASE :"db" TO realtime_ingestor;
GRANT :"owner" TO realtime_ingestor;
-- Child rows (listings, notes, …) take their organization from their parent
-- row, which the ingestor reads for parents that did not change while it
-- ran. FORCE ROW LEVEL SECURITY applies to the owner too, and the app's
-- policies read a setting the ingestor never sets: this policy lets it read.
CREATE POLICY realtime_ingestor_reads ON properties FOR SELECT TO realtime_ingestor USING (true);
CREATE POLICY realtime_ingestor_reads ON clients FOR SELECT TO realtime_ingestor USING (true);
