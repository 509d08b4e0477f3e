#!/usr/bin/env python3
"""Open many TLS connections to a proxy, send one request on each, and hold them idle.

Used by loadtest/run.sh for PROTO "idle" rows (python3 standard library only):

  idle_conns.py --port P --cafile CA --conns 10000 --path /score [--auth 'Bearer K']
                --body '{...}' --ready-file F [--parallel 100] [--hold 120] [--timeout 10]

Every connection does a full TLS handshake (verified against CA, ALPN http/1.1), sends one
keep-alive POST and reads the whole response (--no-request: nothing after the handshake); then
it stays open and idle. When all are done
(or failed), a JSON summary goes to --ready-file: {"opened", "ok" (2xx), "failed", "errors",
"seconds"}. The connections are held until --hold seconds have passed or SIGTERM arrives.
The open-file limit is raised to its hard limit (10,000 connections need 10,000 descriptors).
"""
import argparse
import asyncio
import collections
import json
import os
import resource
import signal
import ssl
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--parallel", type=int, default=100, help="handshakes in flight at once")
    p.add_argument("--path", default="/")
    p.add_argument("--auth", default="")
    p.add_argument("--body", default="{}")
    p.add_argument("--no-request", action="store_true",
                   help="only complete the TLS handshake; send nothing")
    p.add_argument("--hold", type=float, default=120.0)
    p.add_argument("--timeout", type=float, default=10.0, help="per connection setup")
    p.add_argument("--ready-file", required=True)
    return p.parse_args()


async def read_response(reader, timeout):
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked = 0, False
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v.strip())
        elif k == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)).split(b";")[0], 16)
            await asyncio.wait_for(reader.readexactly(size + 2), timeout)
            if size == 0:
                break
    elif length:
        await asyncio.wait_for(reader.readexactly(length), timeout)
    return status


async def main(a):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.conns + 64 > hard:
        print(f"idle_conns.py: open-file limit {hard} is below {a.conns} connections", file=sys.stderr)
    ctx = ssl.create_default_context(cafile=a.cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    body = a.body.encode()
    req = (f"POST {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n"
           "Content-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n"
           + (f"Authorization: {a.auth}\r\n" if a.auth else "")
           + "\r\n").encode() + body
    sem = asyncio.Semaphore(a.parallel)
    held, errors = [], collections.Counter()
    counts = collections.Counter()

    async def one():
        async with sem:
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection(a.host, a.port, ssl=ctx, server_hostname=a.host),
                    a.timeout)
            except Exception as e:  # noqa: BLE001 - every failure is counted by kind
                errors[type(e).__name__] += 1
                counts["failed"] += 1
                return
            try:
                if a.no_request:
                    counts["ok"] += 1
                else:
                    w.write(req)
                    await w.drain()
                    status = await read_response(r, a.timeout)
                    counts["ok" if 200 <= status < 300 else f"status_{status}"] += 1
            except Exception as e:  # noqa: BLE001
                errors[type(e).__name__] += 1
                counts["failed"] += 1
            held.append(w)

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(a.conns)))
    secs = time.monotonic() - t0
    alive = sum(1 for w in held if not w.is_closing())
    summary = {"opened": len(held), "alive": alive, "ok": counts["ok"], "failed": counts["failed"],
               "other_status": {k: v for k, v in counts.items() if k.startswith("status_")},
               "errors": dict(errors), "seconds": round(secs, 2)}
    tmp = a.ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f)
    os.replace(tmp, a.ready_file)
    print(json.dumps(summary), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), a.hold)
    except asyncio.TimeoutError:
        pass
    for w in held:
        w.transport.abort()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
