"""container-check fixture, the client: send one request through the proxy as a
sandboxed agent would, then check what the upstream received. Prints nothing
and exits 0 when all is well, else the problems (one a line) and exits 1.

Usage: CC_TOKEN=<token> [CC_TIMEOUT=<seconds>] python3 client.py HOST PORT RECORD

HOST:PORT is the proxy, RECORD the upstream's request record (upstream.py),
CC_TOKEN the token the proxy was given.
"""
import http.client, json, os, sys
host, port, record = sys.argv[1], int(sys.argv[2]), sys.argv[3]
token = os.environ["CC_TOKEN"]
body = '{"model":"claude-x","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}'
target = "/v1/messages?beta=true"
problems = []
c = http.client.HTTPConnection(host, port, timeout=float(os.environ.get("CC_TIMEOUT", "10")))
c.request("POST", target, body=body, headers={
    "Authorization": "Bearer sandbox-phantom-token",
    "x-api-key": "sandbox-api-key",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
})
r = c.getresponse()
got = r.read()
if r.status != 200 or got != b"upstream ok":
    problems.append(f"client got {r.status} {got[:80]!r}, expected 200 b'upstream ok'")
reqs = []
if os.path.exists(record):
    reqs = [json.loads(l) for l in open(record) if l.strip()]
reqs = [q for q in reqs if q["target"] != "/health"]
if len(reqs) != 1:
    problems.append(f"upstream saw {len(reqs)} requests, expected 1")
else:
    q = reqs[0]
    hs = q["headers"]
    auth = [v for k, v in hs if k.lower() == "authorization"]
    if auth != ["Bearer " + token]:
        shown = ["Bearer <token>" if v == "Bearer " + token else "<other value>" for v in auth]
        problems.append(f"upstream Authorization values: {shown}, expected exactly ['Bearer <token>']")
    if any(k.lower() == "x-api-key" for k, v in hs):
        problems.append("the sandbox's x-api-key reached the upstream")
    if q["method"] != "POST" or q["target"] != target:
        problems.append(f"upstream request line {q['method']} {q['target']}, expected POST {target}")
    if q["body"] != body:
        problems.append("request body changed on the way")
    if ("anthropic-version", "2023-06-01") not in [(k.lower(), v) for k, v in hs]:
        problems.append("anthropic-version header not forwarded")
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
