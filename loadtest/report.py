#!/usr/bin/env python3
"""Helpers for loadtest/run.sh (python3 standard library only).

  report.py fields                               -> the runs.csv header line
  report.py row <oha.json>                       -> CSV fields parsed from one oha run:
                                                    rps,p50_ms,p99_ms,total,n2xx,non2xx,errors
  report.py table <runs.csv> [checks.tsv]        -> markdown summary table (stdout)
  report.py idle <idle.csv> [checks.tsv]         -> markdown table of PROTO idle rows (stdout)
  report.py compare <dir>                        -> issue 8's comparison (loadtest/compare.sh):
                                                    <dir>/{main,rate,idle}/ -> markdown (stdout)
  report.py chart <dir> <out.png>                -> bar chart of <dir>/main (needs matplotlib)
  report.py split <runs.csv> <baseline row>      -> per row: median CPU per request, split into
                                                    kernel and user space, and each round's
                                                    ratio to the baseline row (medians)

Environment for `table`: TARGET_RATIO (0.5) and TARGET_RSS_MIB (40): the issue's targets, judged
for every row that runs a proxy process (x direct >= TARGET_RATIO in the median, and peak RSS
below TARGET_RSS_MIB in every run). NOISE_PCT (25): a verdict is marked NOISY when, in any
round, the machine spent more than this much CPU on other work during the row's run or the
direct run it is compared with.
"""
import csv
import json
import os
import statistics
import sys

FIELDS = ["round", "name", "proto", "auth", "rps", "p50_ms", "p99_ms", "total", "n2xx",
          "non2xx", "errors", "proxy_cpu_s", "proxy_us_per_req", "proxy_cpu_pct",
          "upstream_cpu_pct", "loadgen_cpu_pct", "other_cpu_pct", "peak_rss_mib", "records", "status",
          "proxy_sys_us_per_req"]


def row(path):
    with open(path) as f:
        d = json.load(f)
    s = d["summary"]
    codes = {int(k): v for k, v in (d.get("statusCodeDistribution") or {}).items()}
    n2xx = sum(v for k, v in codes.items() if 200 <= k < 300)
    non2xx = sum(v for k, v in codes.items() if not 200 <= k < 300)
    # With -w (wait for ongoing requests after the deadline) HTTP/1 has no deadline aborts, but
    # HTTP/2 runs can still count streams cut at the deadline; those are not proxy failures.
    errors = sum(v for k, v in (d.get("errorDistribution") or {}).items()
                 if k != "aborted due to deadline")
    lp = d.get("latencyPercentiles") or {}
    p50 = (lp.get("p50") or 0) * 1000
    p99 = (lp.get("p99") or 0) * 1000
    print(",".join([f"{s['requestsPerSec']:.1f}", f"{p50:.3f}", f"{p99:.3f}",
                    str(n2xx + non2xx + errors), str(n2xx), str(non2xx), str(errors)]))


def num(r, k):
    try:
        return float(r[k])
    except (ValueError, KeyError, TypeError):
        return None


def direct_by_round(rows, key):
    """The `direct` baseline's value of `key` (None if unparsable) in each round that ran ok."""
    return {r["round"]: num(r, key) for r in rows
            if r["name"] == "direct" and r["status"] == "ok"}


def direct_rps_by_round(rows):
    """The baseline's req/s per round, only where it is usable as a divisor."""
    return {k: v for k, v in direct_by_round(rows, "rps").items() if v}


def by_name(rows):
    """Rows grouped by config name, in the order the names first appear."""
    by = {}
    for r in rows:
        by.setdefault(r["name"], []).append(r)
    return by


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(path, checks_path=None):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    checks = read_checks(checks_path)
    noise_pct = float(os.environ.get("NOISE_PCT", "25"))
    ratio_target = float(os.environ.get("TARGET_RATIO", "0.5"))
    rss_target = float(os.environ.get("TARGET_RSS_MIB", "40"))
    direct = direct_rps_by_round(rows)
    direct_other = direct_by_round(rows, "other_cpu_pct")
    by = by_name(rows)

    print("| config | proto | auth | req/s median (min-max) | x direct | p50 ms | p99 ms "
          "| proxy CPU us/req | proxy CPU % | upstream CPU % | oha CPU % | other CPU % | peak RSS MiB "
          "| non-2xx / errors (of requests) | records (of requests) | check | targets |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    verdicts = []
    for name in by:
        all_runs = by[name]
        rs = [r for r in all_runs if r["status"] == "ok"]
        first = all_runs[0]
        if not rs:
            print(f"| {name} | {first['proto']} | {first['auth']} | FAILED ({first['status']}) |"
                  + " |" * 11 + f" {checks.get(name, '-')} | - |")
            verdicts.append(f"{name}: no successful run ({first['status']})")
            continue
        rps = [num(r, "rps") for r in rs]
        ratios = [num(r, "rps") / direct[r["round"]] for r in rs if r["round"] in direct]
        total = sum(int(r["total"] or 0) for r in rs)
        bad = sum(int(r["non2xx"] or 0) for r in rs)
        err = sum(int(r["errors"] or 0) for r in rs)
        rss = [num(r, "peak_rss_mib") for r in rs]
        rss = [x for x in rss if x is not None]
        recs = [num(r, "records") for r in rs]
        recs_s = "-" if any(x is None for x in recs) else f"{int(sum(recs)):,} ({total:,})"
        has_proxy = bool(rss)
        target = "-"
        if has_proxy and name != "direct":
            ok_ratio = ratios and med(ratios) >= ratio_target
            ok_rss = max(rss) < rss_target
            target = ("met" if ok_ratio and ok_rss else "NOT met") + \
                f" (x{fmt(med(ratios), '.2f')} vs >={ratio_target:g}; " \
                f"{max(rss):.1f} vs <{rss_target:g} MiB)"
            # A busy machine distorts req/s, and so x direct: say so next to the verdict.
            noisy = [r["round"] for r in rs
                     if max(num(r, "other_cpu_pct") or 0,
                            direct_other.get(r["round"]) or 0) > noise_pct]
            if noisy:
                target += f"; NOISY: other CPU > {noise_pct:g}% in round(s) {','.join(noisy)}"
            verdicts.append(f"{name}: {target}")
        skipped = len(all_runs) - len(rs)
        print(f"| {name} | {first['proto']} | {first['auth']} "
              f"| {fmt(med(rps), ',.0f')} ({fmt(min(rps), ',.0f')}-{fmt(max(rps), ',.0f')})"
              f"{f' [{skipped} run(s) failed]' if skipped else ''} "
              f"| {fmt(med(ratios), '.2f')} "
              f"| {fmt(med([num(r, 'p50_ms') for r in rs]), '.2f')} "
              f"| {fmt(med([num(r, 'p99_ms') for r in rs]), '.2f')} "
              f"| {fmt(med([num(r, 'proxy_us_per_req') for r in rs]), '.1f')} "
              f"| {fmt(med([num(r, 'proxy_cpu_pct') for r in rs]), '.0f')} "
              f"| {fmt(med([num(r, 'upstream_cpu_pct') for r in rs]), '.0f')} "
              f"| {fmt(med([num(r, 'loadgen_cpu_pct') for r in rs]), '.0f')} "
              f"| {fmt(med([num(r, 'other_cpu_pct') for r in rs]), '.0f')} "
              f"| {fmt(max(rss) if rss else None, '.1f')} "
              f"| {bad} / {err} (of {total:,}) "
              f"| {recs_s} "
              f"| {checks.get(name, '-')} | {target} |")
    print()
    print(f"rounds with a direct baseline: {len(direct)}. Medians over rounds, except peak RSS "
          "(the largest VmHWM of any run; the proxy is started fresh for every run) and the "
          "summed counts. 'x direct' = median over rounds of (config req/s / direct req/s in the "
          "same round). proxy CPU = utime+stime of the proxy's processes over the measured "
          "window / requests completed; CPU % columns are per one core (2 cores = 200 %); "
          "'other CPU %' is what the rest of the machine used meanwhile (noise: high values mean "
          "the run competed with other work). "
          "records = request-record lines the proxy wrote during the measured windows.")
    if verdicts:
        print()
        print("targets:")
        for v in verdicts:
            print(f"- {v}")


def read_checks(checks_path):
    """Correctness-check result per config: the first failure, else the last pass."""
    checks = {}
    if checks_path and os.path.exists(checks_path):
        with open(checks_path) as f:
            for line in f:
                name, _, result = line.rstrip("\n").partition("\t")
                if name not in checks or not checks[name].startswith("FAIL"):
                    checks[name] = result
    return checks


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


IDLE_NOTE = ("RSS = VmRSS summed over the proxy's processes (for nginx: master + worker, so "
             "shared pages count twice; PSS splits them), read 2 s after the last connection "
             "got its response, while all of them sit idle; before = the same right after the "
             "correctness check. KiB/conn = (held - before) / connections; CPU ms/conn = the "
             "proxy's CPU while opening them (a full TLS handshake and one request each) / "
             "connections. established = the proxy port's ESTABLISHED sockets (ss) at the reading.")


def idle_summary(rows):
    by = by_name(rows)
    out = []
    for name in by:
        rs = [r for r in by[name] if r["status"] in ("ok", "incomplete")]
        out.append({
            "name": name, "proto": by[name][0].get("proto", "idle"),
            "runs": len(by[name]), "good": len(rs),
            "status": ",".join(sorted({r["status"] for r in by[name]})),
            "conns": by[name][0]["conns"],
            "ok": med([num(r, "ok") for r in rs]),
            "failed": sum(int(num(r, "failed") or 0) for r in rs),
            "established": med([num(r, "established") for r in rs]),
            "open_s": med([num(r, "open_s") for r in rs]),
            "before": med([num(r, "rss_before_mib") for r in rs]),
            "held": med([num(r, "rss_held_mib") for r in rs]),
            "held_all": [num(r, "rss_held_mib") for r in rs],
            "largest": med([num(r, "largest_proc_rss_mib") for r in rs]),
            "pss": med([num(r, "pss_held_mib") for r in rs]),
            "per": med([num(r, "kib_per_conn") for r in rs]),
            "cpc": med([num(r, "proxy_cpu_ms_per_conn") for r in rs]),
        })
    return out


def idle_table(rows, checks):
    print("| config | proto | connections ok (of) | established | open s | RSS before MiB "
          "| RSS held MiB (runs) | largest process MiB | PSS held MiB | KiB/conn | CPU ms/conn "
          "| check |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in idle_summary(rows):
        held = ", ".join(fmt(x, ".1f") for x in s["held_all"])
        print(f"| {s['name']} | {s['proto']} | {fmt(s['ok'], ',.0f')} ({int(s['conns']):,}; failed {s['failed']}) "
              f"| {fmt(s['established'], ',.0f')} | {fmt(s['open_s'], '.1f')} "
              f"| {fmt(s['before'], '.1f')} | {fmt(s['held'], '.1f')} ({held}) "
              f"| {fmt(s['largest'], '.1f')} | {fmt(s['pss'], '.1f')} | {fmt(s['per'], '.1f')} "
              f"| {fmt(s['cpc'], '.2f')} | {checks.get(s['name'], '-')} |")
    print()
    print("Medians over rounds. proto idle: one request on each connection, then idle; "
          "idle-tls: the TLS handshake only. " + IDLE_NOTE)


def idle(path, checks_path=None):
    idle_table(read_csv(path), read_checks(checks_path))


def summarize(rows):
    """Per config: medians over ok rounds, per-round values, in file order."""
    direct = direct_rps_by_round(rows)
    direct_p99 = direct_by_round(rows, "p99_ms")
    direct_other = direct_by_round(rows, "other_cpu_pct")
    by = by_name(rows)
    out = {}
    for name in by:
        rs = [r for r in by[name] if r["status"] == "ok"]
        rss = [num(r, "peak_rss_mib") for r in rs if num(r, "peak_rss_mib") is not None]
        rps = [num(r, "rps") for r in rs]
        out[name] = {
            "name": name, "proto": by[name][0]["proto"], "auth": by[name][0]["auth"],
            "runs": len(by[name]), "ok": len(rs),
            "status": ",".join(sorted({r["status"] for r in by[name]})),
            "rps": med(rps), "rps_min": min(rps) if rps else None,
            "rps_max": max(rps) if rps else None,
            "x": med([num(r, "rps") / direct[r["round"]] for r in rs if r["round"] in direct]),
            "p50": med([num(r, "p50_ms") for r in rs]),
            "p99": med([num(r, "p99_ms") for r in rs]),
            "added_p99": med([num(r, "p99_ms") - direct_p99[r["round"]] for r in rs
                              if direct_p99.get(r["round"]) is not None]),
            "cpu": med([num(r, "proxy_us_per_req") for r in rs]),
            "cpu_pct": med([num(r, "proxy_cpu_pct") for r in rs]),
            "other": med([num(r, "other_cpu_pct") for r in rs]),
            "other_max": max([max(num(r, "other_cpu_pct") or 0,
                                  direct_other.get(r["round"]) or 0) for r in rs], default=None),
            "rss": max(rss) if rss else None,
            "total": sum(int(r["total"] or 0) for r in rs),
            "bad": sum(int(r["non2xx"] or 0) for r in rs),
            "err": sum(int(r["errors"] or 0) for r in rs),
            "recs": None if any(num(r, "records") is None for r in rs)
            else int(sum(num(r, "records") for r in rs)),
            "by_round": {r["round"]: r for r in rs},
        }
    return out


def failed_note(s):
    return "" if s["ok"] == s["runs"] else f" [{s['runs'] - s['ok']} run(s) failed]"


def round_ratio(s, a, b, key="rps"):
    """Median over rounds where both ran of a[key] / b[key]; and the rounds used."""
    if a not in s or b not in s:
        return None, 0
    ra, rb = s[a]["by_round"], s[b]["by_round"]
    xs = [num(ra[k], key) / num(rb[k], key) for k in ra if k in rb
          and num(ra[k], key) and num(rb[k], key)]
    return med(xs), len(xs)


def tls_only(I):
    a, b = I.get("scoregate-key-tlsonly"), I.get("nginx-key-log-tlsonly")
    if not a or not b or a["held"] is None or b["held"] is None:
        return ""
    return (f". TLS handshake only (no request): scoregate {a['held']:.1f} MiB vs nginx "
            f"{b['held']:.1f} MiB ({fmt(a['per'], '.1f')} vs {fmt(b['per'], '.1f')} KiB per connection)")


def compare(d):
    main = read_csv(os.path.join(d, "main", "runs.csv"))
    rate = read_csv(os.path.join(d, "rate", "runs.csv"))
    idle_rows = read_csv(os.path.join(d, "idle", "idle.csv"))
    checks = read_checks(os.path.join(d, "main", "checks.tsv"))
    noise_pct = float(os.environ.get("NOISE_PCT", "25"))
    S = summarize(main)
    R = summarize(rate)
    I = {x["name"]: x for x in idle_summary(idle_rows)}

    if S:
        print("### Same work, full speed (main)")
        print()
        print("| config | proto | auth | req/s median (min-max) | x direct | p50 ms | p99 ms "
              "| proxy CPU us/req | proxy CPU % | peak RSS MiB | other CPU % (max) "
              "| non-2xx / errors (of requests) | records | check |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for s in S.values():
            if not s["ok"]:
                print(f"| {s['name']} | {s['proto']} | {s['auth']} | FAILED ({s['status']}) "
                      + "| - " * 9 + f"| {checks.get(s['name'], '-')} |")
                continue
            recs = "-" if s["recs"] is None else f"{s['recs']:,}"
            print(f"| {s['name']} | {s['proto']} | {s['auth']} "
                  f"| {fmt(s['rps'], ',.0f')} ({fmt(s['rps_min'], ',.0f')}-{fmt(s['rps_max'], ',.0f')})"
                  f"{failed_note(s)} "
                  f"| {fmt(s['x'], '.2f')} | {fmt(s['p50'], '.2f')} | {fmt(s['p99'], '.2f')} "
                  f"| {fmt(s['cpu'], '.1f')} | {fmt(s['cpu_pct'], '.0f')} | {fmt(s['rss'], '.1f')} "
                  f"| {fmt(s['other'], '.0f')} ({fmt(s['other_max'], '.0f')}) "
                  f"| {s['bad']} / {s['err']} (of {s['total']:,}) | {recs} "
                  f"| {checks.get(s['name'], '-')} |")
        print()
        print("Medians over rounds (peak RSS: the largest VmHWM of any run). x direct = median of "
              "(req/s / direct req/s in the same round). proxy CPU us/req = the proxy's "
              "utime+stime (/proc) over the measured window / requests; % per core (2 cores = "
              "200 %). other CPU = the rest of the machine meanwhile (noise; max over rounds, "
              f"including the round's direct run, in parentheses; > {noise_pct:g} % = NOISY). "
              "records = request-record / access-log lines written in the measured windows.")
        print()
    if R:
        print("### Fixed rate (rate): oha -q, same load otherwise")
        print()
        print("| config | req/s median | p50 ms | p99 ms | added p99 ms (vs direct, same round) "
              "| proxy CPU us/req | other CPU % (max) | non-2xx / errors (of requests) |")
        print("|---|---|---|---|---|---|---|---|")
        for s in R.values():
            print(f"| {s['name']} | {fmt(s['rps'], ',.0f')} | {fmt(s['p50'], '.2f')} "
                  f"| {fmt(s['p99'], '.2f')} | {'-' if s['name'] == 'direct' else fmt(s['added_p99'], '+.2f')} "
                  f"| {fmt(s['cpu'], '.1f')} | {fmt(s['other'], '.0f')} ({fmt(s['other_max'], '.0f')}) "
                  f"| {s['bad']} / {s['err']} (of {s['total']:,}) |")
        print()
    if I:
        print("### Idle keep-alive connections (idle)")
        print()
        idle_table(idle_rows, read_checks(os.path.join(d, "idle", "checks.tsv")))
        print()

    # ------------------------------------------------------------------ targets
    lines = []

    def get(tab, name, key):
        return tab[name][key] if name in tab and tab[name]["ok"] else None

    def verdict(ok):
        return "n/a (missing rows)" if ok is None else ("**met**" if ok else "**not met**")

    def noisy(tab, *names):
        ns = [n for n in names if n in tab and (tab[n]["other_max"] or 0) > noise_pct]
        return f" (NOISY rounds in: {', '.join(ns)})" if ns else ""

    sg, ng, hp = "scoregate-key", "nginx-key-log", "haproxy-key-log"
    cs, cn, ch = get(S, sg, "cpu"), get(S, ng, "cpu"), get(S, hp, "cpu")
    xs, xn, xh = get(S, sg, "x"), get(S, ng, "x"), get(S, hp, "x")
    peers_cpu = [c for c in (cn, ch) if c is not None]
    peers_x = [c for c in (xn, xh) if c is not None]
    if cs is not None and peers_cpu and xs is not None and peers_x:
        best_c, best_x = min(peers_cpu), max(peers_x)
        ok_c, ok_x = cs <= 0.8 * best_c, xs >= 1.1 * best_x
        rn, _ = round_ratio(S, sg, ng)
        rh, _ = round_ratio(S, sg, hp)
        lines.append(
            f"Key mode, 1 worker, records/access logs on: {verdict(ok_c and ok_x)}. "
            f"CPU/req {cs:.1f} us vs nginx {fmt(cn, '.1f')} / HAProxy {fmt(ch, '.1f')} us: "
            f"{cs / best_c:.2f}x the better (target <= 0.80x: {verdict(ok_c)}). "
            f"req/s {xs:.3f}x direct vs nginx {fmt(xn, '.3f')}x / HAProxy {fmt(xh, '.3f')}x: "
            f"{xs / best_x:.2f}x the better (target >= 1.10x: {verdict(ok_x)}; per round "
            f"scoregate/nginx {fmt(rn, '.2f')}, scoregate/HAProxy {fmt(rh, '.2f')})"
            + noisy(S, sg, ng, hp) + ".")
    else:
        lines.append("Key mode: n/a (rows missing or failed).")
    hj = get(S, "haproxy-jwt-rs256-log", "cpu")
    for row, alg in (("scoregate-es256", "ES256"), ("scoregate-rs256", "RS256")):
        ct = get(S, row, "cpu")
        if ct is None or hj is None or cs is None:
            lines.append(f"Token mode {alg}: n/a (rows missing or failed).")
            continue
        ok1, ok2 = ct <= 0.5 * hj, ct <= 1.1 * cs
        lines.append(
            f"Token mode {alg} (one token reused): {verdict(ok1 and ok2)}. CPU/req {ct:.1f} us = "
            f"{ct / hj:.2f}x HAProxy RS256's {hj:.1f} us (target <= 0.50x: {verdict(ok1)}) and "
            f"{ct / cs:.2f}x scoregate key mode's {cs:.1f} us (target <= 1.10x: {verdict(ok2)})"
            + noisy(S, row, "haproxy-jwt-rs256-log") + ".")
    ps_, pn, ph = get(S, sg, "p99"), get(S, ng, "p99"), get(S, hp, "p99")
    pp = [p for p in (pn, ph) if p is not None]
    if ps_ is not None and pp:
        lines.append(f"p99 at 50 connections (key mode): {verdict(ps_ <= min(pp))}. scoregate "
                     f"{ps_:.2f} ms vs nginx {fmt(pn, '.2f')} / HAProxy {fmt(ph, '.2f')} ms "
                     f"(target <= the better, {min(pp):.2f} ms)" + noisy(S, sg, ng, hp) + ".")
    ap = get(R, sg, "added_p99")
    if ap is not None:
        lines.append(f"Added p99 at a fixed {fmt(get(R, 'direct', 'rps'), ',.0f')} req/s: "
                     f"{verdict(ap <= 1.0)}. scoregate p99 {get(R, sg, 'p99'):.2f} ms vs direct "
                     f"{fmt(get(R, 'direct', 'p99'), '.2f')} ms: +{ap:.2f} ms (target <= 1 ms; "
                     f"nginx: {fmt(get(R, ng, 'added_p99'), '+.2f')} ms)" + noisy(R, sg) + ".")
    rs_ = get(S, sg, "rss")
    if rs_ is not None:
        all_sg = [s["rss"] for n, s in S.items() if n.startswith("scoregate") and s["rss"] is not None]
        lines.append(f"RSS at 50 connections: {verdict(rs_ <= 20)}. scoregate key mode peak "
                     f"{rs_:.1f} MiB (target <= 20 MiB; every scoregate row: {min(all_sg):.1f}-"
                     f"{max(all_sg):.1f} MiB; nginx {fmt(get(S, ng, 'rss'), '.1f')}, HAProxy "
                     f"{fmt(get(S, hp, 'rss'), '.1f')} MiB).")
    if sg in I and ng in I and I[sg]["held"] is not None and I[ng]["held"] is not None:
        a, b = I[sg], I[ng]
        lines.append(f"RSS with {int(a['conns']):,} idle connections: {verdict(a['held'] < 0.5 * b['held'])}. "
                     f"scoregate {a['held']:.1f} MiB vs nginx {b['held']:.1f} MiB = "
                     f"{a['held'] / b['held']:.2f}x (target < 0.5x; PSS {fmt(a['pss'], '.1f')} vs "
                     f"{fmt(b['pss'], '.1f')} MiB; {fmt(a['per'], '.1f')} vs {fmt(b['per'], '.1f')} KiB "
                     f"per connection; connections held {fmt(a['ok'], ',.0f')} / {fmt(b['ok'], ',.0f')})"
                     + tls_only(I) + ".")
    cc, cnn = get(S, "scoregate-key-newconn", "cpu"), get(S, "nginx-key-log-newconn", "cpu")
    if cc is not None and cnn is not None:
        lines.append(f"Connection per request (TLS resumption), CPU/req: {verdict(cc <= cnn)}. "
                     f"scoregate {cc:.1f} us vs nginx {cnn:.1f} us = {cc / cnn:.2f}x (target <= 1x; "
                     f"req/s {fmt(get(S, 'scoregate-key-newconn', 'rps'), ',.0f')} vs "
                     f"{fmt(get(S, 'nginx-key-log-newconn', 'rps'), ',.0f')}; checks: "
                     f"{checks.get('scoregate-key-newconn', '-')} / {checks.get('nginx-key-log-newconn', '-')})"
                     + noisy(S, "scoregate-key-newconn", "nginx-key-log-newconn") + ".")
    small = [("key mode vs auth none", sg, "scoregate-none", 0.97),
             ("token mode (ES256) vs key mode", "scoregate-es256", sg, 0.95),
             ("token mode (RS256) vs key mode", "scoregate-rs256", sg, 0.95),
             ("records on vs off", sg, "scoregate-key-norec", 0.95)]
    for label, a, b, t in small:
        r, n = round_ratio(S, a, b)
        if r is None:
            continue
        c_a, c_b = get(S, a, "cpu"), get(S, b, "cpu")
        cr = c_b / c_a if c_a and c_b else None
        lines.append(f"{label}: {verdict(r >= t)}. req/s ratio {r:.3f} (median of {n} same-round "
                     f"ratios; target >= {t:.2f}); CPU/req {fmt(c_a, '.1f')} vs {fmt(c_b, '.1f')} us, "
                     f"i.e. {fmt(cr, '.3f')} by CPU" + noisy(S, a, b) + ".")
    h2 = [(n, get(S, n, "cpu"), get(S, n, "x")) for n in
          ("scoregate-key-h2", "nginx-key-h2-log", "haproxy-key-h2-log") if get(S, n, "cpu") is not None]
    if h2:
        lines.append("HTTP/2 key rows (no target): " + "; ".join(
            f"{n} {c:.1f} us/req, {fmt(x, '.3f')}x direct" for n, c, x in h2) + ".")
    print("### Targets")
    print()
    for line in lines:
        print(f"- {line}")


def chart(d, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    S = summarize(read_csv(os.path.join(d, "main", "runs.csv")))
    names = [n for n, s in S.items() if s["ok"]]
    if not names:
        sys.exit("chart: no successful rows")

    def color(n):
        return ("#1f77b4" if n.startswith("scoregate") else "#2ca02c" if n.startswith("nginx")
                else "#ff7f0e" if n.startswith("haproxy") else "#7f7f7f")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 0.32 * len(names) + 1.6), dpi=80, sharey=True)
    y = list(range(len(names)))[::-1]
    rps = [S[n]["rps"] / 1000 for n in names]
    lo = [(S[n]["rps"] - S[n]["rps_min"]) / 1000 for n in names]
    hi = [(S[n]["rps_max"] - S[n]["rps"]) / 1000 for n in names]
    cols = [color(n) for n in names]
    ax1.barh(y, rps, xerr=[lo, hi], color=cols, error_kw={"lw": 0.8, "capsize": 2})
    for yy, n, v in zip(y, names, rps):
        x = S[n]["x"]
        ax1.text(v, yy, f" {v:.1f}k ({x:.2f}x)" if x is not None else f" {v:.1f}k",
                 va="center", fontsize=7)
    ax1.set_xlabel("requests/s, thousands (median, min-max); (x direct)")
    ax1.set_yticks(y)
    ax1.set_yticklabels(names, fontsize=8)
    cpu = [S[n]["cpu"] or 0 for n in names]
    ax2.barh(y, cpu, color=cols)
    for yy, v, n in zip(y, cpu, names):
        if S[n]["cpu"] is not None:
            ax2.text(v, yy, f" {v:.1f}", va="center", fontsize=7)
    ax2.set_xlabel("proxy CPU time per request, us (median)")
    for ax in (ax1, ax2):
        ax.grid(axis="x", lw=0.3)
        ax.margins(x=0.18)
    env = {}
    envp = os.path.join(d, "main", "env.txt")
    if os.path.exists(envp):
        for line in open(envp):
            k, _, v = line.partition(": ")
            env[k] = v.strip()
    fig.suptitle("scoregate vs nginx and HAProxy: TLS, 1 worker, 50 connections (h2: 10x5), "
                 f"records/access logs on - {env.get('date', '')[:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=80)


def split(path, baseline):
    """CPU per request in kernel and user space, by row, and the ratio to `baseline` taken
    round by round (both rows measured in the same round) before the median."""
    rows = [r for r in read_csv(path) if r["status"] == "ok"]
    base = {r["round"]: num(r, "proxy_us_per_req") for r in rows if r["name"] == baseline}
    print(f"| row | rounds | CPU µs/req | kernel µs/req | user µs/req | x {baseline} (CPU) |")
    print("|---|---|---|---|---|---|")
    for name, rs in by_name(rows).items():
        total = [num(r, "proxy_us_per_req") for r in rs]
        if not any(t is not None for t in total):
            continue
        kernel = [num(r, "proxy_sys_us_per_req") for r in rs]
        user = [t - k for t, k in zip(total, kernel) if t is not None and k is not None]
        ratios = [num(r, "proxy_us_per_req") / base[r["round"]] for r in rs
                  if base.get(r["round"]) and num(r, "proxy_us_per_req") is not None]
        print(f"| {name} | {len(rs)} | {fmt(med(total), '.1f')} | {fmt(med(kernel), '.1f')} "
              f"| {fmt(med(user), '.1f')} | {fmt(med(ratios), '.3f')} |")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "fields":
        print(",".join(FIELDS))
    elif cmd == "row" and len(sys.argv) == 3:
        row(sys.argv[2])
    elif cmd == "table" and len(sys.argv) in (3, 4):
        table(sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else None)
    elif cmd == "idle" and len(sys.argv) in (3, 4):
        idle(sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else None)
    elif cmd == "compare" and len(sys.argv) == 3:
        compare(sys.argv[2])
    elif cmd == "chart" and len(sys.argv) == 4:
        chart(sys.argv[2], sys.argv[3])
    elif cmd == "split" and len(sys.argv) == 4:
        split(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
