#!/usr/bin/env bash
# Regenerates fuzz/corpus/pgoutput: real pgoutput (protocol 1) messages from
# a throwaway Postgres (wal_level=logical), one file per message, read with
# pg_logical_slot_peek_binary_changes: Relation, Type, Insert, Update (with
# and without the old tuple), Delete, Truncate, logical Message, Begin and
# Commit over the column types the ingestor converts. Run as root it uses
# `runuser -u postgres`. Usage: fuzz/seed-pgoutput.sh
set -euo pipefail
out="$(cd "$(dirname "$0")" && pwd)/corpus/pgoutput"
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
dir="$(mktemp -d)"
run() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
chmod 777 "$dir"
trap 'run "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
run "$bin/initdb" -D "$dir/data" -U postgres >/dev/null 2>&1
port=$((20000 + RANDOM % 10000))
run "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-c wal_level=logical -c port=$port -c listen_addresses='' -c unix_socket_directories=$dir" start >/dev/null
psql() { run "$bin/psql" -h "$dir" -p "$port" -U postgres -qAt -v ON_ERROR_STOP=1 "$@"; }
psql >/dev/null <<'SQL'
CREATE TYPE mood AS ENUM ('calm', 'busy');
CREATE TABLE properties (
  id text PRIMARY KEY, "organizationId" text NOT NULL, name text, price numeric(12,2),
  rooms int2, area int4, views int8, score float4, ratio float8, active bool,
  tags text[], scores int4[], meta jsonb, raw json, photo bytea, built date,
  listed timestamp, "updatedAt" timestamptz, ref uuid, m mood, big text);
ALTER TABLE properties REPLICA IDENTITY FULL;
CREATE TABLE members (id text PRIMARY KEY, "organizationId" text NOT NULL, "userId" text, role text);
CREATE PUBLICATION realtime FOR ALL TABLES;
SELECT 1 FROM pg_create_logical_replication_slot('seed', 'pgoutput');
INSERT INTO properties VALUES ('p1', 'org_1', 'Villa "Sea" \ view', 350000.50, 4, 120, 9000000000, 1.5, -2.25e-10, true,
  ARRAY['a','b c','"q"',NULL], ARRAY[[1,2],[3,4]], '{"k":[1,{"x":null}]}', '[1, 2]', '\xdeadbeef', '2024-02-29',
  '2024-01-01 12:34:56.789', '2024-01-01 12:34:56.789+03', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'calm', repeat('x', 3000));
INSERT INTO properties (id, "organizationId", name) VALUES ('p2', 'org_2', NULL);
UPDATE properties SET name = 'Villa', price = 'NaN', score = 'Infinity', "updatedAt" = 'infinity' WHERE id = 'p1';
INSERT INTO members VALUES ('m1', 'org_1', 'u1', 'admin');
UPDATE members SET role = 'member' WHERE id = 'm1';
UPDATE members SET id = 'm2' WHERE id = 'm1';
DELETE FROM members WHERE id = 'm2';
DELETE FROM properties WHERE id = 'p2';
SELECT 1 FROM pg_logical_emit_message(true, 'realtime', '{"type":"user.activity","organizationId":"org_1","payload":{"action":"viewed"}}');
SELECT 1 FROM pg_logical_emit_message(false, 'other', 'not json');
TRUNCATE members, properties RESTART IDENTITY CASCADE;
SQL
rm -f "$out"/*
i=0
psql -c "SELECT encode(data, 'hex') FROM pg_logical_slot_peek_binary_changes('seed', NULL, NULL,
  'proto_version', '1', 'publication_names', 'realtime', 'messages', 'true')" |
while read -r hex; do
  i=$((i + 1))
  name="$(printf '%03d' "$i")-$(printf '%s' "${hex:0:2}" | xxd -r -p)"
  printf '%s' "$hex" | xxd -r -p > "$out/$name"
done
ls "$out" | wc -l
