"""container-check fixture, a minimal DNS server: A queries for any name get
127.0.0.1, others an empty answer.

Usage: python3 fakedns.py ADDR READY

Binds ADDR port 53 (UDP) and writes `ok` to READY, then serves until killed;
if it cannot bind (port 53 needs root) it writes `error <errno>` and exits 0.
"""
import socket, struct, sys
addr, ready = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.bind((addr, 53))
except OSError as e:
    open(ready, "w").write(f"error {e.errno}")
    sys.exit(0)
open(ready, "w").write("ok")
while True:
    q, peer = s.recvfrom(512)
    try:
        tid, = struct.unpack(">H", q[:2])
        i = 12
        while q[i]:
            i += 1 + q[i]
        qtype, = struct.unpack(">H", q[i + 1:i + 3])
        question = q[12:i + 5]
        ans, an = b"", 0
        if qtype == 1:
            ans = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + socket.inet_aton("127.0.0.1")
            an = 1
        s.sendto(struct.pack(">HHHHHH", tid, 0x8180, 1, an, 0, 0) + question + ans, peer)
    except Exception:
        pass
