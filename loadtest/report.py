#!/usr/bin/env python3
"""Helpers for loadtest/run.sh (python3 standard library only).

  report.py fields                               -> the runs.csv header line
  report.py row <oha.json>                       -> CSV fields parsed from one oha run:
                                                    rps,p50_ms,p99_ms,total,n2xx,non2xx,errors
  report.py table <runs.csv> [checks.tsv]        -> markdown summary table (stdout)

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
          "upstream_cpu_pct", "loadgen_cpu_pct", "other_cpu_pct", "peak_rss_mib", "records", "status"]


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


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(path, checks_path=None):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    checks = {}
    if checks_path and os.path.exists(checks_path):
        with open(checks_path) as f:
            for line in f:
                name, _, result = line.rstrip("\n").partition("\t")
                # keep the first failure per config, else the last pass
                if name not in checks or not checks[name].startswith("FAIL"):
                    checks[name] = result
    noise_pct = float(os.environ.get("NOISE_PCT", "25"))
    ratio_target = float(os.environ.get("TARGET_RATIO", "0.5"))
    rss_target = float(os.environ.get("TARGET_RSS_MIB", "40"))
    direct = {r["round"]: float(r["rps"]) for r in rows
              if r["name"] == "direct" and r["status"] == "ok" and r["rps"]}
    direct_other = {r["round"]: num(r, "other_cpu_pct") for r in rows
                    if r["name"] == "direct" and r["status"] == "ok"}
    order, by = [], {}
    for r in rows:
        if r["name"] not in by:
            order.append(r["name"])
            by[r["name"]] = []
        by[r["name"]].append(r)

    print("| config | proto | auth | req/s median (min-max) | x direct | p50 ms | p99 ms "
          "| proxy CPU us/req | proxy CPU % | upstream CPU % | oha CPU % | other CPU % | peak RSS MiB "
          "| non-2xx / errors (of requests) | records (of requests) | check | targets |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    verdicts = []
    for name in order:
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


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "fields":
        print(",".join(FIELDS))
    elif cmd == "row" and len(sys.argv) == 3:
        row(sys.argv[2])
    elif cmd == "table" and len(sys.argv) in (3, 4):
        table(sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else None)
    else:
        sys.exit(__doc__)
