"""Assertions on the Helm chart's rendered objects (scripts/helm-check.sh).

    helm_assert.py DEFAULT.yaml ALL_ON.yaml

DEFAULT is `helm template` with the default values, ALL_ON with every
optional part on (deploy/helm/context-api/ci/all-on.yaml). Exits 1 with
every failed check listed.
"""

import re
import sys

import yaml

FAILED = []

# Settings that are secrets: never a literal value in a rendered object.
SECRET_NAMES = {"DATABASE_URL", "REDIS_URL", "API_KEYS"}
# A URL with a password in it, anywhere in the render.
CREDENTIAL_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@")


def check(ok, what):
    if not ok:
        FAILED.append(what)


def load(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    docs = [d for d in yaml.safe_load_all(text) if d]
    return text, docs


def of_kind(docs, kind, component=None):
    found = [d for d in docs if d["kind"] == kind]
    if component:
        found = [
            d for d in found
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]
    return found


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def restricted(where, pod_spec, container):
    sc = container.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True or pod_spec.get("securityContext", {}).get("runAsNonRoot") is True,
          f"{where}: runAsNonRoot")
    check(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
    check(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation false")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities.drop [ALL]")
    check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault")


def check_render(name, text, docs):
    check(not of_kind(docs, "Secret"), f"{name}: the chart renders no Secret")
    check(not CREDENTIAL_URL.search(text), f"{name}: no URL with a password in the render")

    api = of_kind(docs, "Deployment", "api")
    check(len(api) == 1, f"{name}: one API Deployment")
    if not api:
        return
    dep = api[0]
    spec = dep["spec"]["template"]["spec"]
    (c,) = [c for c in spec["containers"] if c["name"] == "api"]
    check(c["startupProbe"]["httpGet"]["path"] == "/health", f"{name}: startup probe on /health")
    check(c["readinessProbe"]["httpGet"]["path"] == "/ready", f"{name}: readiness on /ready")
    check(c["livenessProbe"]["httpGet"]["path"] == "/health", f"{name}: liveness on /health")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check(c[probe]["httpGet"]["port"] == "http", f"{name}: {probe} on the http port")
    check(any(p["name"] == "http" and p["containerPort"] == 8000 for p in c["ports"]),
          f"{name}: the http port is 8000")

    env = env_of(c)
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    delay_ms = int(env["SHUTDOWN_DELAY_MS"]["value"])
    timeout_s = int(env["SHUTDOWN_TIMEOUT_SECONDS"]["value"])
    grace = spec["terminationGracePeriodSeconds"]
    check(sleep * 1000 >= delay_ms, f"{name}: the preStop sleep ({sleep} s) covers the shutdown delay ({delay_ms} ms)")
    check(grace > sleep + delay_ms / 1000 + timeout_s,
          f"{name}: grace {grace} s exceeds preStop {sleep} s + delay {delay_ms} ms + drain {timeout_s} s")
    check("resources" in c and c["resources"].get("requests") and c["resources"].get("limits"),
          f"{name}: requests and limits")
    restricted(f"{name}: api", spec, c)
    check(spec.get("automountServiceAccountToken") is False, f"{name}: no service account token")

    jobs = of_kind(docs, "Job", "migrate")
    check(len(jobs) == 1, f"{name}: one migrations Job")
    for job in jobs:
        hooks = job["metadata"]["annotations"].get("helm.sh/hook", "")
        check({"pre-install", "pre-upgrade"} <= set(hooks.split(",")), f"{name}: migrations run as a pre-install/pre-upgrade hook")
        jspec = job["spec"]["template"]["spec"]
        (jc,) = jspec["containers"]
        check(jc["args"] == ["migrate"], f"{name}: the Job runs `migrate`")
        restricted(f"{name}: migrate", jspec, jc)
        containers = [("migrate", jc)]
    check(c["args"] == ["serve"], f"{name}: the pods serve (without --migrate)")
    containers = [("api", c)] + (containers if jobs else [])
    for where, container in containers:
        e = env_of(container)
        for secret in SECRET_NAMES & set(e):
            ref = e[secret].get("valueFrom", {}).get("secretKeyRef")
            check("value" not in e[secret] and ref and ref.get("name"),
                  f"{name}: {where} reads {secret} from a Secret, never inline")
        check("DATABASE_URL" in e, f"{name}: {where} has DATABASE_URL")

    check(len(of_kind(docs, "PodDisruptionBudget")) == 1, f"{name}: a PodDisruptionBudget")
    policies = {d["metadata"]["name"]: d for d in of_kind(docs, "NetworkPolicy")}
    api_policy = [p for n, p in policies.items() if n.endswith("-api")]
    check(len(api_policy) == 1, f"{name}: a NetworkPolicy for the API")
    for p in api_policy:
        check(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}, f"{name}: API policy limits both ways")
        froms = [f for rule in p["spec"]["ingress"] for f in rule["from"]]
        check(froms and all("namespaceSelector" in f for f in froms),
              f"{name}: only the selected namespaces (ingress, monitoring) reach the API")
        ports = sorted({port["port"] for rule in p["spec"]["egress"] for port in rule["ports"]})
        check(set(ports) <= {53, 5432, 6379, 80}, f"{name}: the API reaches only DNS, Postgres, Redis, TEI: {ports}")
    return dep


def main(default_path, all_on_path):
    text, docs = load(default_path)
    dep = check_render("default", text, docs)
    check(len(of_kind(docs, "HorizontalPodAutoscaler")) == 1, "default: a HorizontalPodAutoscaler")
    check(dep is None or "replicas" not in dep["spec"], "default: the autoscaler owns the replica count")
    for kind in ("Ingress", "ServiceMonitor"):
        check(not of_kind(docs, kind), f"default: no {kind} unless asked")
    check(not of_kind(docs, "Deployment", "tei"), "default: TEI is external")

    text, docs = load(all_on_path)
    check_render("all-on", text, docs)
    tei = of_kind(docs, "Deployment", "tei")
    check(len(tei) == 1, "all-on: a TEI Deployment")
    (api,) = of_kind(docs, "Deployment", "api")
    env = env_of(api["spec"]["template"]["spec"]["containers"][0])
    check(env["EMBEDDING_SERVICE_URL"]["value"] == "http://ctx-context-api-tei:80",
          "all-on: the API uses the release's TEI")
    policies = {d["metadata"]["name"]: d for d in of_kind(docs, "NetworkPolicy")}
    tei_policy = policies.get("ctx-context-api-tei")
    check(tei_policy is not None, "all-on: a NetworkPolicy for TEI")
    if tei_policy:
        froms = [f for rule in tei_policy["spec"]["ingress"] for f in rule["from"]]
        check(froms == [{"podSelector": {"matchLabels": {
            "app.kubernetes.io/name": "context-api", "app.kubernetes.io/instance": "ctx",
            "app.kubernetes.io/component": "api"}}}], "all-on: only the API reaches TEI")
    api_policy = policies["ctx-context-api-api"]
    pg = [r for r in api_policy["spec"]["egress"] if any(p["port"] == 5432 for p in r["ports"])]
    check(pg and pg[0].get("to") == [{"ipBlock": {"cidr": "10.0.10.0/24"}}], "all-on: Postgres egress to its CIDR only")
    (sm,) = of_kind(docs, "ServiceMonitor") or [None]
    check(sm is not None and sm["spec"]["endpoints"][0]["path"] == "/metrics", "all-on: the ServiceMonitor scrapes /metrics")
    (ing,) = of_kind(docs, "Ingress") or [None]
    if ing:
        paths = [p["path"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
        check("/metrics" not in paths and "/" not in paths, f"all-on: the Ingress does not route /metrics: {paths}")
    else:
        check(False, "all-on: an Ingress")

    if FAILED:
        for f in FAILED:
            print(f"FAIL: {f}", file=sys.stderr)
        sys.exit(1)
    print("helm_assert: every check passed", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:])
