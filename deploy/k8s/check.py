#!/usr/bin/env python3
"""`make test-deploy`: validates everything under deploy/ that a cluster or
Prometheus/Grafana would read, with zero tolerance.

1. Renders the kustomize base and the production overlay: with
   `kubectl kustomize` when kubectl embeds kustomize >= v4, and with
   render.py always; when both ran, their outputs must be identical.
2. Validates every rendered object against the Kubernetes OpenAPI schemas
   (package `kubernetes-validate`, strict: unknown fields are errors) for the
   oldest and the newest Kubernetes version checked (SCHEMA_VERSIONS). The
   Prometheus Operator objects (ServiceMonitor, PrometheusRule) have no
   schema there and are checked structurally here instead.
3. Checks the operational contract of the manifests: probes on the admin
   port, grace period above preStop + REALTIME_DRAIN, an ingestor and its hot
   standby whose rollouts and evictions never wait for the standby to be
   Ready, non-root read-only containers, resources set, selectors that
   select, the Ingress's SSE annotations, secrets referenced but not shipped.
4. Alerts: `promtool check rules` and `promtool test rules` (unit tests of the
   alert logic, deploy/grafana/alerts_test.yaml) on deploy/grafana/alerts.yaml,
   and the PrometheusRule's groups identical to that file (`check.py
   --write-rule` regenerates deploy/k8s/base/prometheusrule.yaml from it).
5. Dashboard: valid JSON, a Prometheus datasource variable used by every
   panel, the expected panels, and every PromQL expression compiled by
   promtool (as a throw-away recording rule).
6. The Dockerfile: multi-stage, non-root, both binaries, the two ports.
7. deploy/postgres/postgres_exporter-queries.yaml: postgres_exporter's
   queries.yaml structure, the slot query's columns, and every `pg_…` metric
   the alerts take from it really defined there.

Whether the metric names in the dashboard and the alerts are really exported
is checked against running processes by tests/tests/ops_metrics.rs.

Needs python3 with PyYAML and kubernetes-validate, and promtool (Debian
package `prometheus`); .ci/run installs them. Exits non-zero, listing every
failure, when anything is wrong.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import yaml
    import kubernetes_validate
    from kubernetes_validate import utils as kv
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(
        f"error: {e.name} is missing: `python3 -m pip install kubernetes-validate` "
        "(.ci/run installs it)"
    )

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
GRAFANA = DEPLOY / "grafana"
EXPORTER_QUERIES = DEPLOY / "postgres" / "postgres_exporter-queries.yaml"
# Column usages postgres_exporter knows (pkg queries.yaml, ColumnUsage).
EXPORTER_USAGES = {"DISCARD", "LABEL", "COUNTER", "GAUGE", "MAPPEDMETRIC", "DURATION", "HISTOGRAM"}
LEVELS = {"base": K8S / "base", "production": K8S / "overlays" / "production"}
# The oldest Kubernetes still commonly run by managed offerings, and the
# newest the schema package knows.
SCHEMA_VERSIONS = ["1.29.0", kv.latest_version()]
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
ADMIN_PORT = 9090
EXPECTED_PANELS = [
    "Open streams",
    "Stream requests by result",
    "Rejections by reason",
    "Deliveries/s",
    "Commit → client latency",
    "Events published/s by type",
    "Slot lag",
    "Reconnects",
    "Drains",
    "Replayed events/s",
    "Duplicates skipped",
    "Commit → publish latency",
]


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"FAIL {what}", flush=True)
        return ok

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"ok   {what}", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def kubectl_with_kustomize() -> str | None:
    """kubectl whose embedded kustomize reads `resources: [dir]` and `patches` (>= v4)."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return None
    out = run([kubectl, "version", "--client", "-o", "json"])
    if out.returncode != 0:
        return None
    try:
        version = json.loads(out.stdout).get("kustomizeVersion", "")
    except json.JSONDecodeError:
        return None
    m = re.match(r"v(\d+)", version)
    return kubectl if m and int(m.group(1)) >= 4 else None


def key(obj: dict) -> tuple:
    return (obj.get("apiVersion"), obj.get("kind"), obj.get("metadata", {}).get("name"))


def render_all(c: Checks) -> dict[str, list[dict]]:
    kubectl = kubectl_with_kustomize()
    if not kubectl:
        print("note kubectl with kustomize >= v4 not found: rendering with render.py only", flush=True)
    rendered: dict[str, list[dict]] = {}
    for level, directory in LEVELS.items():
        ours = run([sys.executable, str(K8S / "render.py"), str(directory)])
        if not c.check(ours.returncode == 0, f"{level}: render.py renders it: {ours.stderr.strip()}"):
            continue
        objects = [o for o in yaml.safe_load_all(ours.stdout) if o]
        if kubectl:
            real = run([kubectl, "kustomize", str(directory)])
            if not c.check(real.returncode == 0, f"{level}: kubectl kustomize renders it: {real.stderr.strip()}"):
                continue
            theirs = [o for o in yaml.safe_load_all(real.stdout) if o]
            a = {key(o): o for o in objects}
            b = {key(o): o for o in theirs}
            differ = sorted(str(k) for k in set(a) | set(b) if a.get(k) != b.get(k))
            if c.check(not differ, f"{level}: render.py and kubectl kustomize differ on {differ}"):
                c.ok(f"{level}: kubectl kustomize and render.py render the same {len(theirs)} objects")
            objects = theirs
        rendered[level] = objects
    return rendered


def validate_schemas(c: Checks, level: str, objects: list[dict]) -> None:
    for obj in objects:
        if (obj.get("apiVersion"), obj.get("kind")) in CRD_KINDS:
            continue
        for version in SCHEMA_VERSIONS:
            what = f"{level}: {obj.get('kind')}/{obj['metadata'].get('name')} against Kubernetes {version}"
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                c.check(False, f"{what}: {e.message} at {'/'.join(map(str, e.path))}")
                continue
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.VersionNotSupportedError) as e:
                c.check(False, f"{what}: {e}")
                continue
            c.passed += 1
    print(f"ok   {level}: every built-in object valid (strict) for Kubernetes {', '.join(SCHEMA_VERSIONS)}", flush=True)


def find(objects: list[dict], kind: str, name: str) -> dict | None:
    for o in objects:
        if o.get("kind") == kind and o["metadata"].get("name") == name:
            return o
    return None


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def duration_seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def container_env(objects: list[dict], container: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        cm = find(objects, "ConfigMap", source.get("configMapRef", {}).get("name", ""))
        if cm:
            env.update(cm.get("data", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def check_workload(c: Checks, level: str, objects: list[dict], name: str) -> dict | None:
    dep = find(objects, "Deployment", name)
    if not c.check(dep is not None, f"{level}: Deployment {name} exists"):
        return None
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    c.check(selects(dep["spec"]["selector"]["matchLabels"], labels), f"{level}: {name} selector matches its pods")
    c.check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{level}: {name} pod runs as non-root")
    c.check(pod.get("automountServiceAccountToken") is False, f"{level}: {name} mounts no service account token")
    for ctr in pod["containers"]:
        sc = ctr.get("securityContext", {})
        c.check(sc.get("readOnlyRootFilesystem") is True, f"{level}: {name}/{ctr['name']} has a read-only root fs")
        c.check(sc.get("allowPrivilegeEscalation") is False, f"{level}: {name}/{ctr['name']} cannot escalate")
        c.check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{level}: {name}/{ctr['name']} drops all capabilities")
        res = ctr.get("resources", {})
        for part in ("requests", "limits"):
            c.check({"cpu", "memory"} <= set(res.get(part, {})), f"{level}: {name}/{ctr['name']} sets cpu and memory {part}")
        ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}
        c.check(ports.get("admin") == ADMIN_PORT, f"{level}: {name}/{ctr['name']} exposes admin on {ADMIN_PORT}")
        # The ingestor's standby is ready for its role while it waits on the
        # slot (see ingestor.yaml): readiness on /healthz, /readyz says
        # whether it streams.
        ready_path = "/healthz" if name == "realtime-ingestor" else "/readyz"
        for probe, path in (("readinessProbe", ready_path), ("livenessProbe", "/healthz")):
            get = ctr.get(probe, {}).get("httpGet", {})
            c.check(
                get.get("path") == path and get.get("port") in ("admin", ADMIN_PORT),
                f"{level}: {name}/{ctr['name']} {probe} is GET {path} on the admin port",
            )
        env = container_env(objects, ctr)
        c.check(
            env.get("REALTIME_ADMIN_LISTEN", "0.0.0.0:9090").endswith(f":{ADMIN_PORT}"),
            f"{level}: {name} REALTIME_ADMIN_LISTEN is on port {ADMIN_PORT}",
        )
        secret_keys = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in ctr.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        for required in ("DATABASE_URL", "REDIS_URL"):
            ref = secret_keys.get(required)
            c.check(
                ref is not None and ref.get("name") == "realtime-secrets" and not ref.get("optional", False),
                f"{level}: {name} takes {required} from the Secret realtime-secrets (required)",
            )
        c.check(
            not any(k in env for k in ("DATABASE_URL", "REDIS_URL", "AUTH_SECRET", "REALTIME_JWT_SECRET", "REALTIME_PUBLISH_KEY")),
            f"{level}: {name} has no secret setting in a ConfigMap or plain value",
        )
    svc = find(objects, "Service", name)
    if c.check(svc is not None, f"{level}: Service {name} exists"):
        c.check(selects(svc["spec"]["selector"], labels), f"{level}: Service {name} selects the {name} pods")
    return dep


def check_contract(c: Checks, level: str, objects: list[dict]) -> None:
    c.check(not any(o.get("kind") == "Secret" for o in objects), f"{level}: no Secret is shipped (only referenced)")
    c.check(
        all(o["metadata"].get("namespace") == "realtime" for o in objects if o.get("kind") != "Namespace"),
        f"{level}: every object is in the realtime namespace",
    )
    ing = check_workload(c, level, objects, "realtime-ingestor")
    if ing:
        # Two pods: one streams the slot, the other waits on it (hot standby);
        # both are Ready (readiness /healthz), so a rollout starts a new pod
        # before stopping an old one and the PDB lets one go at a time.
        replicas = ing["spec"].get("replicas")
        c.check(replicas == 2, f"{level}: two ingestor replicas (one streams, one hot standby)")
        strategy = ing["spec"].get("strategy", {})
        rolling = strategy.get("rollingUpdate", {})
        c.check(
            strategy.get("type") == "RollingUpdate"
            and rolling.get("maxUnavailable") in (0, "0%")
            and rolling.get("maxSurge") in (1, "50%"),
            f"{level}: ingestor rollouts start a new pod before stopping an old one (got {strategy})",
        )
        ing_labels = ing["spec"]["template"]["metadata"]["labels"]
        pdbs = [
            o for o in objects
            if o.get("kind") == "PodDisruptionBudget"
            and selects(o["spec"].get("selector", {}).get("matchLabels", {}), ing_labels)
        ]
        c.check(
            len(pdbs) == 1 and pdbs[0]["spec"].get("maxUnavailable") == 1,
            f"{level}: one PodDisruptionBudget lets one ingestor pod go at a time (got {[p['spec'] for p in pdbs]})",
        )
        anti = (
            ing["spec"]["template"]["spec"].get("affinity", {}).get("podAntiAffinity", {})
            .get("preferredDuringSchedulingIgnoredDuringExecution", [])
        )
        c.check(
            any(t["podAffinityTerm"].get("topologyKey") == "kubernetes.io/hostname"
                and selects(t["podAffinityTerm"].get("labelSelector", {}).get("matchLabels", {}), ing_labels) for t in anti),
            f"{level}: ingestor pods spread over nodes (pod anti-affinity on kubernetes.io/hostname)",
        )
        c.check(
            find(objects, "HorizontalPodAutoscaler", "realtime-ingestor") is None,
            f"{level}: nothing autoscales the ingestor",
        )
    gw = check_workload(c, level, objects, "realtime-gateway")
    if gw:
        pod = gw["spec"]["template"]["spec"]
        labels = gw["spec"]["template"]["metadata"]["labels"]
        ctr = pod["containers"][0]
        env = container_env(objects, ctr)
        drain = duration_seconds(env.get("REALTIME_DRAIN", "20s"))
        heartbeat = duration_seconds(env.get("REALTIME_HEARTBEAT", "30s"))
        pre = ctr.get("lifecycle", {}).get("preStop", {})
        c.check(bool(pre), f"{level}: gateway has a preStop hook")
        pre_sleep = float(pre["exec"]["command"][-1]) if "exec" in pre else float(pre.get("sleep", {}).get("seconds", 0))
        grace = pod.get("terminationGracePeriodSeconds", 30)
        c.check(
            grace > pre_sleep + drain,
            f"{level}: gateway terminationGracePeriodSeconds {grace} > preStop {pre_sleep:g}s + REALTIME_DRAIN {drain:g}s",
        )
        c.check((gw["spec"].get("replicas") or 0) >= 2, f"{level}: several gateway replicas")
        ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}
        listen = env.get("REALTIME_LISTEN", "0.0.0.0:8080")
        c.check(listen.endswith(f":{ports.get('http')}"), f"{level}: REALTIME_LISTEN {listen} matches the http port")
        hpa = find(objects, "HorizontalPodAutoscaler", "realtime-gateway")
        if c.check(hpa is not None, f"{level}: gateway HorizontalPodAutoscaler exists"):
            ref = hpa["spec"]["scaleTargetRef"]
            c.check(ref["kind"] == "Deployment" and ref["name"] == "realtime-gateway", f"{level}: HPA scales the gateway")
            c.check(hpa["spec"]["minReplicas"] >= 2, f"{level}: HPA keeps at least two gateways")
        pdb = find(objects, "PodDisruptionBudget", "realtime-gateway")
        if c.check(pdb is not None, f"{level}: gateway PodDisruptionBudget exists"):
            c.check(selects(pdb["spec"]["selector"]["matchLabels"], labels), f"{level}: PDB selects the gateway pods")
        ingress = find(objects, "Ingress", "realtime-gateway")
        if c.check(ingress is not None, f"{level}: Ingress exists"):
            a = ingress["metadata"].get("annotations", {})
            p = "nginx.ingress.kubernetes.io/"
            c.check(a.get(p + "proxy-buffering") == "off", f"{level}: ingress proxy buffering off")
            for t in ("proxy-read-timeout", "proxy-send-timeout"):
                c.check(
                    float(a.get(p + t, "60")) > 2 * heartbeat,
                    f"{level}: ingress {t} {a.get(p + t, '60 (default)')}s well above REALTIME_HEARTBEAT {heartbeat:g}s",
                )
            c.check(
                "gzip on" not in json.dumps(a) and "event-stream" not in a.get(p + "gzip-types", ""),
                f"{level}: ingress does not gzip text/event-stream",
            )
            svc = find(objects, "Service", "realtime-gateway")
            svc_ports = {p["name"] for p in svc["spec"]["ports"]} if svc else set()
            for rule in ingress["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    c.check(
                        backend["name"] == "realtime-gateway" and backend["port"].get("name") in svc_ports,
                        f"{level}: ingress path {path['path']} goes to a real gateway Service port",
                    )
    # Prometheus Operator objects, structurally.
    sm = find(objects, "ServiceMonitor", "realtime")
    if c.check(sm is not None, f"{level}: ServiceMonitor exists"):
        spec = sm["spec"]
        selected = [
            s for s in objects
            if s.get("kind") == "Service" and selects(spec["selector"]["matchLabels"], s["metadata"].get("labels", {}))
        ]
        names = sorted(s["metadata"]["name"] for s in selected)
        c.check(names == ["realtime-gateway", "realtime-ingestor"], f"{level}: ServiceMonitor selects both Services (got {names})")
        c.check(
            all(s["metadata"]["labels"].get(spec.get("jobLabel", "")) == s["metadata"]["name"] for s in selected),
            f"{level}: ServiceMonitor jobLabel yields job=realtime-ingestor / realtime-gateway",
        )
        for ep in spec.get("endpoints", []):
            c.check(
                ep.get("path") == "/metrics"
                and all(ep.get("port") in {p["name"] for p in s["spec"]["ports"]} for s in selected),
                f"{level}: ServiceMonitor scrapes /metrics on a port every Service has",
            )
            c.check(set(ep) <= {"port", "path", "interval", "scrapeTimeout", "honorLabels", "relabelings", "metricRelabelings", "scheme"},
                    f"{level}: ServiceMonitor endpoint fields known: {sorted(ep)}")
        c.check(set(spec) <= {"jobLabel", "selector", "endpoints", "namespaceSelector", "targetLabels", "podTargetLabels"},
                f"{level}: ServiceMonitor spec fields known: {sorted(spec)}")
    rule = find(objects, "PrometheusRule", "realtime")
    if c.check(rule is not None, f"{level}: PrometheusRule exists"):
        with (GRAFANA / "alerts.yaml").open() as f:
            groups = yaml.safe_load(f)["groups"]
        c.check(set(rule["spec"]) == {"groups"}, f"{level}: PrometheusRule spec has only groups")
        c.check(rule["spec"].get("groups") == groups, f"{level}: PrometheusRule groups identical to deploy/grafana/alerts.yaml (regenerate: check.py --write-rule)")
    if level == "production":
        images = {
            ctr["image"]
            for o in objects if o.get("kind") == "Deployment"
            for ctr in o["spec"]["template"]["spec"]["containers"]
        }
        c.check(
            len(images) == 1 and all(":" in i.rsplit("/", 1)[-1] and not i.endswith(":latest") for i in images),
            f"{level}: one pinned image for both Deployments (got {sorted(images)})",
        )


def promtool() -> str | None:
    return shutil.which("promtool")


def check_alerts(c: Checks) -> None:
    tool = promtool()
    if not c.check(tool is not None, "promtool is installed (Debian package prometheus; .ci/run installs it)"):
        return
    out = run([tool, "check", "rules", str(GRAFANA / "alerts.yaml")])
    if c.check(out.returncode == 0, f"promtool check rules alerts.yaml:\n{out.stdout}{out.stderr}"):
        c.ok("alerts.yaml: promtool check rules")
    out = run([tool, "test", "rules", str(GRAFANA / "alerts_test.yaml")], cwd=GRAFANA)
    if c.check(out.returncode == 0, f"promtool test rules alerts_test.yaml:\n{out.stdout}{out.stderr}"):
        c.ok("alerts.yaml: promtool test rules (alerts_test.yaml)")
    with (GRAFANA / "alerts.yaml").open() as f:
        groups = yaml.safe_load(f)["groups"]
    with (GRAFANA / "alerts_test.yaml").open() as f:
        tests = yaml.safe_load(f)
    tested = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", [])}
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    c.check(alerts <= tested, f"every alert has a promtool unit test (missing: {sorted(alerts - tested)})")
    for g in groups:
        for r in g["rules"]:
            c.check(r.get("labels", {}).get("severity") in ("warning", "critical"), f"{r.get('alert')}: severity warning|critical")
            c.check({"summary", "description"} <= set(r.get("annotations", {})), f"{r.get('alert')}: summary and description")


def dashboard_exprs(node) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                out.append(v)
            else:
                out.extend(dashboard_exprs(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(dashboard_exprs(v))
    return out


def check_dashboard(c: Checks) -> None:
    path = GRAFANA / "dashboard.json"
    try:
        dash = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        c.check(False, f"dashboard.json is valid JSON: {e}")
        return
    c.ok("dashboard.json is valid JSON")
    variables = dash.get("templating", {}).get("list", [])
    ds = [v for v in variables if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    c.check(len(ds) == 1, "dashboard has one Prometheus datasource variable")
    ds_ref = "${%s}" % ds[0]["name"] if ds else None
    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))
    ids = [p.get("id") for p in panels]
    c.check(len(ids) == len(set(ids)), "dashboard panel ids are unique")
    titles = {p.get("title") for p in panels}
    missing = [t for t in EXPECTED_PANELS if t not in titles]
    c.check(not missing, f"dashboard has the expected panels (missing: {missing})")
    for p in panels:
        if p.get("type") == "row":
            continue
        c.check(p.get("datasource", {}).get("uid") == ds_ref, f"panel {p.get('title')!r} uses the datasource variable")
        targets = p.get("targets", [])
        c.check(bool(targets) and all(t.get("expr") for t in targets), f"panel {p.get('title')!r} has queries")
        c.check(all(t.get("datasource", {}).get("uid") == ds_ref for t in targets), f"panel {p.get('title')!r} targets use the datasource variable")
    exprs = dashboard_exprs(dash)
    tool = promtool()
    if not tool:
        c.check(False, "promtool is installed, to compile the dashboard's PromQL")
        return
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": e.replace("$__rate_interval", "5m").replace("$__interval", "1m")}
        for i, e in enumerate(exprs)
    ]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        out = run([tool, "check", "rules", f.name])
    if c.check(out.returncode == 0, f"dashboard PromQL compiles:\n{out.stdout}{out.stderr}"):
        c.ok(f"dashboard: {len(panels)} panels, {len(exprs)} PromQL expressions compile")


def check_dockerfile(c: Checks) -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    c.check(len(froms) >= 2, "Dockerfile is multi-stage")
    users = [l.split()[1] for l in lines if l.upper().startswith("USER ")]
    c.check(bool(users) and users[-1].split(":")[0] not in ("root", "0"), "Dockerfile's final USER is not root")
    c.check(
        all(re.search(rf"target/release/{b}\b", text) for b in ("realtime-ingestor", "realtime-gateway")),
        "Dockerfile ships both release binaries",
    )
    exposed = {p for l in lines if l.upper().startswith("EXPOSE ") for p in l.split()[1:]}
    c.check({"8080", "9090"} <= exposed, "Dockerfile exposes 8080 and 9090")
    ignore_file = ROOT / ".dockerignore"
    ignored = [
        l.strip().rstrip("/") for l in (ignore_file.read_text() if ignore_file.is_file() else "").splitlines()
        if l.strip() and not l.strip().startswith(("#", "!"))
    ]
    c.check("target" in ignored, ".dockerignore keeps target/ out of the build context")
    # cargo needs every workspace member in the context.
    try:
        import tomllib
        with (ROOT / "Cargo.toml").open("rb") as f:
            members = tomllib.load(f)["workspace"]["members"]
    except (ImportError, OSError, KeyError) as e:
        c.check(False, f"reading the workspace members of Cargo.toml: {e}")
        members = []
    for member in members:
        parts = member.split("/")
        prefixes = {"/".join(parts[: i + 1]) for i in range(len(parts))}
        c.check(
            not any(p in prefixes or p == "**/" + parts[-1] for p in ignored),
            f".dockerignore keeps workspace member {member} in the build context",
        )
    c.ok("Dockerfile and .dockerignore")


def check_exporter_queries(c: Checks) -> None:
    """The postgres_exporter custom queries file: the structure the exporter
    reads (`<metric prefix>: {query, metrics: [{column: {usage, description}}]}`),
    each column selected by the query, and the alerts' pg_ metrics defined."""
    name = EXPORTER_QUERIES.relative_to(DEPLOY).as_posix()
    try:
        doc = yaml.safe_load(EXPORTER_QUERIES.read_text())
    except (OSError, yaml.YAMLError) as e:
        c.check(False, f"{name} is readable YAML: {e}")
        return
    if not c.check(isinstance(doc, dict) and bool(doc), f"{name} is a mapping of metric prefix to query"):
        return
    defined: set[str] = set()
    for prefix, spec in doc.items():
        what = f"{name}: {prefix}"
        c.check(re.fullmatch(r"[a-z_][a-z0-9_]*", str(prefix)) is not None, f"{what}: a valid metric prefix")
        if not c.check(isinstance(spec, dict), f"{what}: a mapping"):
            continue
        c.check(set(spec) <= {"query", "metrics", "master", "cache_seconds", "runonserver"},
                f"{what}: known fields only (got {sorted(spec)})")
        query = spec.get("query")
        if not c.check(isinstance(query, str) and query.strip() != "", f"{what}: has a query"):
            continue
        metrics = spec.get("metrics")
        if not c.check(isinstance(metrics, list) and bool(metrics), f"{what}: has a metrics list"):
            continue
        usages: dict[str, str] = {}
        for m in metrics:
            if not c.check(isinstance(m, dict) and len(m) == 1, f"{what}: each metrics item is one column: {m!r}"):
                continue
            (col, col_spec), = m.items()
            ok = c.check(
                isinstance(col_spec, dict) and col_spec.get("usage") in EXPORTER_USAGES
                and isinstance(col_spec.get("description"), str),
                f"{what}.{col}: usage one of {sorted(EXPORTER_USAGES)} and a description",
            )
            c.check(re.search(rf"\b{re.escape(str(col))}\b", query) is not None, f"{what}.{col}: a column the query selects")
            if ok:
                usages[col] = col_spec["usage"]
        c.check("LABEL" in usages.values() and "GAUGE" in usages.values(), f"{what}: at least one LABEL and one GAUGE column")
        defined |= {f"{prefix}_{col}" for col, u in usages.items() if u in ("GAUGE", "COUNTER")}
    slot = doc.get("pg_realtime_slot", {})
    query = slot.get("query", "") if isinstance(slot, dict) else ""
    columns = {col for m in (slot.get("metrics") or [] if isinstance(slot, dict) else []) if isinstance(m, dict) for col in m}
    c.check(
        all(t in query for t in ("pg_replication_slots", "pg_wal_lsn_diff", "restart_lsn", "wal_status", "active")),
        f"{name}: pg_realtime_slot reads retained WAL, active and wal_status from pg_replication_slots",
    )
    c.check(
        {"slot_name", "retained_wal_bytes", "active", "lost"} <= columns,
        f"{name}: pg_realtime_slot has slot_name, retained_wal_bytes, active, lost (got {sorted(columns)})",
    )
    with (GRAFANA / "alerts.yaml").open() as f:
        groups = yaml.safe_load(f)["groups"]
    used = {
        m for g in groups for r in g["rules"]
        for m in re.findall(r"\b(pg_realtime_[a-z0-9_]+)", r.get("expr", ""))
    }
    c.check(bool(used) and used <= defined, f"alerts.yaml: pg_realtime_ metrics {sorted(used)} defined by {name} (missing: {sorted(used - defined)})")
    c.ok(f"{name}: {len(doc)} queries, {len(defined)} metrics, those of the alerts defined")


PROMETHEUSRULE_HEAD = """# The alerting rules of deploy/grafana/alerts.yaml for the Prometheus
# Operator. The groups must stay identical to that file (`make test-deploy`
# compares them); regenerate with `python3 deploy/k8s/check.py --write-rule`.
"""


def write_prometheusrule() -> None:
    """Rewrites base/prometheusrule.yaml from deploy/grafana/alerts.yaml."""
    with (GRAFANA / "alerts.yaml").open() as f:
        groups = yaml.safe_load(f)["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "realtime", "labels": {"app.kubernetes.io/part-of": "realtime"}},
        "spec": {"groups": groups},
    }

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value):
        style = "|" if "\n" in value else (">" if len(value) > 80 else None)
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    body = yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=100, allow_unicode=True)
    (K8S / "base" / "prometheusrule.yaml").write_text(PROMETHEUSRULE_HEAD + body)


def main() -> int:
    if sys.argv[1:] == ["--write-rule"]:
        write_prometheusrule()
        print("wrote deploy/k8s/base/prometheusrule.yaml")
        return 0
    c = Checks()
    rendered = render_all(c)
    with (K8S / "secret.example.yaml").open() as f:
        rendered["secret.example.yaml"] = [o for o in yaml.safe_load_all(f) if o]
    for level, objects in rendered.items():
        validate_schemas(c, level, objects)
        if level not in LEVELS:
            continue
        before = len(c.failures)
        check_contract(c, level, objects)
        if len(c.failures) == before:
            print(f"ok   {level}: probes, grace period, rollout, security, selectors, ingress, monitoring", flush=True)
    example = rendered["secret.example.yaml"][0]
    referenced = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for o in rendered.get("base", []) if o.get("kind") == "Deployment"
        for ctr in o["spec"]["template"]["spec"]["containers"]
        for e in ctr.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
    }
    c.check(
        referenced == set(example.get("stringData", {})),
        f"secret.example.yaml lists exactly the Secret keys the Deployments reference ({sorted(referenced)})",
    )
    check_alerts(c)
    check_dashboard(c)
    check_dockerfile(c)
    check_exporter_queries(c)
    print(f"deploy checks: {c.passed} passed, {len(c.failures)} failed")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
