-- Demo data for the local cluster (`make up`), loaded once after
-- tests/fixtures/oikion-schema.sql. Two organizations, three users (bob is in
-- both), their memberships, a few properties, and one database session per
-- user so the gateway can be tried with an Auth.js database-session cookie:
--   curl -N -H 'Cookie: authjs.session-token=demo-session-alice' \
--     'http://127.0.0.1:8080/api/realtime/stream?organizationId=org_acme'
-- up.sh loads it together with the schema in one transaction (psql -1).

INSERT INTO organizations (id, name, plan, "isPersonal") VALUES
  ('org_acme',   'Acme Realty',  'PROFESSIONAL', false),
  ('org_helios', 'Helios Homes', 'STARTER',      false);

INSERT INTO users (id, name, email, role, "organizationId") VALUES
  ('user_alice', 'Alice Papadopoulou', 'alice@acme.example',   'ORG_OWNER', 'org_acme'),
  ('user_bob',   'Bob Georgiou',       'bob@acme.example',     'AGENT',     'org_acme'),
  ('user_carol', 'Carol Nikolaou',     'carol@helios.example', 'ORG_OWNER', 'org_helios');

INSERT INTO organization_members (id, "userId", "organizationId", role) VALUES
  ('mem_alice_acme',   'user_alice', 'org_acme',   'ORG_OWNER'),
  ('mem_bob_acme',     'user_bob',   'org_acme',   'AGENT'),
  ('mem_bob_helios',   'user_bob',   'org_helios', 'VIEWER'),
  ('mem_carol_helios', 'user_carol', 'org_helios', 'ORG_OWNER');

INSERT INTO properties
  (id, "organizationId", "createdBy", "propertyType", status, "transactionType",
   price, bedrooms, bathrooms, size, "yearBuilt", features, description) VALUES
  ('prop_acme_1', 'org_acme', 'user_alice', 'APARTMENT', 'AVAILABLE', 'SALE',
   245000.00, 2, 1, 85.50, 2004, '{"balcony": true, "parking": false}',
   'Bright two-bedroom flat near the old harbour.'),
  ('prop_acme_2', 'org_acme', 'user_bob', 'HOUSE', 'UNDER_OFFER', 'SALE',
   520000.00, 4, 3, 210.00, 1998, '{"garden": true, "pool": true}',
   'Family house with garden and pool.'),
  ('prop_acme_3', 'org_acme', 'user_bob', 'APARTMENT', 'AVAILABLE', 'RENT',
   1200.00, 1, 1, 48.00, 2015, '{"furnished": true}',
   'Furnished studio, city centre.'),
  ('prop_helios_1', 'org_helios', 'user_carol', 'LAND', 'AVAILABLE', 'SALE',
   90000.00, NULL, NULL, 1500.00, NULL, NULL,
   'Olive grove plot with sea view.'),
  ('prop_helios_2', 'org_helios', 'user_carol', 'COMMERCIAL', 'RENTED', 'LEASE',
   3500.00, NULL, 2, 140.00, 2010, '{"shopfront": true}',
   'Corner shop on the main square.');

INSERT INTO sessions (id, "sessionToken", "userId", expires) VALUES
  ('sess_alice', 'demo-session-alice', 'user_alice', now() + interval '365 days'),
  ('sess_bob',   'demo-session-bob',   'user_bob',   now() + interval '365 days'),
  ('sess_carol', 'demo-session-carol', 'user_carol', now() + interval '365 days');
