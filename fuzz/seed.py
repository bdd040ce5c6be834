#!/usr/bin/env python3
"""Regenerates the seed corpora of every target but pgoutput (see
seed-pgoutput.sh): real request heads as browsers and curl send them, the
auth fixtures' real Auth.js / NextAuth / JWT tokens, the built-in routes
file and variants, and publish bodies. Usage: python3 fuzz/seed.py"""
import json
import pathlib
import struct

root = pathlib.Path(__file__).resolve().parent
repo = root.parent
corpus = root / "corpus"


def write(target, name, data):
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def clear(target):
    for f in (corpus / target).glob("*"):
        f.unlink()


# --- request_head: one byte of cuts, 2-byte cut positions, the bytes ---
clear("request_head")
browser = (
    "GET /api/realtime/stream?organizationId=org_1 HTTP/1.1\r\nHost: app.example\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    "Accept: text/event-stream\r\nAccept-Language: en-US,en;q=0.5\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\nReferer: https://app.example/dashboard\r\n"
    "Cache-Control: no-cache\r\nConnection: keep-alive\r\nSec-Fetch-Dest: empty\r\n"
    "Sec-Fetch-Mode: cors\r\nSec-Fetch-Site: same-origin\r\n"
    "Cookie: theme=dark; __Secure-authjs.session-token=eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2Q0JDLUhTNTEyIn0..abc.def.ghi\r\n"
    "Last-Event-ID: 1733300000000-0\r\n\r\n"
)
heads = {
    "browser-stream": browser,
    "curl-stream": "GET /api/realtime/stream?organizationId=o HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.x\r\n\r\n",
    "health": "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "not-found": "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
    "post-stream": 'POST /api/realtime/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 68\r\n\r\n{"type":"user.activity","payload":{"action":"viewed","resource":"p"}}',
    "bad-header": "GET /api/realtime/stream HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    "http10": "GET /api/realtime/stream HTTP/1.0\r\n\r\n",
    "pipelined": "GET /api/realtime/stream?organizationId=o HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "h2-preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "upgrade": "GET /api/realtime/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "chunked-body": "GET /api/realtime/stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "lf-only": "GET /api/realtime/stream HTTP/1.1\nHost: x\n\n",
    "truncated": "GET /api/realtime/stream?organizationId=o HTTP/1.1\r\nHost: x\r\n",
    "oversized": browser.replace("Cookie: theme=dark", "Cookie: theme=dark; big=" + "v" * 8200),
}
for name, head in heads.items():
    raw = head.encode()
    write("request_head", name, b"\x00" + raw)
    # The same bytes cut at the end of the request line and before the
    # blank line (or at the fast path's limit, for the oversized one).
    line = raw.find(b"\r\n") + 1 if b"\r\n" in raw else 1
    end = min(len(raw) - 1, 8192)
    write("request_head", name + "-split", bytes([2]) + struct.pack("<HH", line, end) + raw)

# --- auth: mode byte, then the mode's bytes ---
clear("auth")
fixtures = json.loads((repo / "gateway/tests/fixtures/auth/tokens.json").read_text())
names = ["__Secure-authjs.session-token", "authjs.session-token",
         "__Secure-next-auth.session-token", "next-auth.session-token"]
for s in fixtures["sessions"]:
    token = s["token"]
    if len(token) > 4096:
        continue
    write("auth", "cookie-" + s["id"], bytes([2, names.index(s["cookie"])]) + token.encode())
    write("auth", "header-" + s["id"], b"\x00\x00" + f"{s['cookie']}={token}; theme=dark".encode())
for j in fixtures["jwts"]:
    write("auth", "bearer-" + j["id"], b"\x01" + j["token"].encode())
    write("auth", "header-bearer-" + j["id"], b"\x00\x01Bearer " + j["token"].encode())
write("auth", "header-chunks", b"\x00\x00authjs.session-token.1=def; authjs.session-token.0=abc\n\x00next-auth.session-token=0123456789abcdef0123456789abcdef")
write("auth", "database-session", b"\x02\x01" + b"2f1c3a9e-5b7d-4e8f-9a0b-1c2d3e4f5a6b")
claims = {"sub": "user_1", "exp": 4102444800, "iat": 1599999940, "nbf": 1599999940,
          "aud": "some-api", "iss": "https://issuer.example", "name": "A", "email": "a@example.com"}
write("auth", "signed-claims", b"\x03" + json.dumps(claims).encode())
write("auth", "signed-claims-expired", b"\x03" + b'{"sub":"u","exp":1600000000}')
write("auth", "encrypted-claims", b"\x04" + json.dumps(claims).encode())
write("auth", "encrypted-claims-v4", b"\x04" + b'{"name":"A","email":"a@example.com","sub":"u1","iat":1733300000,"exp":4102444800,"jti":"7c1b"}')
write("auth", "jwe-header-kid", b"\x05" + b'{"alg":"dir","enc":"A256GCM","kid":"x"}\n' + json.dumps(claims).encode())
write("auth", "jwe-header-zip", b"\x05" + b'{"alg":"dir","enc":"A256GCM","zip":"DEF"}\n{"sub":"u"}')

# --- routes: UTF-8 TOML ---
clear("routes")
write("routes", "oikion", (repo / "ingestor/routes/oikion.toml").read_bytes())
write("routes", "defaults", """[[tables]]
table = "notifications"
kind = "notification"
org_column = "orgId"
user_column = "recipient"

[[tables]]
schema = "crm"
table = "events"
kind = "activity"
org_column = "orgId"

[[tables]]
table = "orgs"
kind = "organization"
org_column = "id"

[[tables]]
table = "listings"
kind = "property"
org_column = "orgId"
updated_by_column = "editor"
""")
write("routes", "membership", '[[tables]]\ntable = "members"\nkind = "membership"\norg_column = "organizationId"\nuser_column = "userId"\nrole_column = "role"\n')
write("routes", "duplicate", '[[tables]]\ntable = "p"\nkind = "property"\norg_column = "o"\n\n[[tables]]\ntable = "p"\nkind = "property"\norg_column = "o"\n')
write("routes", "typo", '[[tables]]\ntable = "p"\nkind = "property"\norg_column = "o"\norg_colum = "x"\n')
write("routes", "empty", "")

# --- publish: endpoint byte (even: /publish, odd: a member's /stream), body ---
clear("publish")
bodies = {
    "api-property": (0, {"type": "property.update", "organizationId": "org_1",
                         "payload": {"id": "p1", "action": "update", "fields": ["price"]}}),
    "api-user": (0, {"type": "notification.new", "organizationId": "org_1", "userId": "u1",
                     "payload": {"title": "Hi", "message": "There", "priority": "high"}}),
    "api-broadcast": (0, {"type": "system.alert", "payload": {"message": "maintenance at 22:00"}}),
    "api-data-sync": (0, {"type": "data.sync", "organizationId": "org_1", "payload": {}}),
    "activity": (1, {"type": "user.activity", "payload": {"action": "viewed", "resource": "property",
                                                           "metadata": {"id": "p1", "n": [1, 2.5, None]}}}),
    "activity-minimal": (1, {"payload": {"action": "a", "resource": "r"}}),
    "activity-extra": (1, {"type": "user.activity", "payload": {"action": "a", "resource": "r", "userId": "x"}}),
}
for name, (which, body) in bodies.items():
    write("publish", name, bytes([which]) + json.dumps(body).encode())
write("publish", "not-json", b"\x00{\"type\":")
write("publish", "unicode", b"\x01" + '{"payload":{"action":"\u00e9\ud83d\ude00","resource":"\\u0000"}}'.encode("utf-8", "surrogatepass"))
