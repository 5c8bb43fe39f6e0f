"""The deploy files hold to the code, so they cannot drift from it: the Dockerfile, the Kubernetes
example (deploy/kubernetes) and the systemd unit (deploy/systemd) are read as data and checked against
`edge.config.Settings` (ports, shutdown deadline, peer limit, every variable they set), the ops
endpoint's routes (probe and scrape paths), pyproject (console script, version, Python) and one another
(selectors, named ports, mounted key files); the Grafana dashboard (deploy/grafana) is checked against
the metrics the edge's registry exposes.

Test rules: static checks only. No image is built (the CI machine has no container engine) and nothing
is applied to a cluster; each test reads files and builds Settings in-process. The one process started
is the container's health check script, against a local stub server.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from purerpc.grpclib.status import StatusCode

from edge.cli import build_parser
from edge.config import Settings, env_variables, load_settings
from edge.ops.http import respond
from edge.ops.runtime import EdgeRuntime
from edge.proto import CONNECT_PATH
from edge.records import OutboundRecord

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
[CONSOLE_SCRIPT] = PYPROJECT["project"]["scripts"]

#: A grace period (terminationGracePeriodSeconds, TimeoutStopSec) must exceed SHUTDOWN_DEADLINE_SEC by
#: at least this much: past the deadline the edge exits at once, and the margin absorbs a loaded host.
GRACE_MARGIN_SEC = 5
#: docs/operations.md: a file-descriptor limit above MAX_PEERS plus a thousand (one socket per peer,
#: plus Kafka and the ops port).
FD_HEADROOM = 1000
#: A pod name the downward API would give EDGE_ID (the StatefulSet's name and a large ordinal).
POD_ORDINAL = "-9999"


def defaults() -> Settings:
    return load_settings({})


def path_settings(settings: Settings) -> dict[str, PurePosixPath]:
    """Variable -> path, for every file setting that is set (certificates and keys)."""
    paths = {}
    for variable, field in env_variables().items():
        value = getattr(settings, field.name)
        if isinstance(value, Path):
            paths[variable] = PurePosixPath(value)
    return paths


def route_status(path: str) -> int:
    """What the ops endpoint answers to GET `path` on a fresh (not ready) edge."""
    return respond(b"GET", path.encode(), EdgeRuntime.create("deploy-test")).status


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as both systemd's EnvironmentFile= and kustomize's `envs` read them alike: no
    quotes and no comment after a value (systemd strips quotes, kustomize keeps them)."""
    env: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"{path.name}:{number}: not KEY=VALUE"
        assert not re.search(r"[\"'#]|\s", value), f"{path.name}:{number}: quotes, spaces or # in the value"
        assert name not in env, f"{path.name}:{number}: {name} twice"
        env[name] = value
    return env


def assert_settings(env: Mapping[str, str], where: str) -> Settings:
    """Every variable is one the edge reads, and together they make valid Settings."""
    unknown = sorted(set(env) - set(env_variables()))
    assert not unknown, f"{where}: not settings of the edge: {unknown}"
    return load_settings(env)


# ------------------------------------------------------------------------------------------ Dockerfile


@attrs.frozen
class Instruction:
    keyword: str
    arguments: str


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, one list per stage (continuations joined, comments dropped,
    ARG defaults substituted)."""
    text = (REPO / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    args: dict[str, str] = {}
    stages: list[list[Instruction]] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, arguments = line.strip().partition(" ")
        keyword = keyword.upper()
        arguments = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), " ".join(arguments.split()))
        if keyword == "ARG" and "=" in arguments and not stages:
            name, _, value = arguments.partition("=")
            args[name] = value
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(Instruction(keyword, arguments))
    return stages


def instructions(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.arguments for i in stage if i.keyword == keyword]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in instructions(dockerfile_stages()[-1], "ENV"):
        for word in shlex.split(arguments):
            name, _, value = word.partition("=")
            env[name] = value
    return env


def image_settings_env() -> dict[str, str]:
    """The image's ENV that are settings (PATH and PYTHON* are not)."""
    env = image_env()
    return {name: value for name, value in env.items() if not (name == "PATH" or name.startswith("PYTHON"))}


def image_uid() -> int:
    [user] = instructions(dockerfile_stages()[-1], "USER")
    return int(user.split(":")[0])


def test_dockerfile_builds_with_the_lock_and_runs_slim_python_as_a_non_root_user():
    stages = dockerfile_stages()
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    builder_from = instructions(builder, "FROM")[0].split()
    assert builder_from[-2:] == ["AS", "builder"]
    assert any("pip install -c constraints.txt ." in run for run in instructions(builder, "RUN"))
    [final_from] = instructions(final, "FROM")
    image = final_from.split()[0]
    match = re.fullmatch(r"python:(\d+)\.(\d+)-slim(-\w+)?", image)
    assert match, image
    python = (int(match.group(1)), int(match.group(2)))
    oldest = re.fullmatch(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert python == (3, 11) and oldest and (int(oldest.group(1)), int(oldest.group(2))) <= python
    # The runtime stage installs and compiles nothing: it copies the builder's environment.
    assert any(c.startswith("--from=builder ") for c in instructions(final, "COPY"))
    for run in instructions(final, "RUN"):
        assert not re.search(r"apt-get|apk |pip |gcc|build-essential|make ", run), run
    assert image_uid() > 0


def test_dockerfile_ports_env_and_entrypoint_match_the_code():
    final = dockerfile_stages()[-1]
    settings = assert_settings(image_settings_env(), "Dockerfile ENV")
    exposed = {int(port.split("/")[0]) for arguments in instructions(final, "EXPOSE") for port in arguments.split()}
    assert exposed == {settings.grpc_server_address.port, settings.health_http_address.port}
    assert instructions(final, "STOPSIGNAL") == ["SIGTERM"]
    [entrypoint] = instructions(final, "ENTRYPOINT")
    assert yaml.safe_load(entrypoint) == [CONSOLE_SCRIPT, "run"]
    assert build_parser().parse_args(["run"]).command == "run"
    [healthcheck] = instructions(final, "HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert "--interval=" in options and "--timeout=" in options
    python, script = yaml.safe_load(command)
    copied = {c.split()[-1]: c.split()[-2] for c in instructions(final, "COPY") if not c.startswith("--")}
    assert python == "python" and copied[script] == str(HEALTHCHECK.relative_to(REPO))
    # TLS is on in the image: its certificate and key are at fixed paths, to be mounted.
    assert settings.grpc_use_tls and set(path_settings(settings)) == {"GRPC_CERT_PATH", "GRPC_KEY_PATH"}
    assert all(path.is_absolute() for path in path_settings(settings).values())


def dockerignore_includes(path: str) -> bool:
    """Whether the build context holds `path` (.dockerignore: the last pattern matching the path or
    one of its parents decides; `!` re-includes; `*` stays within one path element, `**` crosses)."""
    included = True
    for pattern in (REPO / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            included = negate
    return included


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_secrets():
    sources = []
    for stage in dockerfile_stages():
        for copy in instructions(stage, "COPY"):
            if not copy.startswith("--from="):
                sources += copy.split()[:-1]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert dockerignore_includes(source), source
    assert dockerignore_includes("edge/config.py")
    kept_out_paths = (
        "certs/server.key",
        "certs/peer-token.secret",
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_deploy.py",
        "edge/__pycache__/config.cpython-311.pyc",
    )
    for kept_out in kept_out_paths:
        assert not dockerignore_includes(kept_out), kept_out


class _Ops(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def ops_stub(status: int) -> Iterator[tuple[int, list[str]]]:
    handler = type("Handler", (_Ops,), {"status": status, "paths": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler.paths
    finally:
        server.shutdown()
        server.server_close()


def healthcheck(address: str) -> subprocess.CompletedProcess[str]:
    env = {"HEALTH_HTTP_ADDRESS": address, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=30)


def test_the_container_health_check_asks_healthz_on_the_configured_port():
    """The HEALTHCHECK script, run as the image runs it: 200 on /healthz is healthy, anything else
    (an error status, nobody listening) is not; it follows HEALTH_HTTP_ADDRESS, and `off` is no check."""
    assert route_status("/healthz") == 200
    with ops_stub(200) as (port, paths):
        assert healthcheck(f"0.0.0.0:{port}").returncode == 0
        assert paths == ["/healthz"]
    with ops_stub(503) as (port, _):
        assert healthcheck(f"127.0.0.1:{port}").returncode == 1
    assert healthcheck(f"127.0.0.1:{port}").returncode == 1  # the stub has stopped
    off = healthcheck("off")
    assert off.returncode == 0 and "off" in off.stdout
    spec = importlib.util.spec_from_file_location("healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.DEFAULT_ADDRESS == str(defaults().health_http_address)
    assert script.target("[::]:9") == ("::1", 9)


# ---------------------------------------------------------------------------------------- Kubernetes


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())


def manifests() -> list[dict[str, Any]]:
    documents = []
    for resource in kustomization()["resources"]:
        documents += [d for d in yaml.safe_load_all((KUBERNETES / resource).read_text()) if d is not None]
    return documents


def one(kind: str) -> dict[str, Any]:
    [found] = [d for d in manifests() if d["kind"] == kind]
    return found


def services() -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] == "Service"]


def workload() -> dict[str, Any]:
    return one("StatefulSet")


def container() -> dict[str, Any]:
    [edge] = workload()["spec"]["template"]["spec"]["containers"]
    return edge


def pod_labels() -> dict[str, str]:
    return workload()["spec"]["template"]["metadata"]["labels"]


def container_port(name_or_number: str | int) -> int:
    for port in container()["ports"]:
        if name_or_number in (port["name"], port["containerPort"]):
            return port["containerPort"]
    raise AssertionError(f"no container port {name_or_number!r}")


def pod_env() -> dict[str, str]:
    """The edge's environment in a pod, as the kubelet builds it: the image's ENV, then envFrom (the
    generated ConfigMap), then env, with $(VAR) expanded and the pod name from the downward API."""
    [generator] = kustomization()["configMapGenerator"]
    [reference] = container()["envFrom"]
    assert reference["configMapRef"]["name"] == generator["name"]
    env = image_settings_env()
    for env_file in generator["envs"]:
        env.update(read_env_file(KUBERNETES / env_file))
    pod_name = workload()["metadata"]["name"] + POD_ORDINAL
    for variable in container()["env"]:
        if "valueFrom" in variable:
            assert variable["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, variable
            env[variable["name"]] = pod_name
        else:
            env[variable["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], variable["value"])
    return env


def pod_settings() -> Settings:
    return assert_settings(pod_env(), "deploy/kubernetes")


def test_the_kustomization_lists_every_manifest_of_the_expected_kinds():
    listed = set(kustomization()["resources"])
    present = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    kinds = sorted((d["apiVersion"], d["kind"]) for d in manifests())
    assert kinds == [
        ("apps/v1", "StatefulSet"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("policy/v1", "PodDisruptionBudget"),
        ("v1", "Service"),
        ("v1", "Service"),
    ]
    [image] = kustomization()["images"]
    assert image["name"] == container()["image"] and image["newTag"] == PYPROJECT["project"]["version"]


def test_each_pod_gets_its_own_stable_edge_id_and_valid_settings():
    """EDGE_ID is the StatefulSet pod's name (stable across restarts, distinct per pod); every variable
    the manifests set is a setting, and together they are valid."""
    settings = pod_settings()
    assert settings.edge_id == workload()["metadata"]["name"] + POD_ORDINAL
    assert settings.kafka_group_id == f"edge-service-{settings.edge_id}"
    [edge_id] = [v for v in container()["env"] if v["name"] == "EDGE_ID"]
    assert edge_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_container_ports_services_and_probes_match_the_settings_and_routes():
    settings = pod_settings()
    assert container_port("grpc") == settings.grpc_server_address.port
    assert container_port("ops") == settings.health_http_address.port
    liveness, readiness = container()["livenessProbe"]["httpGet"], container()["readinessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz" and route_status(liveness["path"]) == 200
    assert readiness["path"] == "/readyz" and route_status(readiness["path"]) in (200, 503)
    assert container_port(liveness["port"]) == container_port(readiness["port"]) == settings.health_http_address.port
    for service in services():
        assert service["spec"]["selector"].items() <= pod_labels().items()
        for port in service["spec"]["ports"]:
            container_port(port["targetPort"])
    # Peers reach the gRPC port only; the ops port stays inside the cluster.
    [peers] = [s for s in services() if s["spec"].get("type") == "LoadBalancer"]
    assert [container_port(p["targetPort"]) for p in peers["spec"]["ports"]] == [settings.grpc_server_address.port]
    [pods] = [s for s in services() if s["spec"].get("clusterIP") == "None"]
    assert workload()["spec"]["serviceName"] == pods["metadata"]["name"]


def test_the_service_monitor_scrapes_metrics_on_the_ops_port():
    monitor = one("ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    [target] = [s for s in services() if wanted <= s["metadata"]["labels"].items()]
    [endpoint] = monitor["spec"]["endpoints"]
    [port] = [p for p in target["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert container_port(port["targetPort"]) == pod_settings().health_http_address.port
    assert endpoint["path"] == "/metrics" and route_status(endpoint["path"]) == 200


def test_the_grace_period_outlasts_the_drain():
    spec = workload()["spec"]["template"]["spec"]
    pre_stop = container().get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    deadline = max(pod_settings().shutdown_deadline_sec, defaults().shutdown_deadline_sec)
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + deadline + GRACE_MARGIN_SEC


def test_pods_run_unprivileged_with_a_read_only_root_and_their_key_files_mounted():
    pod = workload()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid()
    assert pod["automountServiceAccountToken"] is False
    context = container()["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    resources = container()["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    # Every certificate and key file the settings name is in a read-only Secret volume (the root
    # filesystem is read-only and the image holds none).
    settings = pod_settings()
    assert settings.grpc_use_tls
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {PurePosixPath(m["mountPath"]): m for m in container()["volumeMounts"]}
    paths = path_settings(settings)
    assert {"GRPC_CERT_PATH", "GRPC_KEY_PATH", "PEER_TOKEN_ED25519_PUBLIC_KEY_PATH"} <= set(paths)
    for variable, path in paths.items():
        mount = mounts.get(path.parent)
        assert mount is not None and mount.get("readOnly") is True, variable
        secret = volumes[mount["name"]].get("secret")
        assert secret is not None, variable
        if "items" in secret:
            assert path.name in {item["path"] for item in secret["items"]}, variable
        elif variable in ("GRPC_CERT_PATH", "GRPC_KEY_PATH"):
            assert path.name in ("tls.crt", "tls.key"), f"{variable}: a kubernetes.io/tls Secret holds tls.crt, tls.key"


def test_the_disruption_budget_covers_the_edges_one_at_a_time():
    budget = one("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels().items()
    assert budget["spec"]["maxUnavailable"] == 1
    assert workload()["spec"]["selector"]["matchLabels"].items() <= pod_labels().items()


# ------------------------------------------------------------------------------------------- systemd


UNIT = SYSTEMD / "giggityflix-edge.service"


def unit() -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values (a key may repeat, as LoadCredential= does)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def service(key: str) -> str:
    *_, value = unit()["Service"][key]
    return value


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def unit_settings() -> Settings:
    return assert_settings(read_env_file(SYSTEMD / "edge.env"), "deploy/systemd/edge.env")


def test_the_unit_runs_the_console_script_and_restarts_on_failure_only():
    assert shlex.split(service("ExecStart")) == [f"/opt/giggityflix-edge/bin/{CONSOLE_SCRIPT}", "run"]
    assert service("Type") in ("exec", "simple")
    assert service("Restart") == "on-failure"
    assert "2" in service("RestartPreventExitStatus").split()  # a configuration error: restarting cannot help
    assert PurePosixPath(service("EnvironmentFile")).name == "edge.env"
    assert unit()["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_unit_stop_timeout_outlasts_the_drain_and_the_fd_limit_fits_max_peers():
    assert service("KillSignal") == "SIGTERM"
    deadline = max(unit_settings().shutdown_deadline_sec, defaults().shutdown_deadline_sec)
    assert seconds(service("TimeoutStopSec")) >= deadline + GRACE_MARGIN_SEC
    max_peers = max(unit_settings().max_peers, defaults().max_peers)
    assert int(service("LimitNOFILE")) >= max_peers + FD_HEADROOM


def test_the_unit_is_hardened_and_hands_the_edge_its_key_files():
    assert service("DynamicUser") == "yes" or service("User") not in ("", "root", "0")
    assert service("ProtectSystem") == "strict" and service("NoNewPrivileges") == "yes"
    # Key files reach the (dynamic) user as systemd credentials: every path setting of edge.env names
    # one the unit loads.
    directory = PurePosixPath("/run/credentials") / UNIT.name
    loaded = dict(entry.split(":", 1) for entry in unit()["Service"]["LoadCredential"])
    paths = path_settings(unit_settings())
    assert {"GRPC_CERT_PATH", "GRPC_KEY_PATH"} <= set(paths)
    for variable, path in paths.items():
        assert path.parent == directory and path.name in loaded, variable


# ---------------------------------------------------------------------------------------- dashboards
# deploy/grafana/giggityflix-edge.json: every metric a panel queries is one the edge's own registry
# exposes (with the suffix the exposition gives it: `_total`, `_bucket`, ...), every query is scoped by
# the `job` and `instance` variables, and every panel reads the data source chosen in the `datasource`
# variable.

DASHBOARD = json.loads((DEPLOY / "grafana" / "giggityflix-edge.json").read_text())
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][\w:]*")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
     "inf", "nan", "start", "end"}
)  # fmt: skip


def selectors(expr: str) -> list[tuple[str, str]]:
    """`(metric name, label matchers)` of every vector selector in a PromQL expression.

    Strings, ranges (`[5m]`) and grouping label lists (`by (le)`) are blanked out first, so their
    contents are not taken for names; an identifier followed by `(` is a function or an aggregation.
    """
    blank = lambda match: " " * len(match.group())  # noqa: E731
    masked = _STRING.sub(lambda match: '"' + " " * (len(match.group()) - 2) + '"', expr)
    masked = _RANGE.sub(blank, _GROUPING.sub(blank, masked))
    found = []
    for match in _IDENTIFIER.finditer(masked):
        name = match.group()
        before = masked[: match.start()]
        if name in _KEYWORDS or before.count("{") > before.count("}"):
            continue  # a keyword, or a label name inside a matcher
        after = match.end() + len(masked[match.end() :]) - len(masked[match.end() :].lstrip())
        if masked.startswith("(", after):
            continue
        matchers = ""
        if masked.startswith("{", after):
            matchers = expr[after + 1 : masked.index("}", after)]
        found.append((name, matchers))
    return found


def test_selectors_are_read_from_promql():
    expr = (
        'histogram_quantile(0.99, sum by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket'
        '{job=~"$job",grpc_type="unary", x="a{b} sum(c)"}[$__rate_interval] offset 1h))) '
        "/ on (instance) group_left (version) -process_max_fds > bool 1e3"
    )
    assert selectors(expr) == [
        ("grpc_server_handling_seconds_bucket", 'job=~"$job",grpc_type="unary", x="a{b} sum(c)"'),
        ("process_max_fds", ""),
    ]


def panels(container: dict[str, Any] = DASHBOARD) -> Iterator[dict[str, Any]]:
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)  # a collapsed row holds its panels


def queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels() for target in panel.get("targets", [])]


def exported_sample_names() -> set[str]:
    """Every sample name in the exposition of an edge whose every metric family has a sample: the
    runtime built in-process, with the values that appear only once used (labelled counters without
    pre-created labels, the event buffer bound by `serve`) exercised once each."""
    runtime = EdgeRuntime.create("dashboard")
    metrics = runtime.metrics
    metrics.observe_event_buffer(lambda: 0, 10)
    metrics.observe_event_bytes(lambda: 0, 1024)
    metrics.message_received("heartbeat")
    metrics.message_sent("heartbeat")
    metrics.commands_received.inc()
    metrics.command_delivered("file_remap", 0.01)
    metrics.commands_retried.labels(cause="peer_not_connected").inc()
    metrics.commands_dead_lettered.labels(reason="peer_not_connected").inc()
    metrics.produced([OutboundRecord("peer-lifecycle-events", "p", {})], 0.01)
    metrics.events_produce_retried.inc()
    metrics.event_backpressure.inc(0.5)
    call = metrics.grpc.call_started(CONNECT_PATH, 0.0)
    call.received()
    call.sent()
    call.handled(StatusCode.OK, 1.0)
    exposition = metrics.exposition().decode()
    return {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}


def test_every_metric_a_panel_queries_is_exported():
    exported = exported_sample_names()
    queried = {name for _, expr in queries() for name, _ in selectors(expr)}
    for variable in ("job", "instance"):
        # Grafana's label_values(selector, label): the selector is PromQL, the label is not.
        selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", _variable_query(variable))
        assert selector is not None, variable
        queried |= {name for name, _ in selectors(selector.group(1))}
    assert queried, "no queries found"
    if not sys.platform.startswith("linux"):
        queried = {name for name in queried if not name.startswith("process_")}  # read from /proc
    missing = sorted(queried - exported)
    assert not missing, f"queried but not exported by the edge: {missing}"


@pytest.mark.parametrize(("title", "expr"), queries())
def test_every_query_reads_the_chosen_job_and_instance(title, expr):
    found = selectors(expr)
    assert found, (title, expr)
    for name, matchers in found:
        assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, (title, name)


def test_the_panels_an_operator_looks_for_are_there():
    """Peers, sessions by reason, event backlog, produce and command latency, command outcomes,
    refusals, handshake failures, Kafka state and readiness, gRPC codes, the process."""
    by_metric: dict[str, set[str]] = {}
    for title, expr in queries():
        for name, _ in selectors(expr):
            by_metric.setdefault(name, set()).add(title)
    for metric in (
        "giggityflix_edge_peers_connected",
        "giggityflix_edge_sessions_started_total",
        "giggityflix_edge_sessions_ended_total",
        "giggityflix_edge_event_buffer_depth",
        "giggityflix_edge_event_backpressure_seconds_total",
        "giggityflix_edge_kafka_produce_latency_seconds_bucket",
        "giggityflix_edge_command_delivery_latency_seconds_bucket",
        "giggityflix_edge_commands_delivered_total",
        "giggityflix_edge_commands_retried_total",
        "giggityflix_edge_commands_dead_lettered_total",
        "giggityflix_edge_registrations_refused_total",
        "giggityflix_edge_grpc_tls_handshake_failures_total",
        "giggityflix_edge_kafka_connected",
        "giggityflix_edge_ready",
        "grpc_server_handled_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_cpu_seconds_total",
    ):
        assert metric in by_metric, metric
    latency = [expr for _, expr in queries() if "command_delivery_latency_seconds_bucket" in expr]
    assert any("histogram_quantile(0.5," in expr for expr in latency)
    assert any("histogram_quantile(0.99," in expr for expr in latency)
    assert any("by (reason)" in expr for _, expr in queries() if "sessions_ended_total" in expr)
    assert any("grpc_code" in expr for _, expr in queries() if "grpc_server_handled_total" in expr)


def _variable(name: str) -> dict[str, Any]:
    [variable] = [v for v in DASHBOARD["templating"]["list"] if v["name"] == name]
    return variable


def _variable_query(name: str) -> str:
    query = _variable(name)["query"]
    return query["query"] if isinstance(query, dict) else query


def test_data_source_job_and_instance_are_variables():
    assert _variable("datasource")["type"] == "datasource" and _variable("datasource")["query"] == "prometheus"
    assert _variable_query("job") == "label_values(giggityflix_edge_info, job)"
    assert _variable_query("instance") == 'label_values(giggityflix_edge_info{job=~"$job"}, instance)'
    for name in ("job", "instance"):
        variable = _variable(name)
        assert variable["datasource"] == DATASOURCE and variable["multi"] and variable["includeAll"], name
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"]), panel["title"]


def test_panels_fit_the_grid_and_have_unique_ids():
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids))
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
    assert DASHBOARD["uid"] == "giggityflix-edge" and "id" not in DASHBOARD  # importable anywhere
