"""A strict structural check of docker/: the Dockerfile, compose.yaml, nginx.conf and the
Kubernetes manifests must agree with each other and with cppuvicorn's command line.

Fast (no build, no containers): what runs is `nginx -t` on the loopback version of nginx.conf,
`apt-cache show` on steps.sh's package names and cppuvicorn's own option parser on every command
line. test_nginx.py runs nginx.conf for real; test_docker_build.py runs the Dockerfile's steps.
"""

from __future__ import annotations

import ipaddress
import math
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy_support import (COMPOSE_FILE, DOCKER_DIR, DOCKERFILE, K8S_DIR, NGINX_CONF, REPO_DIR, STEPS, Nginx,
                            dockerignore_patterns, dockerignored, free_port, image_config, loopback_nginx_conf,
                            read_dockerfile, run_commands, stage_index)

DRAIN_MARGIN = 5  # seconds between the end of the graceful timeout and SIGKILL, at least

COMPOSE_TOP_KEYS = {"name", "services", "networks", "volumes", "configs", "secrets", "include"}
COMPOSE_SERVICE_KEYS = {
    "build", "image", "command", "entrypoint", "environment", "env_file", "deploy", "ports", "expose",
    "volumes", "networks", "network_mode", "depends_on", "healthcheck", "restart", "stop_signal",
    "stop_grace_period", "user", "working_dir", "init", "labels", "logging", "ulimits", "read_only",
    "tmpfs", "cap_drop", "cap_add", "security_opt", "profiles", "container_name", "hostname",
}
K8S_CONTAINER_KEYS = {
    "name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "ports", "resources",
    "startupProbe", "readinessProbe", "livenessProbe", "lifecycle", "securityContext", "volumeMounts",
    "workingDir",
}


# ----------------------------------------------------------------------------- helpers


def cli_parse(argv: list[str]) -> dict:
    """Parse a command line with cppuvicorn's own option parser: unknown options, missing values
    and bad types fail here as they would when the container starts."""
    from cppuvicorn.main import main as cli

    assert argv[0] == "cppuvicorn", argv
    ctx = cli.make_context("cppuvicorn", list(argv[1:]))
    return ctx.params


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def seconds(duration) -> float:
    """A compose duration ("30s", "1m30s", "500ms") or a number of seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(a + b for a, b in parts) == duration, f"not a compose duration: {duration!r}"
    for value, unit in parts:
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def cpus(quantity) -> float:
    """A Kubernetes CPU quantity ("2", "1500m", 0.5) in cores."""
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@pytest.fixture(scope="module")
def stages():
    return read_dockerfile()


@pytest.fixture(scope="module")
def runtime(stages):
    return image_config(stages, stage_index(stages, "runtime"))


@pytest.fixture(scope="module")
def example(stages):
    return image_config(stages, stage_index(stages, "example"))


@pytest.fixture(scope="module")
def compose():
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def k8s():
    docs = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc and {"apiVersion", "kind", "metadata"} <= set(doc), f"{path.name}: {doc}"
            docs.setdefault(doc["kind"], []).append(doc)
    return docs


# ----------------------------------------------------------------------------- Dockerfile


def test_dockerfile_stages(stages):
    names = [s.name for s in stages]
    assert names[:3] == ["build", "runtime", "example"], names
    # The default target (the last stage) is the runtime image, unchanged.
    assert stages[-1].base == "runtime" and stages[-1].instructions == []
    build, runtime_stage = stages[0], stages[1]
    assert build.base == runtime_stage.base, "the wheel must be built for the runtime image's Python"
    assert stages[2].base == "runtime"
    # Only the build stage sees the sources; the runtime gets the wheels through a bind mount.
    assert ("COPY", ". .") in build.instructions
    for stage in stages[1:]:
        for keyword, rest in stage.instructions:
            if keyword == "COPY":
                assert rest.split()[0] != "." and "--from" not in rest, f"{stage.name}: COPY {rest}"


def test_every_run_line_is_a_steps_script_call(stages):
    steps_text = (DOCKER_DIR / "steps.sh").read_text()
    known = set(re.findall(r"^    ([a-z-]+)\)$", steps_text, re.MULTILINE))
    assert {"build-deps", "wheels", "runtime-deps", "install", "example-deps"} <= known, known
    allowed = {"build": {"build-deps", "wheels"}, "runtime": {"runtime-deps", "install", "check-libs"},
               "example": {"example-deps"}}
    for stage in stages:
        runs = stage.all("RUN")
        if runs:
            assert ("COPY", f"docker/steps.sh /usr/local/bin/{STEPS}") in stage.instructions \
                or stage.base == "runtime", f"{stage.name} runs {STEPS} without copying it"
        for run in runs:
            _, commands = run_commands(run)
            for argv in commands:
                assert argv[1] in allowed[stage.name], f"{stage.name}: {STEPS} {argv[1]}"


def test_steps_package_names_exist_in_debian():
    """Every package steps.sh names is a real Debian package: this machine is the same Debian
    release as the image (bookworm), and scripts/bootstrap installed all of them (the -dev ones
    directly, the runtime libraries as their dependencies). dpkg, not apt-cache: apt-cache
    rebuilds its cache on every call here, 15 s."""
    text = (DOCKER_DIR / "steps.sh").read_text()
    packages = []
    for var in ("BUILD_PACKAGES", "RUNTIME_PACKAGES", "BASE_PACKAGES"):
        m = re.search(rf'^{var}="([^"]+)"', text, re.MULTILINE)
        assert m, var
        packages += m.group(1).split()
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Status}\\n", *packages], capture_output=True,
                          text=True, timeout=60)
    installed = {line.split()[0] for line in proc.stdout.splitlines() if line.endswith("install ok installed")}
    assert installed == set(packages), f"not installed Debian packages: {set(packages) - installed}\n{proc.stderr}"
    assert "bookworm" in Path("/etc/os-release").read_text()
    assert re.search(r"^FROM \S+-bookworm AS build$", DOCKERFILE.read_text(), re.MULTILINE)


def test_runtime_image(runtime, stages):
    assert runtime.user not in (None, "root", "0"), runtime.user
    useradd = next(r for r in stages[1].all("RUN") if "useradd" in r)
    assert re.search(rf"\s{re.escape(runtime.user)}$", useradd), "USER is the user the image creates"
    assert runtime.workdir == "/app"
    assert runtime.cmd[0] == "cppuvicorn", runtime.cmd
    cli_parse(runtime.cmd)
    assert runtime.stopsignal == "SIGTERM"
    assert runtime.healthcheck_cmd[0] == "python"
    script = next(dst for dst in runtime.healthcheck_cmd if dst.endswith(".py"))
    assert (script and any(dst == script and (REPO_DIR / src).is_file() for src, dst in runtime.copies)), \
        "the HEALTHCHECK script must be COPYed into the image"
    for opt in ("interval", "timeout", "start-period", "retries"):
        assert opt in runtime.healthcheck_options, opt
    assert runtime.env["WEB_CONCURRENCY"] == "1"
    assert runtime.expose == [runtime.env["UVICORN_PORT"]]
    assert runtime.env["UVICORN_HOST"] == "0.0.0.0"
    # `docker stop` sends SIGKILL after 10 s unless told otherwise.
    assert float(runtime.env["UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"]) < 10


def test_web_concurrency_is_the_workers_default(monkeypatch):
    from cppuvicorn.config import Config
    from cppuvicorn.supervisor import supervisor_argv

    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    config = Config("main:app")
    assert config.workers == 3
    argv = supervisor_argv(config)
    assert argv[argv.index("--workers") + 1] == "3"
    assert Config("main:app", workers=2).workers == 2  # --workers wins
    monkeypatch.delenv("WEB_CONCURRENCY")
    assert Config("main:app").workers == 1


def test_dockerignore_leaves_out_what_git_ignores():
    patterns = dockerignore_patterns()
    ignored = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--directory"],
                             cwd=REPO_DIR, capture_output=True, text=True, check=True).stdout.split()
    leaked = [p for p in ignored if not dockerignored(p, patterns)]
    assert leaked == [], f"in the Docker build context but ignored by git: {leaked}"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_DIR, capture_output=True, text=True,
                             check=True).stdout.split()
    dropped = [p for p in tracked if dockerignored(p, patterns) and not p.startswith("benchmarks/results/")]
    assert dropped == [], f"tracked sources the Docker build would not see: {dropped}"
    for probe in ("build/rel/CMakeCache.txt", "cli/cppuvicorn/_core.cpython-311-x86_64-linux-gnu.so", ".git",
                  "cli/cppuvicorn/cppuvicorn-supervisor", ".venv/bin/python"):
        assert dockerignored(probe, patterns), probe


# ----------------------------------------------------------------------------- compose


def test_compose_structure(compose):
    assert set(compose) - COMPOSE_TOP_KEYS == set()
    services = compose["services"]
    assert {"app", "nginx"} <= set(services)
    for name, service in services.items():
        unknown = set(service) - COMPOSE_SERVICE_KEYS
        assert not unknown, f"compose service {name}: unknown keys {unknown}"
        for net in service.get("networks", []):
            assert net in compose.get("networks", {}), f"{name}: undefined network {net}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER_DIR / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose.get("volumes", {}), f"{name}: undefined volume {source}"


def test_compose_app(compose, example, stages):
    app = compose["services"]["app"]
    build = app["build"]
    assert (DOCKER_DIR / build["context"]).resolve() == REPO_DIR
    assert (REPO_DIR / build["dockerfile"]).resolve() == DOCKERFILE
    assert build["target"] == "example" and stage_index(stages, build["target"]) >= 0
    command = app["command"]
    assert command[:2] == example.cmd, "compose runs the image's command, with options added"
    params = cli_parse(command)
    assert params["proxy_headers"] is True
    # Trust X-Forwarded-* from the backend network, the one nginx reaches the app on.
    subnets = [ipaddress.ip_network(c["subnet"]) for c in compose["networks"]["backend"]["ipam"]["config"]]
    trusted = [ipaddress.ip_network(x.strip()) for x in params["forwarded_allow_ips"].split(",")]
    assert all(any(s.subnet_of(t) for t in trusted) for s in subnets), (trusted, subnets)
    assert app["networks"] == ["backend"] and "backend" in compose["services"]["nginx"]["networks"]
    assert "ports" not in app, "the replicas are reached through nginx only"
    assert app["deploy"]["replicas"] >= 2
    drain = params["timeout_drain"] or 0
    graceful = params["timeout_graceful_shutdown"]
    assert graceful is not None and drain > 0
    assert app["stop_signal"] == example.stopsignal
    assert seconds(app["stop_grace_period"]) >= drain + graceful + DRAIN_MARGIN
    assert app["healthcheck"]["test"] == ["CMD", *example.healthcheck_cmd]
    limit = app["deploy"]["resources"]["limits"]["cpus"]
    assert int(app["environment"]["WEB_CONCURRENCY"]) == math.ceil(float(limit))


def test_compose_nginx(compose):
    nginx = compose["services"]["nginx"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in nginx["volumes"]}
    assert (DOCKER_DIR / mounts["/etc/nginx/nginx.conf"]).resolve() == NGINX_CONF
    assert nginx["depends_on"]["app"]["condition"] == "service_healthy"
    assert nginx["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert "/nginx-health" in " ".join(nginx["healthcheck"]["test"])
    assert nginx["ports"]
    conf = NGINX_CONF.read_text()
    # The certificate nginx loads is in the volume the tls service fills.
    for path in re.findall(r"ssl_certificate(?:_key)? (\S+);", conf):
        directory = str(Path(path).parent)
        assert directory in mounts, f"{path}: {directory} is not mounted"
        tls = compose["services"]["tls"]
        volume = mounts[directory]
        assert any(v.startswith(volume + ":") for v in tls["volumes"])
        assert Path(path).name in " ".join(tls["entrypoint"])
    assert nginx["depends_on"]["tls"]["condition"] == "service_completed_successfully"


def test_nginx_conf_proxies_what_the_app_needs(compose, example):
    conf = NGINX_CONF.read_text()
    # The upstream is the compose app service on the port the image listens on.
    (host, port), = re.findall(r"^\s*server (\w+):(\d+)\b", conf, re.MULTILINE)
    assert host in compose["services"] and port == example.env["UVICORN_PORT"]
    assert option(compose["services"]["app"]["command"], "--port") in (None, port)
    for directive in ("proxy_pass http://app;", "proxy_http_version 1.1;",
                      "proxy_set_header X-Forwarded-For $remote_addr;",
                      "proxy_set_header X-Forwarded-Proto $scheme;",
                      "proxy_set_header Upgrade $http_upgrade;",
                      "proxy_set_header Connection $connection_upgrade;",
                      "listen 80;", "listen 443 ssl;"):
        assert directive in conf, directive
    next_upstream = re.search(r"proxy_next_upstream ([^;]+);", conf).group(1).split()
    assert "error" in next_upstream and "non_idempotent" not in next_upstream


def test_nginx_conf_passes_nginx_t_with_the_tls_service_certificate(compose, tmp_path):
    """The tls service's command (run here with /tls mapped to a temporary directory; the host's
    openssl stands in for the image's) makes a certificate that nginx.conf loads, and the
    loopback version of nginx.conf passes `nginx -t`."""
    tls = compose["services"]["tls"]
    assert tls["entrypoint"][:2] == ["sh", "-c"]
    script = tls["entrypoint"][2].replace("/tls/", f"{tmp_path}/")
    subprocess.run(["sh", "-c", script], check=True, capture_output=True, timeout=60)
    made = (tmp_path / "cert.pem").read_bytes()
    subprocess.run(["sh", "-c", script], check=True, capture_output=True, timeout=60)
    assert (tmp_path / "cert.pem").read_bytes() == made, "a restart must keep the certificate"
    assert (tmp_path / "key.pem").exists()
    conf = loopback_nginx_conf([("127.0.0.1", free_port()), ("127.0.0.1", free_port())], free_port(),
                               free_port(), tmp_path, tmp_path / "cert.pem", tmp_path / "key.pem")
    result = Nginx(tmp_path, conf).test_config()
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# ----------------------------------------------------------------------------- Kubernetes


def test_kustomization_lists_every_manifest(k8s):
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    manifests = sorted(p.name for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == manifests
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(k8s)


def deployment_parts(k8s):
    (deployment,) = k8s["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return deployment, pod, container


def test_k8s_deployment(k8s, example, stages):
    deployment, pod, container = deployment_parts(k8s)
    assert deployment["apiVersion"] == "apps/v1"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert set(container) - K8S_CONTAINER_KEYS == set(), set(container) - K8S_CONTAINER_KEYS

    # The example image, run with the image's command.
    assert container["image"].split(":")[0] == "cppuvicorn-example"
    argv = container.get("command", example.cmd) + container.get("args", [])
    assert argv[:2] == example.cmd
    params = cli_parse(argv)
    (port,) = container["ports"]
    assert port["containerPort"] == params["port"]
    assert params["host"] == "0.0.0.0"

    # Probes: the example image's health endpoint on the named port.
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == example.env["HEALTHCHECK_PATH"], probe
        assert get["port"] in named or get["port"] == params["port"], probe
        assert container[probe]["timeoutSeconds"] >= 1 and container[probe]["periodSeconds"] >= 1
    assert container["livenessProbe"]["periodSeconds"] * container["livenessProbe"]["failureThreshold"] >= 20, \
        "a liveness probe that kills a busy pod within seconds does more harm than good"

    # Resources, and WEB_CONCURRENCY matched to the CPU limit.
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind
    env = {e["name"]: e for e in container["env"]}
    web = env["WEB_CONCURRENCY"]
    if "valueFrom" in web:
        ref = web["valueFrom"]["resourceFieldRef"]
        assert ref["resource"] == "limits.cpu" and ref.get("containerName", container["name"]) == container["name"]
        assert cpus(ref.get("divisor", "1")) == 1  # whole cores, rounded up by Kubernetes
    else:
        assert int(web["value"]) == math.ceil(cpus(resources["limits"]["cpu"]))

    # Shutdown: SIGKILL only after the preStop hook, the drain and the graceful timeout.
    pre_stop = 0.0
    hook = container.get("lifecycle", {}).get("preStop")
    if hook:
        if "sleep" in hook:
            pre_stop = float(hook["sleep"]["seconds"])
        else:
            cmd = hook["exec"]["command"]
            assert cmd[0] == "sleep", f"an unknown preStop hook: {cmd}"
            pre_stop = float(cmd[1])
    drain = params["timeout_drain"] or 0
    graceful = params["timeout_graceful_shutdown"]
    assert graceful is not None and (drain > 0 or pre_stop > 0), "no time for the endpoint removal to spread"
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + graceful + DRAIN_MARGIN

    # Non-root, as the image's user.
    uid = int(re.search(r"--uid (\d+)", next(r for r in stages[1].all("RUN") if "useradd" in r)).group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid


def test_k8s_service_and_hpa(k8s):
    deployment, pod, container = deployment_parts(k8s)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (service,) = k8s["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        assert target in named or target in named.values(), target

    (hpa,) = k8s["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        deployment["apiVersion"], "Deployment", deployment["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Resource" and metric["resource"]["target"]["type"] == "Utilization":
            # Utilization is relative to the request: there must be one.
            assert metric["resource"]["name"] in container["resources"]["requests"]
