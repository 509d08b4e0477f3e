#!/usr/bin/env python3
"""Offline checks of the deploy kit (issue 16), run by .ci/run after the Rust tests:

1. Dockerfile: hadolint (with .hadolint.yaml: the OCI labels must be present), and the
   HEALTHCHECK / EXPOSE lines agree with the probe and metrics ports of the kit's config. The
   build context is staged as .dockerignore lets it through; every COPY source must be in it,
   and both build steps (the stub dependency layer, then the real sources) must pass
   `cargo check --locked` there (no Docker daemon needed; catches a missing file early).
2. deploy/monitoring: `promtool check rules` and `promtool test rules`; every alert has a unit
   test that expects it to fire; every dashboard query is valid PromQL (checked by promtool as a
   recording rule, Grafana variables replaced) and every panel is well formed.
3. deploy/kubernetes: placeholder secrets from gen-secrets.sh, then every overlay (and the base)
   is rendered with `kubectl kustomize`, validated offline against the Kubernetes schemas
   (`kubernetes-validate --strict`, oldest and newest supported version), checked against the
   kit's rules (probes, grace period, security context, ports), and the rendered scoregate.toml
   is checked by `scoregate check-config` with the pod's mounted ConfigMap and Secret files laid
   out as the kubelet would.

The fleet overlay's config uses the [cluster] table of fleet mode (issue 14). Until the binary
knows that table, its check-config is reported as SKIPPED; with REQUIRE_FLEET_CHECK_CONFIG=1 it
must pass. Usage: .ci/deploy_checks.py --scoregate target/debug/scoregate
"""

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
MONITORING = ROOT / "deploy" / "monitoring"
# Oldest (native sidecars need 1.29) and newest schema versions validated.
KUBE_VERSIONS = ["1.29.0", "1.33.0"]
# Custom resources the schemas do not know; checked for shape only.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
RENDERED = ["base", "overlays/standard", "overlays/fleet", "overlays/unix-socket"]

failures = []


def fail(what):
    failures.append(what)
    print(f"FAIL {what}")


def ok(what):
    print(f"ok   {what}")


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# ---------------------------------------------------------------------------- Dockerfile
def check_dockerfile(kit_config):
    r = run(["hadolint", "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")])
    if r.returncode != 0:
        fail(f"hadolint Dockerfile:\n{r.stdout}{r.stderr}")
    else:
        ok("hadolint Dockerfile (OCI labels present)")
    text = (ROOT / "Dockerfile").read_text()
    health = re.search(r"^HEALTHCHECK .*?CMD (\[.*?\])$", text, re.M | re.S)
    argv = json.loads(health.group(1)) if health else []
    probe_port = kit_config["server"]["probe_listen"].rsplit(":", 1)[1]
    if argv[:2] != ["/usr/local/bin/scoregate", "probe"] or f"127.0.0.1:{probe_port}" not in argv:
        fail(f"Dockerfile HEALTHCHECK {argv} does not probe 127.0.0.1:{probe_port}")
    else:
        ok(f"HEALTHCHECK runs `scoregate probe` on the probe port {probe_port}")
    exposed = set(re.search(r"^EXPOSE (.*)$", text, re.M).group(1).split())
    wanted = {kit_config["server"][k].rsplit(":", 1)[1]
              for k in ("listen", "probe_listen", "metrics_listen")}
    if exposed != wanted:
        fail(f"Dockerfile EXPOSE {sorted(exposed)} is not {sorted(wanted)}")
    else:
        ok(f"EXPOSE {' '.join(sorted(exposed))} (scoring, probes, metrics; not the admin port)")


def stage_context(dest):
    """Copies what .dockerignore (an allow list: `*`, then `!path` lines, then exclusions)
    lets into the build context."""
    lines = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()]
    lines = [l for l in lines if l and not l.startswith("#")]
    if lines[0] != "*":
        fail(".dockerignore is not an allow list starting with `*`")
        return
    for entry in (l[1:].rstrip("/") for l in lines[1:] if l.startswith("!")):
        src = ROOT / entry
        if src.is_dir():
            shutil.copytree(src, dest / entry)
        elif src.exists():
            (dest / entry).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / entry)
    excluded = [l for l in lines[1:] if not l.startswith("!")]
    for path in list(dest.rglob("*")):
        rel = path.relative_to(dest).as_posix()
        if path.is_file() and any(Path(rel).match(g.removeprefix("**/")) for g in excluded):
            path.unlink()


def check_build_context(tmp):
    context = Path(tmp) / "docker-context"
    context.mkdir()
    stage_context(context)
    text = (ROOT / "Dockerfile").read_text()
    copies = [l.split()[1:-1] for l in text.splitlines()
              if l.startswith("COPY ") and "--from=" not in l]
    missing = [src for srcs in copies for src in srcs if not (context / src).exists()]
    if missing:
        fail(f"Dockerfile COPY sources not in the build context (.dockerignore): {missing}")
        return
    ok(f"every COPY source is in the build context: {[s for c in copies for s in c]}")
    # The dependency layer: everything copied before the sources, with a stub crate.
    stub = Path(tmp) / "docker-stub"
    stub.mkdir()
    for src in (s for c in copies for s in c if s != "src"):
        (shutil.copytree if (context / src).is_dir() else shutil.copy2)(context / src, stub / src)
    (stub / "src").mkdir()
    (stub / "src" / "main.rs").write_text("fn main() {}\n")
    (stub / "src" / "lib.rs").write_text("")
    env = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target"))
    for what, crate in (("the dependency layer (stub sources)", stub), ("the sources", context)):
        r = run(["cargo", "check", "--locked", "--quiet"], cwd=crate, env=env)
        if r.returncode != 0:
            fail(f"image build step `cargo check` on {what}:\n{r.stderr[-3000:]}")
        else:
            ok(f"image build context: cargo check passes on {what}")


# ---------------------------------------------------------------------------- monitoring
def check_rules():
    rules = MONITORING / "prometheus-rules.yaml"
    tests = MONITORING / "prometheus-rules.test.yaml"
    for cmd in (["promtool", "check", "rules", str(rules)],
                ["promtool", "test", "rules", str(tests)]):
        r = run(cmd, cwd=MONITORING)
        if r.returncode != 0:
            fail(f"{' '.join(cmd[:3])}:\n{r.stdout}{r.stderr}")
        else:
            ok(" ".join(cmd[:3]) + " " + Path(cmd[3]).name)
    alerts = [rule["alert"] for g in yaml.safe_load(rules.read_text())["groups"]
              for rule in g["rules"] if "alert" in rule]
    fired = {case["alertname"] for t in yaml.safe_load(tests.read_text())["tests"]
             for case in t.get("alert_rule_test", []) if case.get("exp_alerts")}
    missing = [a for a in alerts if a not in fired]
    if missing:
        fail(f"alerts without a unit test that expects them to fire: {missing}")
    else:
        ok(f"every alert ({len(alerts)}) has a unit test that fires it")


def dashboard_exprs(dash):
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))
    panels = list(walk(dash["panels"]))
    return panels, [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


def check_dashboard(tmp):
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    panels, exprs = dashboard_exprs(dash)
    ids = [p["id"] for p in panels]
    if len(ids) != len(set(ids)):
        fail("dashboard panel ids are not unique")
    for p in panels:
        if p["type"] != "row" and (not p.get("targets") or "gridPos" not in p):
            fail(f"dashboard panel {p['title']!r} has no query or no position")
    # Grafana's variables replaced by values Prometheus accepts; promtool then parses every query.
    subst = {"$__rate_interval": "5m", "$__range": "6h", "$namespace": ".*", "$service": ".*"}
    rules = []
    for i, (title, expr) in enumerate(exprs):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        if "$" in expr:
            fail(f"dashboard query of {title!r} uses an unknown variable: {expr}")
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = Path(tmp) / "dashboard-queries.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = run(["promtool", "check", "rules", str(path)])
    if r.returncode != 0:
        fail(f"dashboard queries are not valid PromQL:\n{r.stdout}{r.stderr}")
    else:
        ok(f"grafana-dashboard.json: {len(panels)} panels, {len(exprs)} queries, all valid PromQL")


# ---------------------------------------------------------------------------- kubernetes
def find_kubectl():
    """kubectl with kustomize v5 (google-cloud-sdk's on these machines), else .ci/run's fallback."""
    for candidate in (os.environ.get("KUBECTL"), shutil.which("kubectl")):
        if candidate and run([candidate, "kustomize", "--help"]).returncode == 0:
            return candidate
    sys.exit("kubectl (with kustomize) not found: .ci/run installs it; or set KUBECTL")


def render(kubectl, overlay):
    r = run([kubectl, "kustomize", str(KUBE / overlay)])
    if r.returncode != 0:
        fail(f"kubectl kustomize {overlay}:\n{r.stderr}")
        return None, []
    return r.stdout, [d for d in yaml.safe_load_all(r.stdout) if d]


def validate_schemas(overlay, text, docs, tmp):
    path = Path(tmp) / (overlay.replace("/", "-") + ".yaml")
    path.write_text(text)
    for version in KUBE_VERSIONS:
        r = run(["kubernetes-validate", "--strict", "--quiet", "-k", version, str(path)])
        unknown = [line for line in (r.stdout + r.stderr).splitlines()
                   if line.startswith("WARN") and not any(k in line for _, k in CRD_KINDS)]
        if r.returncode != 0 or unknown:
            fail(f"{overlay}: schema validation against {version}:\n{r.stdout}{r.stderr}")
        else:
            ok(f"{overlay}: {len(docs)} resources valid against Kubernetes {version} (strict)")
    for d in docs:
        if (d["apiVersion"], d["kind"]) in CRD_KINDS and not d.get("metadata", {}).get("name"):
            fail(f"{overlay}: {d['kind']} without a name")


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def scoregate_container(deployment):
    spec = deployment["spec"]["template"]["spec"]
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        if c["name"] == "scoregate":
            return spec, c
    raise KeyError("no scoregate container")


def mounted_files(docs, spec, container, root):
    """Writes every ConfigMap/Secret volume of the container under root + mountPath."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for m in container.get("volumeMounts", []):
        v = volumes[m["name"]]
        target = Path(root + m["mountPath"])
        target.mkdir(parents=True, exist_ok=True)
        if "configMap" in v:
            data = objects[("ConfigMap", v["configMap"]["name"])].get("data", {})
            files = {k: s.encode() for k, s in data.items()}
        elif "secret" in v:
            data = objects[("Secret", v["secret"]["secretName"])].get("data", {})
            files = {k: base64.b64decode(s) for k, s in data.items()}
        else:
            continue
        for name, content in files.items():
            (target / name).write_bytes(content)
            os.chmod(target / name, 0o600)


def check_pod_rules(overlay, docs, config):
    deployments = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "scoring"]
    if len(deployments) != 1:
        fail(f"{overlay}: expected one Deployment named scoring")
        return
    spec, sg = scoregate_container(deployments[0])
    server = config["server"]
    drain_s = (server.get("pre_drain_delay_ms", 0) + server.get("drain_timeout_ms", 10000)) / 1000
    grace = spec.get("terminationGracePeriodSeconds", 30)
    checks = {
        f"terminationGracePeriodSeconds {grace} > pre-drain + drain {drain_s} s": grace > drain_s,
        "pod: runAsNonRoot and seccomp RuntimeDefault":
            spec["securityContext"].get("runAsNonRoot") is True
            and spec["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault",
        "scoregate is a native sidecar (initContainer, restartPolicy Always)":
            sg.get("restartPolicy") == "Always",
        "admin listener on loopback": server["admin_listen"].startswith("127.0.0.1:"),
        "resources: requests and a memory limit":
            {"cpu", "memory"} <= set(sg["resources"]["requests"])
            and "memory" in sg["resources"]["limits"],
    }
    probe_port = int(server["probe_listen"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in sg["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez"),
                        ("startupProbe", "/livez")):
        get = sg.get(probe, {}).get("httpGet", {})
        checks[f"{probe} GET {path} on the probe port {probe_port}"] = (
            get.get("path") == path and ports.get(get.get("port")) == probe_port)
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        checks[f"container {c['name']}: read-only root, no privilege escalation, caps dropped"] = (
            sc.get("readOnlyRootFilesystem") is True
            and sc.get("allowPrivilegeEscalation") is False
            and sc.get("capabilities", {}).get("drop") == ["ALL"])
    services = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "scoring"]
    checks["Service scoring exposes 8443 only"] = (
        len(services) == 1 and [p["port"] for p in services[0]["spec"]["ports"]] == [8443])
    for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"):
        checks[f"{kind} present"] = bool(by_kind(docs, kind))
    for service in config.get("service", []):
        if service["upstream"].startswith("unix:"):
            socket_dir = os.path.dirname(service["upstream"][len("unix:"):].split(":", 1)[0])
            checks[f"service {service['name']}: {socket_dir} is an emptyDir the model shares"] = (
                shares_socket_dir(spec, sg, socket_dir))
    for what, good in checks.items():
        (ok if good else fail)(f"{overlay}: {what}")


def shares_socket_dir(spec, sg, socket_dir):
    """A `unix:` upstream's directory is an emptyDir mounted at the same path in scoregate and
    in another container (the model, which creates the socket there)."""
    def volume_at(container):
        return next((m["name"] for m in container.get("volumeMounts", [])
                     if m["mountPath"] == socket_dir), None)
    name = volume_at(sg)
    empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    others = [c for c in spec.get("initContainers", []) + spec["containers"] if c is not sg]
    return name in empty_dirs and any(volume_at(c) == name for c in others)


def binary_knows_cluster(scoregate, tmp):
    probe = Path(tmp) / "cluster-probe.toml"
    probe.write_text('[cluster]\nbackend = "local"\n\n[[service]]\nname = "m"\nroute = "/"\n'
                     'upstream = "http://127.0.0.1:5001"\n')
    r = run([scoregate, "check-config", "--config", str(probe), "--file-only"])
    return r.returncode == 0


def check_config(overlay, docs, scoregate, tmp):
    deployment = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "scoring"][0]
    spec, sg = scoregate_container(deployment)
    root = tempfile.mkdtemp(dir=tmp, prefix="pod-")
    mounted_files(docs, spec, sg, root)
    args = sg["args"]
    config_path = root + args[args.index("--config") + 1]
    text = Path(config_path).read_text()
    config = tomllib.loads(text)
    if "cluster" in config and not binary_knows_cluster(scoregate, tmp):
        if os.environ.get("REQUIRE_FLEET_CHECK_CONFIG") == "1":
            fail(f"{overlay}: the binary does not know the [cluster] table (fleet mode)")
        else:
            print(f"SKIP {overlay}: check-config needs fleet mode's [cluster] table (issue 14); "
                  "set REQUIRE_FLEET_CHECK_CONFIG=1 once it has landed")
        return config
    # --file-only: the file is for the pod, not this machine (its state_dir and ports are the
    # pod's).
    r = run([scoregate, "check-config", "--config", config_path, "--file-only"])
    if r.returncode != 0:
        fail(f"{overlay}: scoregate check-config on the rendered scoregate.toml:\n{r.stdout}{r.stderr}")
    else:
        ok(f"{overlay}: scoregate check-config: {r.stdout.strip().split(': ', 1)[-1]}")
    # check-config does not open key files; `keys list` parses them as the gateway would (its
    # output holds the keys, so only the outcome is shown).
    for service in config.get("service", []):
        if "keys_file" in service:
            r = run([scoregate, "keys", "list", "--config", config_path,
                     "--service", service["name"]])
            what = f"{overlay}: keys_file of service {service['name']} parses"
            if r.returncode != 0:
                fail(f"{what}:\n{r.stderr}")
            else:
                ok(what)
    return config


def check_kubernetes(scoregate, tmp):
    r = run([str(KUBE / "gen-secrets.sh")])
    if r.returncode != 0:
        fail(f"gen-secrets.sh:\n{r.stdout}{r.stderr}")
        return None
    kubectl = find_kubectl()
    version = run([kubectl, "version", "--client"]).stdout.replace("\n", ", ").strip(", ")
    ok(f"kubectl: {version}")
    base_config = None
    for overlay in RENDERED:
        text, docs = render(kubectl, overlay)
        if text is None:
            continue
        validate_schemas(overlay, text, docs, tmp)
        config = check_config(overlay, docs, scoregate, tmp)
        check_pod_rules(overlay, docs, config)
        if overlay == "base":
            base_config = config
    return base_config


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scoregate", required=True, help="the scoregate binary")
    args = ap.parse_args()
    scoregate = str(Path(args.scoregate).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        check_rules()
        check_dashboard(tmp)
        base_config = check_kubernetes(scoregate, tmp)
        if base_config:
            check_dockerfile(base_config)
        check_build_context(tmp)
    total = "all passed" if not failures else f"{len(failures)} failed"
    print(f"deploy checks: {total}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
