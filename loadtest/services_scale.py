#!/usr/bin/env python3
"""Metrics cardinality and idle memory with many services (issue 16, item 3).

Starts one built-in sample model and one gateway with N key-mode services in front of it (routes
/s/0001 ... /s/N, plain HTTP on loopback), waits until every upstream is healthy, then measures:

  idle:  RSS (VmRSS) and one scrape of /metrics: sample lines ("series"), bytes, and the series
         of one service;
  busy:  the same after every service has answered one scoring call (a 200 with its primary
         key), one refused call (401) and one call with a rare method (GET);

and prints a Markdown table row per phase. Every process it starts is stopped by PID; ports are
free loopback ports. Used for loadtest/RESULTS.md ("Metrics with 1,000 services"):

    loadtest/services_scale.py --bin target/release/scoregate --services 1000

The binary must accept the config (a binary from before `metrics_listen` existed is measured on
the admin listener with public_metrics = true, which this script always uses).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, headers=None, body=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(what, check, limit=120.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {what}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def scrape(admin):
    status, body = http("GET", f"http://{admin}/metrics")
    assert status == 200, status
    text = body.decode()
    samples = [l for l in text.splitlines() if l and not l.startswith("#")]
    one = [l for l in samples if 'service="s0001"' in l]
    return len(samples), len(body), len(one)


def config(n, port, admin, upstream, state):
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{port}"',
        f'admin_listen = "{admin}"',
        f'state_dir = "{state}"',
        "public_metrics = true",
        "worker_threads = 1",
        "",
    ]
    for i in range(1, n + 1):
        lines += [
            "[[service]]",
            f'name = "s{i:04d}"',
            f'route = "/s/{i:04d}"',
            f'upstream = "http://{upstream}"',
            'auth = "key"',
            "",
        ]
    lines += ["[telemetry]", "request_records = false", 'log = "warn"']
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="scoregate binary to measure")
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=5.0, help="idle seconds before measuring")
    ap.add_argument("--label", default=None, help="first column of the table rows")
    args = ap.parse_args()
    label = args.label or args.bin

    with tempfile.TemporaryDirectory() as tmp:
        model_addr = f"127.0.0.1:{free_port()}"
        port, admin = free_port(), f"127.0.0.1:{free_port()}"
        path = os.path.join(tmp, "scoregate.toml")
        with open(path, "w") as f:
            f.write(config(args.services, port, admin, model_addr, os.path.join(tmp, "state")))
        log = open(os.path.join(tmp, "gateway.log"), "w")
        model = subprocess.Popen([args.bin, "sample-model", "--listen", model_addr],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        gw = subprocess.Popen([args.bin, "run", "--config", path],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            wait_for("/readyz 200", lambda: http("GET", f"http://{admin}/readyz")[0] == 200)
            time.sleep(args.settle)  # measuring an idle process: let startup allocations settle
            series, size, one = scrape(admin)
            rss = rss_kib(gw.pid)
            print(f"| {label} | idle | {args.services} | {series:,} | {size / 1e6:.2f} MB | "
                  f"{one} | {rss / 1024:.1f} MiB |")

            for i in range(1, args.services + 1):
                name = f"s{i:04d}"
                with open(os.path.join(tmp, "state", "keys", f"{name}.json")) as f:
                    key = json.load(f)["primaryKey"]
                url = f"http://127.0.0.1:{port}/s/{i:04d}/score"
                body = b'{"data": [[5.1, 3.5, 1.4, 0.2]]}'
                ok, _ = http("POST", url, {"Authorization": f"Bearer {key}",
                                           "Content-Type": "application/json"}, body)
                refused, _ = http("POST", url, {}, body)
                http("GET", url, {"Authorization": f"Bearer {key}"})
                assert (ok, refused) == (200, 401), (name, ok, refused)
            series, size, one = scrape(admin)
            rss = rss_kib(gw.pid)
            print(f"| {label} | after 200 + 401 + GET per service | {args.services} | "
                  f"{series:,} | {size / 1e6:.2f} MB | {one} | {rss / 1024:.1f} MiB |")
        finally:
            for p in (gw, model):
                p.terminate()
            for p in (gw, model):
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            log.close()


if __name__ == "__main__":
    main()
