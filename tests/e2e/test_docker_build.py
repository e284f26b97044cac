"""docker/Dockerfile's build and run steps, on this machine (no Docker engine here).

Every RUN of the Dockerfile calls docker/steps.sh (COPYed as `cppuvicorn-steps`); this test reads
the RUN lines and runs those same calls, stage by stage, with the image's paths mapped into a
scratch directory and a fresh virtual environment standing in for each image's Python:

  build    build-deps (the -dev packages: present here, so only checked), the build context
           (.dockerignore applied) copied to /src, `wheels /src /wheels`: cppuvicorn's wheel
           built from scratch, plus its dependencies'
  runtime  runtime-deps, `install /wheels` into a second, empty venv, which also checks that
           every library the native parts load comes from the runtime packages
  example  example-deps, docker/example/main.py at /app/main.py

Then the image is "run": its CMD with its ENV (port moved to a free one) in /app, its HEALTHCHECK
command until healthy, once more with WEB_CONCURRENCY=2 (the supervisor from the wheel starts
two workers), and its STOPSIGNAL must stop it with exit code 0.

Slow (it compiles the wheel from scratch: 6.5 min on a loaded 2-core machine, most of it the
wheel): marked `docker_build`, which pyproject's addopts deselect; run it with
`pytest -m docker_build tests/e2e/test_docker_build.py` (or `scripts/test -m docker_build`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from deploy_support import (DOCKER_DIR, REPO_DIR, copy_build_context, free_port, host_path, image_config,
                            read_dockerfile, run_commands, stage_index)

pytestmark = [pytest.mark.docker_build, pytest.mark.timeout(1200)]

def run_steps(run_line: str, paths: dict[str, Path], env: dict, log: list[str]) -> None:
    """Run the steps-script calls of one RUN line, image paths mapped to host paths."""
    mounts, commands = run_commands(run_line)
    for mount in mounts:  # a bind mount of another stage's directory: that stage's host path
        opts = dict(o.split("=", 1) for o in mount[len("--mount="):].split(","))
        assert opts.get("type") == "bind" and opts["source"] == opts["target"], mount
    for argv in commands:
        command = " ".join(argv)
        argv = [str(DOCKER_DIR / "steps.sh")] + [str(paths.get(a, a)) for a in argv[1:]]
        started = time.monotonic()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1100)
        log.append(f"{command}: {time.monotonic() - started:.1f}s")
        print(f"\n  {log[-1]}", end="", flush=True)
        assert proc.returncode == 0, (f"`{command}` failed ({proc.returncode}):\n"
                                      f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


def venv(path: Path) -> dict:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{path / 'bin'}:{env['PATH']}"
    env["VIRTUAL_ENV"] = str(path)
    return env


def healthcheck(cmd: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=30)


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def start_image(image, env: dict, app_dir: Path, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(image.cmd, env=env, cwd=app_dir, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(image, hc: list[str], env: dict, app_dir: Path, proc: subprocess.Popen, log_path: Path) -> None:
    start_period = float(image.healthcheck_options.get("start-period", "10s").rstrip("s"))
    deadline = time.monotonic() + start_period + 20
    while True:
        result = healthcheck(hc, env, app_dir)
        if result.returncode == 0:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"never healthy (server exit {proc.poll()}): {result.stderr}\n{log_path.read_text()}",
                        pytrace=False)
        time.sleep(0.2)


def stop_image(image, proc: subprocess.Popen, graceful: float, log_path: Path) -> None:
    proc.send_signal(getattr(signal, image.stopsignal))
    try:
        code = proc.wait(timeout=graceful + 10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"{image.stopsignal} did not stop the server:\n{log_path.read_text()}", pytrace=False)
    assert code == 0, f"exit {code} after {image.stopsignal}:\n{log_path.read_text()}"


def test_dockerfile_steps_build_install_and_run(tmp_path):
    stages = read_dockerfile()
    build_i, runtime_i, example_i = (stage_index(stages, n) for n in ("build", "runtime", "example"))
    paths = {"/src": tmp_path / "src", "/wheels": tmp_path / "wheels", "/app": tmp_path / "app"}
    log: list[str] = []
    started = time.monotonic()

    # build stage: WORKDIR /src, COPY . . (the context), then its RUN lines in order.
    build = stages[build_i]
    assert "/src" in build.all("WORKDIR") and (".", ".") in image_config(stages, build_i).copies
    copied = copy_build_context(paths["/src"])
    assert "CMakeLists.txt" in copied and not any(p.endswith(".so") for p in copied)
    build_env = venv(tmp_path / "build-venv")
    for run in build.all("RUN"):
        run_steps(run, paths, build_env, log)
    wheels = sorted(p.name for p in paths["/wheels"].iterdir())
    assert any(re.match(r"cppuvicorn-.*\.whl$", w) for w in wheels), wheels

    # runtime and example stages: a fresh, empty venv is the image's Python.
    runtime_env = venv(tmp_path / "runtime-venv")
    for i in (runtime_i, example_i):
        for run in stages[i].all("RUN"):
            run_steps(run, paths, runtime_env, log)
    example = image_config(stages, example_i)
    paths["/app"].mkdir()
    for src, dst in example.copies:
        if dst.startswith("/app/"):
            (paths["/app"] / dst[len("/app/"):]).write_bytes((REPO_DIR / src).read_bytes())
    assert example.workdir == "/app" and (paths["/app"] / "main.py").exists()
    build_seconds = time.monotonic() - started

    # Run it: CMD and ENV as the image has them; the healthcheck script where COPY put it.
    port = free_port()
    env = {**runtime_env, **example.env, "UVICORN_HOST": "127.0.0.1", "UVICORN_PORT": str(port)}
    hc = [str(host_path(example, a)) if a.startswith("/usr/local/lib/") else a for a in example.healthcheck_cmd]
    graceful = float(example.env["UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"])
    assert healthcheck(hc, env, paths["/app"]).returncode == 1, "healthy with no server running"
    log_path = tmp_path / "server.log"

    proc = start_image(example, env, paths["/app"], log_path)
    try:
        wait_healthy(example, hc, env, paths["/app"], proc, log_path)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            doc = json.load(r)
        assert doc["pid"] == proc.pid and doc["scheme"] == "http"  # one worker: cppuvicorn itself serves
        stop_image(example, proc, graceful, log_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    # WEB_CONCURRENCY=2: the wheel's supervisor binary runs two workers.
    env["WEB_CONCURRENCY"] = "2"
    proc = start_image(example, env, paths["/app"], log_path)
    try:
        wait_healthy(example, hc, env, paths["/app"], proc, log_path)
        workers = children(proc.pid)
        assert len(workers) == 2, f"expected 2 workers under {proc.pid}, found {workers}\n{log_path.read_text()}"
        stop_image(example, proc, graceful, log_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    print(f"\ndocker build steps: {build_seconds:.0f}s to build and install, "
          f"{time.monotonic() - started:.0f}s in all\n  " + "\n  ".join(log))
