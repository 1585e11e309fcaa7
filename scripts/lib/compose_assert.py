#!/usr/bin/env python3
"""Assertions on the merged Compose models (from `docker-compose config --format json`).

    compose_assert.py BASE.json DEV.json PROD.json ENV_FILE

ENV_FILE holds the sentinel secret values that were used to render the models;
none of them may appear anywhere in the production services.
Exits non-zero with one line per failed assertion.
"""
import json
import os
import re
import sys

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
    return cond


def load(path):
    with open(path) as f:
        return json.load(f)


base, dev, prod = (load(p) for p in sys.argv[1:4])
sentinels = {}
with open(sys.argv[4]) as f:
    for line in f:
        k, _, v = line.strip().partition("=")
        if k and v and ("PASSWORD" in k or k in ("API_KEYS", "DATABASE_URL", "REDIS_URL")):
            sentinels[k] = v

ONE_OFF = {"migrate"}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEYS|_KEY$")


def seconds(d):
    """A Go duration as compose prints it ("1m30s", "300ms") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6, "ns": 1e-9}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|us|ns|h|m|s)", d or "0s"))


def services(model):
    return model["services"]


def nets(svc):
    n = svc.get("networks") or {}
    return set(n) if isinstance(n, (dict, list)) else set()


def has_limits(svc):
    lim = ((svc.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    return bool(lim.get("cpus")) and bool(lim.get("memory"))


def healthcheck_on(svc):
    hc = svc.get("healthcheck")
    return bool(hc) and not hc.get("disable") and bool(hc.get("test"))


# ---------------------------------------------------------------- base --
s = services(base)
check(set(s) == {"context-api", "migrate", "db", "redis", "embeddings"},
      f"base: unexpected services {sorted(s)}")
api = s["context-api"]
dep = api.get("depends_on", {})
check(dep.get("db", {}).get("condition") == "service_healthy", "base: API must wait for db healthy")
check(dep.get("redis", {}).get("condition") == "service_healthy", "base: API must wait for redis healthy")
check(dep.get("migrate", {}).get("condition") == "service_completed_successfully",
      "base: API must wait for migrate to complete successfully")
check(seconds(api.get("stop_grace_period")) == 30, f"base: API stop_grace_period is {api.get('stop_grace_period')}")
check(api.get("restart") == "unless-stopped", "base: API restart policy")
check(healthcheck_on(api) and "healthcheck" in " ".join(api["healthcheck"]["test"]),
      "base: API healthcheck must run `context-api healthcheck`")
check(has_limits(api) and ((api["deploy"]["resources"].get("reservations") or {}).get("memory")),
      "base: API needs CPU/memory limits and reservations")
check(all(p.get("host_ip") == "127.0.0.1" for p in api.get("ports", [])),
      "base: the API port is published on loopback only by default")
env = api.get("environment", {})
check(int(env.get("SHUTDOWN_TIMEOUT_SECONDS", 99)) + seconds(f"{env.get('SHUTDOWN_DELAY_MS', '0')}ms") < seconds(api.get("stop_grace_period")),
      "base: shutdown delay + timeout must fit in the grace period")
mig = s["migrate"]
check(mig.get("command") == ["migrate"], f"base: migrate command is {mig.get('command')}")
check(mig.get("restart") == "no", "base: migrate must not restart")
check(mig.get("image") == api.get("image"), "base: migrate must use the API image")
check(mig.get("depends_on", {}).get("db", {}).get("condition") == "service_healthy", "base: migrate waits for db")
db = s["db"]
check(db["image"].startswith("pgvector/pgvector:") and "pg16" in db["image"], f"base: db image {db['image']}")
check(any(v.get("target") == "/docker-entrypoint-initdb.d" and v.get("source", "").endswith("init-db")
          for v in db.get("volumes", [])), "base: init-db/ must be mounted at /docker-entrypoint-initdb.d")
check(any(v.get("type") == "volume" and v.get("target") == "/var/lib/postgresql/data" for v in db.get("volumes", [])),
      "base: db data must be a named volume")
check("pg_isready" in " ".join(db.get("healthcheck", {}).get("test", [])), "base: db healthcheck uses pg_isready")
redis = s["redis"]
check(re.match(r"redis:7\.\d+\.\d+-alpine$", redis["image"]) is not None, f"base: redis image {redis['image']} not a pinned 7.x alpine")
rcmd = " ".join(redis.get("command", []))
for want in ("--requirepass", "--maxmemory ", "--maxmemory-policy allkeys-lru"):
    check(want in rcmd, f"base: redis command lacks {want}")
check("redis-cli" in " ".join(redis.get("healthcheck", {}).get("test", [])), "base: redis healthcheck")
check("REDISCLI_AUTH" in redis.get("environment", {}), "base: redis healthcheck must authenticate (REDISCLI_AUTH)")
emb = s["embeddings"]
check(re.match(r"ghcr\.io/huggingface/text-embeddings-inference:cpu-\d+\.\d+", emb["image"]) is not None,
      f"base: TEI image {emb['image']} is not a pinned CPU tag")
check("BAAI/bge-base-en-v1.5" in emb.get("command", []), "base: TEI model must be BAAI/bge-base-en-v1.5")
check(any(v.get("type") == "volume" and v.get("target") == "/data" for v in emb.get("volumes", [])),
      "base: TEI model cache volume")
sp = emb.get("healthcheck", {}).get("start_period")
check(seconds(sp) >= 120,
      f"base: TEI healthcheck start_period {sp} too short for a model download")
all_nets = set().union(*(nets(v) for v in s.values()))
check(len(all_nets) == 1, f"base: expected one network, found {sorted(all_nets)}")
for name, svc in s.items():
    if name in ONE_OFF:
        continue
    check(healthcheck_on(svc), f"base: {name} has no healthcheck")
    check(has_limits(svc), f"base: {name} has no CPU/memory limits")
    check(svc.get("restart") in ("unless-stopped", "always"), f"base: {name} restart policy {svc.get('restart')}")

# ----------------------------------------------------------------- dev --
s = services(dev)
api = s["context-api"]
check((api.get("build") or {}).get("target") == "dev", "dev: the API must build the `dev` target")
check(any(v.get("type") == "bind" and v.get("target") == "/app" for v in api.get("volumes", [])),
      "dev: the source must be mounted at /app")
check(api.get("environment", {}).get("LOG_FORMAT") == "pretty", "dev: human-readable logs")
check("debug" in api.get("environment", {}).get("LOG_LEVEL", ""), "dev: debug logs")
for name in ("db", "redis"):
    ports = s[name].get("ports", [])
    check(ports and all(p.get("host_ip") == "127.0.0.1" for p in ports), f"dev: {name} must be published on 127.0.0.1 only")

# ---------------------------------------------------------------- prod --
s = services(prod)
publishers = sorted(n for n, v in s.items() if v.get("ports"))
check(publishers == ["caddy"], f"prod: only caddy may publish ports, found {publishers}")
caddy_ports = sorted({(p.get("published"), p.get("target")) for p in s.get("caddy", {}).get("ports", [])})
check({("80", 80), ("443", 443)} <= set(caddy_ports), f"prod: caddy must publish 80 and 443, has {caddy_ports}")
check(any(v.get("target") == "/etc/caddy/Caddyfile" for v in s.get("caddy", {}).get("volumes", [])), "prod: Caddyfile mounted")
for name in ("caddy_data", "caddy_config"):
    check(any(v.get("source") == name for v in s.get("caddy", {}).get("volumes", [])), f"prod: caddy volume {name}")
for name in ("db", "redis", "embeddings"):
    check(nets(s[name]) == {"backend"}, f"prod: {name} must be on the backend network only, is on {sorted(nets(s[name]))}")
check(nets(s.get("caddy", {})) == {"frontend"}, f"prod: caddy must be on the frontend only, is on {sorted(nets(s['caddy']))}")
# The API replicas: every service that runs the API image's server (not
# migrate). Each is its own service with a stable alias, so that Caddy's
# upstream list is fixed and scripts/rollout.sh can replace one at a time.
API_REPLICAS = sorted(n for n, v in s.items()
                      if str(v.get("image", "")).startswith(str(s["context-api"].get("image"))) and n not in ONE_OFF)
check(len(API_REPLICAS) >= 2, f"prod: the API runs {len(API_REPLICAS)} replica service(s): {API_REPLICAS}")
aliases = {}
for name in API_REPLICAS:
    r = s[name]
    check(nets(r) == {"frontend", "backend"}, f"prod: {name} must join frontend and backend")
    check(int((r.get("deploy") or {}).get("replicas", 1)) == 1,
          f"prod: {name} must run one container (a scaled service is recreated all at once)")
    for a in ((r.get("networks") or {}).get("frontend") or {}).get("aliases") or []:
        aliases.setdefault(a, []).append(name)
    check(r.get("environment") == s["context-api"].get("environment"), f"prod: {name}'s environment differs from context-api's")
    check(r.get("healthcheck") == s["context-api"].get("healthcheck"), f"prod: {name}'s healthcheck differs")
    check(r.get("stop_grace_period") == s["context-api"].get("stop_grace_period"), f"prod: {name}'s grace period differs")
upstreams = s.get("caddy", {}).get("environment", {}).get("API_UPSTREAMS", "").split()
hosts = [u.rsplit(":", 1)[0] for u in upstreams]
check(len(upstreams) == len(API_REPLICAS), f"prod: Caddy lists {len(upstreams)} upstreams for {len(API_REPLICAS)} replicas")
for h in hosts:
    check(len(aliases.get(h, [])) == 1, f"prod: Caddy's upstream {h} must be the alias of exactly one replica, is of {aliases.get(h, [])}")
check(sorted(aliases.get("context-api", []) + ["context-api"]) == API_REPLICAS,
      "prod: every replica must answer to `context-api` on the frontend (Prometheus resolves it)")
check("backup" in s, "prod: no backup service")
if "backup" in s:
    benv = s["backup"].get("environment", {})
    check(benv.get("SCHEDULE") and benv.get("BACKUP_KEEP_DAYS"), "prod: backup needs a schedule and retention")
    check(any(v.get("target") == "/backups" for v in s["backup"].get("volumes", [])), "prod: backups volume")
for name in ("prometheus", "grafana"):
    check(name in s, f"prod: no {name} service")
# prometheus.yml (top level) names its rules `alerts.yml`, relative to itself.
prom_mounts = {v.get("target"): v.get("source", "") for v in s.get("prometheus", {}).get("volumes", [])}
for target, source in (("/etc/prometheus/prometheus.yml", "/prometheus.yml"),
                       ("/etc/prometheus/alerts.yml", "/deploy/prometheus/alerts.yml")):
    src = prom_mounts.get(target, "")
    check(src.endswith(source) and os.path.isfile(src), f"prod: Prometheus needs ...{source} mounted at {target} (got {src!r})")
check(any(v.get("target", "").startswith("/etc/grafana/provisioning") for v in s.get("grafana", {}).get("volumes", [])),
      "prod: Grafana provisioning mounted")

for name, svc in s.items():
    log = svc.get("logging") or {}
    opts = log.get("options") or {}
    check(log.get("driver") == "json-file" and opts.get("max-size") and opts.get("max-file"),
          f"prod: {name} has no rotated json-file logging")
    if name in ONE_OFF:
        continue
    check(healthcheck_on(svc), f"prod: {name} has no healthcheck")
    check(has_limits(svc), f"prod: {name} has no CPU/memory limits")
    check(svc.get("restart") in ("unless-stopped", "always"), f"prod: {name} restart policy {svc.get('restart')}")

# Nothing secret inline: the sentinel values appear nowhere in the services,
# secret-looking variables are *_FILE paths, and the secrets are mounted.
dump = json.dumps(s)
for k, v in sentinels.items():
    check(v not in dump, f"prod: the value of {k} appears inline in the services")
for name, svc in s.items():
    for k, v in (svc.get("environment") or {}).items():
        if SECRET_KEY.search(k) or k in ("DATABASE_URL", "REDIS_URL"):
            check(k.endswith("_FILE") or k.endswith("__FILE"), f"prod: {name} sets {k} inline")
        if isinstance(v, str) and re.search(r"://[^/\s]*:[^@/\s]+@", v):
            check(False, f"prod: {name} has credentials in {k}")
wanted = {
    **{name: {"database_url", "redis_url", "api_keys"} for name in API_REPLICAS},
    "migrate": {"database_url"},
    "db": {"postgres_password"},
    "redis": {"redis_password"},
    "backup": {"postgres_password"},
    "grafana": {"grafana_admin_password"},
}
for name, want in wanted.items():
    got = {x["source"] for x in s.get(name, {}).get("secrets", [])}
    check(want <= got, f"prod: {name} must mount secrets {sorted(want - got)}")
api_env = s["context-api"].get("environment", {})
check(int(api_env.get("SHUTDOWN_TIMEOUT_SECONDS", 99)) + seconds(f"{api_env.get('SHUTDOWN_DELAY_MS', '0')}ms")
      < seconds(s["context-api"].get("stop_grace_period")),
      "prod: shutdown delay + timeout must fit in the grace period")
for k in ("DATABASE_URL_FILE", "REDIS_URL_FILE", "API_KEYS_FILE"):
    check(api_env.get(k, "").startswith("/run/secrets/"), f"prod: API {k} must point into /run/secrets")
check(s["db"].get("environment", {}).get("POSTGRES_PASSWORD_FILE", "").startswith("/run/secrets/"),
      "prod: db reads POSTGRES_PASSWORD_FILE")
for sec, spec in (prod.get("secrets") or {}).items():
    check("file" in spec or "environment" in spec, f"prod: secret {sec} has no file/environment source")
    check("content" not in spec, f"prod: secret {sec} is inline content")

failures = [f for f in failures if f]
for f in failures:
    print(f"compose_assert: {f}", file=sys.stderr)
if failures:
    sys.exit(1)
print("deploy-check: ok: merged compose models (base, dev, prod) pass all assertions", file=sys.stderr)
