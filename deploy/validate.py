#!/usr/bin/env python3
"""Checks everything in deploy/ with real validators, and that the files agree with each other.

    python3 deploy/validate.py          (scripts/test.sh runs it as the step "validate deploy/")

Tools (scripts/test.sh installs them; a missing one is a failure, never a skip):
  promtool (apt: prometheus)       check config, check rules, test rules (alerts.test.yml), and
                                   the PromQL of every dashboard panel
  haproxy (apt: haproxy)           haproxy -c on the compose load balancer's configuration
  systemd-analyze (apt: systemd)   verify and security --offline on the unit
  kubernetes-validate (pip)        the built-in Kubernetes kinds against the official JSON schemas
                                   it bundles (offline), strict: unknown fields are errors
  check-jsonschema (pip)           compose.yaml against the compose-spec schema it bundles
  dockerfile (pip)                 the Dockerfile through BuildKit's own parser
  PyYAML, jsonschema (pip)         YAML parsing; the ServiceMonitor against the subset of the
                                   Prometheus Operator CRD schema written below (no package
                                   bundles that CRD's schema)
Beyond the schemas it checks what ties the files together: metric names (deploy/metrics.txt)
in alerts and dashboard, ports, labels and selectors, probe paths, mount paths, grace periods
longer than [proxy] shutdown_grace_secs, non-root users, and that every configuration key used
is documented in deploy/pgstepup.example.toml.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import urlparse

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
# The oldest Kubernetes the manifests support, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.30.0", "latest"]

errors: list[str] = []
notes: list[str] = []


class Missing(Exception):
    """A tool the checks need is not installed."""


def fail(where: str, message: str) -> None:
    errors.append(f"{where}: {message}")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    if shutil.which(args[0]) is None:
        raise Missing(f"{args[0]} not found (scripts/test.sh installs it)")
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True)


def need_module(name: str, package: str):
    try:
        return __import__(name)
    except ImportError as e:
        raise Missing(f"python module {name} not found (pip install {package})") from e


# ---------------------------------------------------------------------------------------------
# metric names

def load_metrics() -> set[str]:
    path = DEPLOY / "metrics.txt"
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    for name in names:
        if not re.fullmatch(r"pgstepup_[a-z0-9_]+", name):
            fail(rel(path), f"{name!r} is not a pgstepup_ metric name")
        if re.search(r"_(bucket|sum|count)$", name):
            fail(rel(path), f"{name}: list base names, without _bucket/_sum/_count")
    if len(set(names)) != len(names):
        fail(rel(path), "a name is listed twice")
    return set(names)


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bpgstepup_[a-z0-9_]+", expr))


def unknown_metrics(expr: str, metrics: set[str]) -> set[str]:
    unknown = set()
    for name in metric_names_in(expr):
        if name in metrics:
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base != name and base in metrics and base.endswith("_seconds"):
            continue
        unknown.add(name)
    return unknown


def used_base_names(expr: str) -> set[str]:
    return {re.sub(r"_seconds_(bucket|sum|count)$", "_seconds", n) for n in metric_names_in(expr)}


# ---------------------------------------------------------------------------------------------
# configuration files

def documented_keys() -> set[tuple[str, str]]:
    """(section, key) pairs deploy/pgstepup.example.toml documents, commented out or not."""
    keys = set()
    section = ""
    for line in (DEPLOY / "pgstepup.example.toml").read_text().splitlines():
        header = re.match(r"^\s*\[([a-z_]+)\]\s*$", line)
        if header:
            section = header.group(1)
            continue
        key = re.match(r"^\s*#?\s*([a-z_]+)\s*=", line)
        if key and section:
            keys.add((section, key.group(1)))
    return keys


def check_config(where: str, text: str, documented: set[tuple[str, str]]) -> dict:
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(where, f"not valid TOML: {e}")
        return {}
    for section, table in config.items():
        if section == "policy" and "file" not in table:
            continue  # inline policy keys are the policy's, checked by the policy crate
        if not isinstance(table, dict):
            fail(where, f"top-level key {section!r}: pgstepup keys live in [sections]")
            continue
        for key in table:
            if (section, key) not in documented:
                fail(where, f"[{section}] {key} is not documented in deploy/pgstepup.example.toml")
    return config


def grace(where: str, config: dict) -> int:
    value = config.get("proxy", {}).get("shutdown_grace_secs")
    if not isinstance(value, int):
        fail(where, "set [proxy] shutdown_grace_secs explicitly, so the stop timeouts can be checked")
        return 30
    return value


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# ---------------------------------------------------------------------------------------------
# Prometheus and Grafana

REQUIRED_ALERTS = {
    "PgstepupDown", "PgstepupNotReady", "PgstepupUpstreamConnectErrors",
    "PgstepupStateStoreErrors", "PgstepupApprovalsTimingOut", "PgstepupHeldStatementsPilingUp",
    "PgstepupWebAuthnFailuresSpike",
}


def check_prometheus(metrics: set[str], yaml) -> None:
    prom = DEPLOY / "prometheus"
    for args in (["promtool", "check", "config", "prometheus.yml"],
                 ["promtool", "check", "rules", "alerts.yml"],
                 ["promtool", "test", "rules", "alerts.test.yml"]):
        out = run(args, cwd=prom)
        if out.returncode != 0:
            fail(f"deploy/prometheus: {' '.join(args)}", (out.stdout + out.stderr).strip())
    rules = yaml.safe_load((prom / "alerts.yml").read_text())
    alerts = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                alerts[rule["alert"]] = rule
                for name in unknown_metrics(rule["expr"], metrics):
                    fail("deploy/prometheus/alerts.yml", f"{rule['alert']} uses {name}, not in deploy/metrics.txt")
                if rule.get("labels", {}).get("severity") not in {"critical", "warning", "info"}:
                    fail("deploy/prometheus/alerts.yml", f"{rule['alert']}: severity critical|warning|info")
    for name in sorted(REQUIRED_ALERTS - alerts.keys()):
        fail("deploy/prometheus/alerts.yml", f"alert {name} is missing")
    tests = yaml.safe_load((prom / "alerts.test.yml").read_text())
    fired = {case["alertname"] for test in tests["tests"] for case in test.get("alert_rule_test", [])
             if case.get("exp_alerts")}
    for name in sorted(alerts.keys() - fired):
        fail("deploy/prometheus/alerts.test.yml", f"no test sees alert {name} fire")
    config = yaml.safe_load((prom / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    if "pgstepup" not in jobs:
        fail("deploy/prometheus/prometheus.yml", 'the alerts expect a scrape job named "pgstepup"')


GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                     "$job": ".*", "$instance": ".*"}


def check_grafana(metrics: set[str], yaml) -> None:
    where = "deploy/grafana/pgstepup-dashboard.json"
    try:
        dash = json.loads((DEPLOY / "grafana" / "pgstepup-dashboard.json").read_text())
    except json.JSONDecodeError as e:
        fail(where, f"not valid JSON: {e}")
        return
    for key, kind in (("uid", str), ("title", str), ("schemaVersion", int), ("panels", list),
                      ("templating", dict)):
        if not isinstance(dash.get(key), kind):
            fail(where, f"top-level {key} must be a {kind.__name__}")
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    exprs: list[tuple[str, str]] = []
    ids = set()
    for panel in dash.get("panels", []):
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            fail(where, f"panel id {panel.get('id')} used twice")
        ids.add(panel.get("id"))
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in "hwxy") or grid["x"] + grid["w"] > 24:
            fail(where, f"panel {title!r}: gridPos needs integer h, w, x, y within 24 columns")
        if panel.get("type") == "row":
            continue
        if not panel.get("targets"):
            fail(where, f"panel {title!r} has no query")
        for target in panel.get("targets", []):
            if not target.get("expr") or not target.get("refId"):
                fail(where, f"panel {title!r}: every target needs expr and refId")
                continue
            exprs.append((title, target["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        if var.get("type") == "query":
            exprs.append((f"variable {var['name']}", query))
    used = set()
    for title, expr in exprs:
        for name in unknown_metrics(expr, metrics):
            fail(where, f"{title!r} uses {name}, not in deploy/metrics.txt")
        used |= used_base_names(expr)
        for var in re.findall(r"\$\{?(\w+)", expr):
            if var not in variables and f"${var}" not in GRAFANA_VARIABLES:
                fail(where, f"{title!r} uses ${var}, which is not a dashboard variable")
    for name in sorted(metrics - used):
        fail(where, f"no panel shows {name}")
    # Every panel's PromQL through Prometheus' own parser: as recording rules for promtool.
    rules = []
    for i, (title, expr) in enumerate(exprs):
        if expr.startswith("label_values("):
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr)
            expr = inner.group(1) if inner else expr
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dashboard-rules.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        out = run(["promtool", "check", "rules", str(path)])
        if out.returncode != 0:
            fail(where, "PromQL does not parse:\n" + (out.stdout + out.stderr).strip())


# ---------------------------------------------------------------------------------------------
# Kubernetes

# The part of the ServiceMonitor CRD (monitoring.coreos.com/v1, prometheus-operator) that
# deploy/kubernetes/servicemonitor.yaml uses, with the CRD's types; unknown fields are errors.
SERVICEMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                           "labels": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object",
                                                   "additionalProperties": {"type": "string"}},
                                   "matchExpressions": {"type": "array"}},
                },
                "namespaceSelector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"},
                                   "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "honorLabels": {"type": "boolean"},
                            "tlsConfig": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}

K8S_REQUIRED = {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "ServiceMonitor"}


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_kubernetes(yaml, documented) -> None:
    kv = need_module("kubernetes_validate", "kubernetes-validate")
    jsonschema = need_module("jsonschema", "jsonschema")
    kdir = DEPLOY / "kubernetes"
    docs: list[tuple[str, dict]] = []
    for path in sorted(kdir.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((rel(path), doc))
    by_kind: dict[str, list[dict]] = {}
    for where, doc in docs:
        kind = doc.get("kind")
        by_kind.setdefault(kind, []).append(doc)
        if kind == "ServiceMonitor":
            for e in jsonschema.Draft7Validator(SERVICEMONITOR_SCHEMA).iter_errors(doc):
                fail(where, f"ServiceMonitor {'.'.join(map(str, e.path))}: {e.message}")
        elif kind == "Kustomization":
            listed = set(doc.get("resources", []))
            files = {p.name for p in kdir.glob("*.yaml")} - {"kustomization.yaml"}
            if listed != files:
                fail(where, f"resources {sorted(listed)} must be exactly the manifests {sorted(files)}")
        else:
            for version in KUBERNETES_VERSIONS:
                version = kv.latest_version() if version == "latest" else version
                try:
                    kv.validate(doc, version, strict=True)
                except kv.ValidationError as e:
                    fail(where, f"{kind}/{doc['metadata'].get('name')} (Kubernetes {version}): "
                                f"{'.'.join(map(str, e.path))}: {e.message}")
                except (kv.SchemaNotFoundError, kv.InvalidSchemaError,
                        kv.utils.VersionNotSupportedError) as e:
                    fail(where, f"{kind} (Kubernetes {version}): {e}")
    for kind in sorted(K8S_REQUIRED - by_kind.keys()):
        fail("deploy/kubernetes", f"no {kind}")
    if not K8S_REQUIRED <= by_kind.keys():
        return

    where = "deploy/kubernetes"
    (deployment,) = by_kind["Deployment"]
    (configmap,) = by_kind["ConfigMap"]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    if spec.get("replicas", 1) < 2:
        fail(where, "the Deployment needs 2 or more replicas")
    if not labels_match(spec["selector"]["matchLabels"], pod_labels):
        fail(where, "the Deployment's selector does not match its pod labels")
    config = check_config("deploy/kubernetes/configmap.yaml pgstepup.toml",
                          configmap["data"]["pgstepup.toml"], documented)
    try:
        tomllib.loads(configmap["data"]["policy.toml"])
    except tomllib.TOMLDecodeError as e:
        fail(where, f"configmap policy.toml: {e}")
    shutdown = grace("deploy/kubernetes/configmap.yaml pgstepup.toml", config)
    if pod.get("terminationGracePeriodSeconds", 30) <= shutdown:
        fail(where, f"terminationGracePeriodSeconds must exceed shutdown_grace_secs ({shutdown})")
    pod_sc = pod.get("securityContext", {})
    (container,) = pod["containers"]
    sc = container.get("securityContext", {})
    if not (pod_sc.get("runAsNonRoot") or sc.get("runAsNonRoot")) or pod_sc.get("runAsUser", 1) == 0:
        fail(where, "the pod must run as non-root")
    if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation", True):
        fail(where, "the container needs readOnlyRootFilesystem and no privilege escalation")
    if not container.get("resources", {}).get("requests"):
        fail(where, "the container needs resource requests")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expected = {"postgres": port_of(config.get("proxy", {}).get("listen", ":6432")),
                "web": port_of(config.get("web", {}).get("listen", ":8443"))}
    if "metrics_listen" in config.get("web", {}):
        expected["metrics"] = port_of(config["web"]["metrics_listen"])
    for name, port in expected.items():
        if ports.get(name) != port:
            fail(where, f"container port {name} should be {port}, as the ConfigMap's listen address")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("web", ports.get("web")):
            fail(where, f"{probe} must GET {path} on the web port")
        tls = bool(config.get("web", {}).get("tls_cert"))
        if (get.get("scheme", "HTTP") == "HTTPS") != tls:
            fail(where, f"{probe} scheme must be {'HTTPS' if tls else 'HTTP'} (web.tls_cert)")
    # Files the configuration names must be where the volumes are mounted.
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in mounts.values():
        if m["name"] not in volumes:
            fail(where, f"volumeMount {m['mountPath']} names no volume {m['name']}")
    files = {"/etc/pgstepup/pgstepup.toml": ("configMap", "pgstepup.toml")}
    policy_file = config.get("policy", {}).get("file")
    if policy_file:
        files[policy_file] = ("configMap", "policy.toml")
    for key in ("cert", "key"):
        if config.get("tls", {}).get(key):
            files[config["tls"][key]] = ("secret", None)
    for key in ("tls_cert", "tls_key"):
        if config.get("web", {}).get(key):
            files[config["web"][key]] = ("secret", None)
    for path, (source, item) in files.items():
        mount = mounts.get(path) or next((m for p, m in mounts.items() if path.startswith(p.rstrip("/") + "/")), None)
        if mount is None:
            fail(where, f"{path} (named by the configuration) is not mounted")
            continue
        volume = volumes.get(mount["name"], {})
        if source not in volume:
            fail(where, f"{path} should come from a {source} volume")
        elif item:
            inner = os.path.relpath(path, mount["mountPath"]) if path != mount["mountPath"] else mount.get("subPath")
            items = {i["path"]: i["key"] for i in volume[source].get("items", [])}
            if items.get(inner, inner) != item or item not in configmap["data"]:
                fail(where, f"{path} should be the ConfigMap's {item}")
    admin = config.get("step_up", {}).get("admin_socket")
    admin_mount = mounts.get(str(Path(admin).parent)) if admin else None
    if admin and (admin_mount is None or "emptyDir" not in volumes.get(admin_mount["name"], {})):
        fail(where, f"the admin socket's directory {Path(admin).parent} needs a writable emptyDir")
    for service in by_kind["Service"]:
        name = service["metadata"]["name"]
        if not labels_match(service["spec"]["selector"], pod_labels):
            fail(where, f"Service {name} selects no pgstepup pod")
        for port in service["spec"]["ports"]:
            if port.get("targetPort") not in ports and port.get("targetPort") not in ports.values():
                fail(where, f"Service {name} port {port['name']}: targetPort is no container port")
    (pdb,) = by_kind["PodDisruptionBudget"]
    if not labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels):
        fail(where, "the PodDisruptionBudget selects no pgstepup pod")
    if not 1 <= pdb["spec"].get("minAvailable", 0) < spec["replicas"]:
        fail(where, "PodDisruptionBudget minAvailable must be at least 1 and below the replicas")
    (monitor,) = by_kind["ServiceMonitor"]
    namespace = deployment["metadata"].get("namespace")
    if namespace not in monitor["spec"].get("namespaceSelector", {}).get("matchNames", [namespace]):
        fail(where, "the ServiceMonitor does not look in the Deployment's namespace")
    selected = [s for s in by_kind["Service"]
                if labels_match(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
    if not selected:
        fail(where, "the ServiceMonitor selects no Service")
    for endpoint in monitor["spec"]["endpoints"]:
        if not any(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in selected):
            fail(where, f"ServiceMonitor port {endpoint['port']} is no port of the selected Service")
    for secret in by_kind["Secret"]:
        for key, value in secret.get("stringData", {}).items():
            if "PLACEHOLDER" not in value:
                fail(where, f"Secret {secret['metadata']['name']} {key}: mark placeholder data PLACEHOLDER")


# ---------------------------------------------------------------------------------------------
# Compose, HAProxy, container image

def check_compose(yaml, documented) -> None:
    cdir = DEPLOY / "compose"
    where = "deploy/compose/compose.yaml"
    need_module("check_jsonschema", "check-jsonschema")
    out = run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
               str(cdir / "compose.yaml")])
    if out.returncode != 0:
        fail(where, "compose-spec schema:\n" + (out.stdout + out.stderr).strip())
    if shutil.which("docker") and run(["docker", "compose", "version"]).returncode == 0:
        out = run(["docker", "compose", "-f", str(cdir / "compose.yaml"), "config", "--quiet"])
        if out.returncode != 0:
            fail(where, "docker compose config:\n" + out.stderr.strip())
    else:
        notes.append("docker compose is not installed: its own `config` check did not run "
                     "(the compose-spec schema check did)")
    compose = yaml.safe_load((cdir / "compose.yaml").read_text())
    services = compose.get("services", {})
    replicas = sorted(n for n in services if n.startswith("pgstepup-"))
    for name in ("postgres", "redis", "lb"):
        if name not in services:
            fail(where, f"no service {name}")
    if len(replicas) < 2:
        fail(where, "needs two or more pgstepup-N replicas")
    if not {"postgres", "redis", "lb"} <= services.keys():
        return
    config = check_config("deploy/compose/pgstepup.toml", (cdir / "pgstepup.toml").read_text(), documented)
    shutdown = grace("deploy/compose/pgstepup.toml", config)
    for name in replicas:
        service = services[name]
        build = service.get("build", {})
        context = (cdir / build.get("context", ".")).resolve()
        if not (context / build.get("dockerfile", "Dockerfile")).is_file():
            fail(where, f"{name}: the build's Dockerfile does not exist")
        for dependency in ("postgres", "redis"):
            if service.get("depends_on", {}).get(dependency, {}).get("condition") != "service_healthy":
                fail(where, f"{name} should wait for {dependency} to be healthy")
        period = re.fullmatch(r"(\d+)s", str(service.get("stop_grace_period", "10s")))
        if not period or int(period.group(1)) <= shutdown:
            fail(where, f"{name}: stop_grace_period must exceed shutdown_grace_secs ({shutdown})")
        targets = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            targets[target] = source
            if source.startswith(".") and not (cdir / source).exists():
                fail(where, f"{name} mounts {source}, which does not exist")
        if targets.get("/etc/pgstepup/pgstepup.toml") != "./pgstepup.toml":
            fail(where, f"{name} must mount ./pgstepup.toml at /etc/pgstepup/pgstepup.toml")
        policy = config.get("policy", {}).get("file")
        if policy and policy not in targets:
            fail(where, f"{name} does not mount the policy file {policy}")
        admin_dir = str(Path(config.get("step_up", {}).get("admin_socket", "/tmp/x")).parent)
        if service.get("read_only") and not any(t.split(":")[0] == admin_dir for t in service.get("tmpfs", [])):
            fail(where, f"{name} is read-only: mount a tmpfs at {admin_dir} for the admin socket")
    for service in services.values():
        if "build" not in service and "image" not in service:
            fail(where, "every service needs an image or a build")
    for name in ("postgres", "redis"):
        if "healthcheck" not in services[name]:
            fail(where, f"{name} needs a healthcheck (the replicas wait for it)")
    published = {str(p).split(":")[0] for p in services["lb"].get("ports", [])}
    if not {"6432", "8443"} <= published:
        fail(where, "the load balancer publishes 6432 and 8443")
    if set(services["lb"].get("depends_on", [])) != set(replicas):
        fail(where, "the load balancer depends on every replica")
    upstream = urlparse(config.get("upstream", {}).get("url", ""))
    if upstream.hostname != "postgres":
        fail("deploy/compose/pgstepup.toml", "[upstream] url must reach the postgres service")
    if urlparse(config.get("redis", {}).get("url", "")).hostname != "redis":
        fail("deploy/compose/pgstepup.toml", "[redis] url must reach the redis service")
    credentials = urlparse(config.get("step_up", {}).get("credentials", ""))
    if credentials.scheme != "postgres" or credentials.hostname != "postgres":
        fail("deploy/compose/pgstepup.toml", "credentials must be in the postgres service, shared by the replicas")
    if not config.get("web", {}).get("public_url"):
        fail("deploy/compose/pgstepup.toml", "set web.public_url (the same for every replica)")
    # The SQL the DBA runs (README.md) is exactly what the init script runs.
    init = (cdir / "initdb.sql").read_text()
    readme_sql = re.search(r"```sql\n(CREATE ROLE pgstepup_auth.*?)```", (ROOT / "README.md").read_text(), re.S)
    squash = lambda s: re.sub(r"\s+", " ", re.sub(r"PASSWORD '[^']*'", "PASSWORD ''", s)).strip()
    if not readme_sql or squash(readme_sql.group(1)) not in squash(init):
        fail("deploy/compose/initdb.sql", "must contain the auth role SQL of README.md")
    for user, password in re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD '([^']*)'", init):
        for url in (upstream, credentials):
            if url.username == user and url.password != password:
                fail("deploy/compose", f"the password of {user} differs between initdb.sql and pgstepup.toml")
    check_haproxy(replicas, config)


def check_haproxy(replicas: list[str], config: dict) -> None:
    path = DEPLOY / "compose" / "haproxy.cfg"
    where = rel(path)
    out = run(["haproxy", "-c", "-f", str(path)])
    if out.returncode != 0:
        fail(where, (out.stdout + out.stderr).strip())
    # Only the replicas' names may fail to resolve here: they exist on the compose network.
    for line in (out.stdout + out.stderr).splitlines():
        if re.search(r"\[(WARNING|ALERT)\]", line):
            unresolved = re.search(r"could not resolve address '([^']+)'", line)
            if not unresolved or unresolved.group(1) not in replicas:
                fail(where, line.strip())
    text = path.read_text()
    proxy_port = port_of(config.get("proxy", {}).get("listen", ":6432"))
    web_port = port_of(config.get("web", {}).get("listen", ":8443"))
    for backend, port in (("pgstepup_proxy", proxy_port), ("pgstepup_web", web_port)):
        block = re.search(rf"^backend {backend}\n(.*?)(?=^\S|\Z)", text, re.S | re.M)
        if not block:
            fail(where, f"no backend {backend}")
            continue
        servers = re.findall(r"^\s*server (\S+) (\S+)", block.group(1), re.M)
        if sorted(s[1] for s in servers) != sorted(f"{r}:{port}" for r in replicas):
            fail(where, f"backend {backend} must list every replica at port {port}")
        if "uri /readyz" not in block.group(1):
            fail(where, f"backend {backend} must health-check /readyz")


def check_dockerfile(documented) -> None:
    dockerfile = need_module("dockerfile", "dockerfile")
    path = DEPLOY / "docker" / "Dockerfile"
    where = rel(path)
    try:
        commands = dockerfile.parse_file(str(path))
    except dockerfile.GoParseError as e:
        fail(where, f"BuildKit's parser: {e}")
        return
    stages: list[list] = []
    for command in commands:
        if command.cmd == "FROM":
            stages.append([])
        elif not stages:
            if command.cmd != "ARG":
                fail(where, f"line {command.start_line}: {command.cmd} before FROM")
            continue
        stages[-1].append(command)
    froms = [c for c in commands if c.cmd == "FROM"]
    if len(froms) < 2:
        fail(where, "must be multi-stage (a build stage and a runtime stage)")
        return
    build_image, _, build_name = froms[0].value[0], None, froms[0].value[-1]
    if not build_image.startswith("rust:") or len(froms[0].value) != 3:
        fail(where, "the first stage builds with a rust: image, named with AS")
    if not any(c.cmd == "RUN" and re.search(r"cargo build --release\b.*-p pgstepup", " ".join(c.value))
               for c in stages[0]):
        fail(where, "the build stage runs cargo build --release -p pgstepup")
    runtime = stages[-1]
    if not re.match(r"(debian:[\w.-]*-slim|gcr\.io/distroless/cc)", froms[-1].value[0]):
        fail(where, "the runtime stage is debian:*-slim or distroless/cc")
    if not any(c.cmd == "COPY" and f"--from={build_name}" in c.flags for c in runtime):
        fail(where, "the runtime stage copies the binary from the build stage")
    users = [c.value[0] for c in runtime if c.cmd == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        fail(where, "the runtime stage must end as a non-root USER")
    elif not re.fullmatch(r"\d+(:\d+)?", users[-1]):
        fail(where, "USER should be numeric, so runAsNonRoot can check it")
    exposed = {v.split("/")[0] for c in runtime if c.cmd == "EXPOSE" for v in c.value}
    if not {"6432", "8443"} <= exposed:
        fail(where, "EXPOSE 6432 and 8443")
    entry = [c for c in runtime if c.cmd == "ENTRYPOINT"]
    if not entry or not entry[-1].json or list(entry[-1].value) != [
            "pgstepup", "serve", "--config", "/etc/pgstepup/pgstepup.toml"]:
        fail(where, 'ENTRYPOINT ["pgstepup", "serve", "--config", "/etc/pgstepup/pgstepup.toml"]')
    for c in runtime:
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
            for source in c.value[:-1]:
                if not (ROOT / source).exists():
                    fail(where, f"COPY {source}: no such file in the build context")
    ignore = (ROOT / ".dockerignore").read_text().split()
    if "target/" not in ignore and "target" not in ignore:
        fail(".dockerignore", "leave target/ out of the build context")
    check_config("deploy/docker/pgstepup.toml", (DEPLOY / "docker" / "pgstepup.toml").read_text(), documented)
    uid = users[-1].split(":")[0] if users else ""
    k8s = (DEPLOY / "kubernetes" / "deployment.yaml").read_text()
    compose = (DEPLOY / "compose" / "compose.yaml").read_text()
    if f"runAsUser: {uid}" not in k8s or f"uid={uid}" not in compose:
        fail(where, f"USER {uid}: the Deployment's runAsUser and compose's tmpfs uid must match")


# ---------------------------------------------------------------------------------------------
# systemd

def unit_values(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if match:
            values.setdefault(match.group(1), []).append(match.group(2))
    return values


def seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    if not match:
        raise ValueError(value)
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def check_systemd(documented) -> None:
    path = DEPLOY / "systemd" / "pgstepup.service"
    where = rel(path)
    text = path.read_text()
    values = unit_values(text)
    binary = values["ExecStart"][0].split()[0]
    with tempfile.TemporaryDirectory() as tmp:
        # verify checks that ExecStart's program exists: point it at a real executable (the
        # built pgstepup if there is one), keeping every other line as shipped.
        stand_in = next((p for p in (ROOT / "target/release/pgstepup", ROOT / "target/debug/pgstepup")
                         if os.access(p, os.X_OK)), None)
        if stand_in is None:
            stand_in = Path(tmp) / "pgstepup"
            stand_in.write_text("#!/bin/sh\nexit 0\n")
            stand_in.chmod(0o755)
        copy = Path(tmp) / "pgstepup.service"
        copy.write_text(text.replace(f"ExecStart={binary} ", f"ExecStart={stand_in} "))
        out = run(["systemd-analyze", "verify", str(copy)])
        output = (out.stdout + out.stderr).strip()
        # Any message (unknown keys, bad values are only warnings) is a failure.
        if out.returncode != 0 or output:
            fail(where, f"systemd-analyze verify:\n{output}")
        out = run(["systemd-analyze", "security", "--offline=true", "--threshold=25", str(copy)])
        if out.returncode != 0:
            exposure = re.search(r"Overall exposure level.*", out.stdout)
            fail(where, f"systemd-analyze security: {exposure.group(0) if exposure else out.stderr.strip()} (at most 2.5)")
    config = check_config("deploy/systemd/pgstepup.toml", (DEPLOY / "systemd" / "pgstepup.toml").read_text(), documented)
    shutdown = grace("deploy/systemd/pgstepup.toml", config)
    if seconds(values.get("TimeoutStopSec", ["90"])[0]) <= shutdown:
        fail(where, f"TimeoutStopSec must exceed shutdown_grace_secs ({shutdown})")
    if values.get("User", ["root"])[0] in ("root", "0"):
        fail(where, "User= must be an unprivileged user")
    if values.get("ExecReload") != ["/bin/kill -HUP $MAINPID"] or values.get("KillSignal") != ["SIGTERM"]:
        fail(where, "ExecReload sends SIGHUP, KillSignal is SIGTERM")
    for key in ("NoNewPrivileges", "ProtectSystem", "RuntimeDirectory", "StateDirectory"):
        if key not in values:
            fail(where, f"set {key}=")
    runtime = "/run/" + values.get("RuntimeDirectory", [""])[0]
    state = "/var/lib/" + values.get("StateDirectory", [""])[0]
    admin = config.get("step_up", {}).get("admin_socket", "")
    if not admin.startswith(runtime + "/"):
        fail(where, f"admin_socket must be in the RuntimeDirectory {runtime} (PrivateTmp hides /tmp)")
    credentials = config.get("step_up", {}).get("credentials", "")
    if "://" not in credentials and not credentials.startswith(state + "/"):
        fail(where, f"a credentials file must be in the StateDirectory {state} (ProtectSystem=strict)")


# ---------------------------------------------------------------------------------------------
# The guide

def check_guide() -> None:
    path = DEPLOY / "README.md"
    text = path.read_text()
    for needle in ("docker compose -f deploy/compose/compose.yaml up", "pgstepup enroll",
                   "CREATE FUNCTION pgstepup.get_auth", "pg_dump", "pgstepup_credentials",
                   "SIGTERM", "/readyz", "/healthz"):
        if needle not in text:
            fail(rel(path), f"should cover {needle!r}")
    for mentioned in sorted(set(re.findall(r"(?<!exec )\bdeploy/[\w./-]*[\w/]", text))):
        if not (ROOT / mentioned).exists():
            fail(rel(path), f"names {mentioned}, which does not exist")


def main() -> int:
    try:
        yaml = need_module("yaml", "PyYAML")
        metrics = load_metrics()
        documented = documented_keys()
        for name, check in (("metrics.txt", lambda: None),
                            ("prometheus (promtool check config/rules, test rules)", lambda: check_prometheus(metrics, yaml)),
                            ("grafana dashboard (metric names, promtool PromQL)", lambda: check_grafana(metrics, yaml)),
                            ("kubernetes (kubernetes-validate strict, ServiceMonitor schema)", lambda: check_kubernetes(yaml, documented)),
                            ("compose (compose-spec schema) + haproxy -c", lambda: check_compose(yaml, documented)),
                            ("Dockerfile (BuildKit parser)", lambda: check_dockerfile(documented)),
                            ("systemd (systemd-analyze verify, security)", lambda: check_systemd(documented)),
                            ("deploy/README.md", check_guide)):
            before = len(errors)
            check()
            print(f"{'ok  ' if len(errors) == before else 'FAIL'} {name}")
    except Missing as e:
        errors.append(str(e))
    for note in notes:
        print(f"note: {note}")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        print(f"deploy/: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    print("deploy/: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
