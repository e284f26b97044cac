"""Helpers for the deployment tests (docker/): a small Dockerfile reader, the loopback version of
docker/nginx.conf, and a real nginx process run as the current user."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parent.parent.parent
DOCKER_DIR = REPO_DIR / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
NGINX_CONF = DOCKER_DIR / "nginx.conf"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
K8S_DIR = DOCKER_DIR / "k8s"


# ----------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, rest of line)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def read_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    """The stages of a Dockerfile, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: a continuation line runs off the end of the file"

    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"FROM {rest}: expected `FROM image [AS name]`"
            stages.append(Stage(name, words[0]))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def stage_chain(stages: list[Stage], index: int) -> list[Stage]:
    """The stage at ``index`` and the stages it is built FROM, oldest first."""
    by_name = {s.name: s for s in stages if s.name}
    chain = [stages[index]]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    return chain


def parse_env(rest: str) -> dict[str, str]:
    words = shlex.split(rest)
    if len(words) >= 2 and "=" not in words[0]:  # legacy `ENV KEY value`
        return {words[0]: " ".join(words[1:])}
    out = {}
    for word in words:
        key, sep, value = word.partition("=")
        assert sep, f"ENV {rest}: {word!r} is not KEY=VALUE"
        out[key] = value
    return out


def exec_form(rest: str, what: str) -> list[str]:
    try:
        value = json.loads(rest)
    except json.JSONDecodeError:
        pytest.fail(f"{what} is not in exec form (a JSON array): {rest}", pytrace=False)
    assert isinstance(value, list) and value and all(isinstance(v, str) for v in value), f"{what}: {rest}"
    return value


@dataclass
class Image:
    """What a stage's image runs with, its parent stages' settings included."""

    env: dict[str, str]
    user: str | None
    workdir: str | None
    cmd: list[str]
    stopsignal: str | None
    healthcheck_options: dict[str, str]
    healthcheck_cmd: list[str]
    copies: list[tuple[str, str]]  # (source in the build context, destination), no --from copies
    runs: list[str]
    expose: list[str]


def image_config(stages: list[Stage], index: int) -> Image:
    env: dict[str, str] = {}
    user = workdir = stopsignal = None
    cmd: list[str] = []
    hc_options: dict[str, str] = {}
    hc_cmd: list[str] = []
    copies: list[tuple[str, str]] = []
    runs: list[str] = []
    expose: list[str] = []
    for stage in stage_chain(stages, index):
        for keyword, rest in stage.instructions:
            if keyword == "ENV":
                env.update(parse_env(rest))
            elif keyword == "USER":
                user = rest
            elif keyword == "WORKDIR":
                workdir = rest
            elif keyword == "CMD":
                cmd = exec_form(rest, "CMD")
            elif keyword == "STOPSIGNAL":
                stopsignal = rest
            elif keyword == "EXPOSE":
                expose += rest.split()
            elif keyword == "HEALTHCHECK":
                m = re.fullmatch(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(.*)", rest)
                assert m, f"HEALTHCHECK {rest}: expected `[--option=value ...] CMD [...]`"
                hc_options = dict(o[2:].split("=", 1) for o in m.group(1).split())
                hc_cmd = exec_form(m.group(2), "HEALTHCHECK CMD")
            elif keyword == "RUN":
                runs.append(rest)
            elif keyword == "COPY":
                words = rest.split()
                if not any(w.startswith("--from") for w in words):
                    words = [w for w in words if not w.startswith("--")]
                    copies += [(src, words[-1]) for src in words[:-1]]
    return Image(env, user, workdir, cmd, stopsignal, hc_options, hc_cmd, copies, runs, expose)


def stage_index(stages: list[Stage], name: str | None) -> int:
    """The index of the named stage; None: the default target (the last stage)."""
    if name is None:
        return len(stages) - 1
    for i, stage in enumerate(stages):
        if stage.name == name:
            return i
    raise KeyError(f"no stage named {name!r} in {DOCKERFILE}")


def host_path(image: Image, container_path: str) -> Path:
    """The file in the repository that a COPY put at ``container_path``."""
    for src, dst in image.copies:
        if dst == container_path:
            return REPO_DIR / src
    raise KeyError(f"no COPY puts a file at {container_path}")


STEPS = "cppuvicorn-steps"  # docker/steps.sh, as the Dockerfile COPYs it
# What a RUN line may do besides calling the steps script: image housekeeping only.
HOUSEKEEPING = [re.compile(r"rm -rf /var/lib/apt/lists/\*"), re.compile(r"useradd( --?[\w-]+(=| )?\S*)* \w+")]


def run_commands(run_line: str) -> tuple[list[str], list[list[str]]]:
    """A RUN line's --mount options and its `&&`-separated commands (argv lists); fails on a
    command that is neither a steps-script call nor housekeeping, so no build step can live
    outside docker/steps.sh."""
    words = shlex.split(run_line)
    mounts = [w for w in words if w.startswith("--mount=")]
    commands = []
    for command in " ".join(w for w in words if not w.startswith("--mount=")).split(" && "):
        argv = shlex.split(command)
        if argv[0] == STEPS:
            commands.append(argv)
        else:
            assert any(h.fullmatch(command) for h in HOUSEKEEPING), f"RUN does more than {STEPS}: {command}"
    return mounts, commands


# ----------------------------------------------------------------------------- nginx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def nginx_binary() -> str:
    """nginx from Debian (scripts/bootstrap installs nginx-light): missing is a failure."""
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if path is None:
        pytest.fail("nginx is not installed: run scripts/bootstrap (it installs Debian's nginx-light)",
                    pytrace=False)
    return path


def _sub(text: str, pattern: str, repl, count: int, what: str) -> str:
    new, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
    assert n == count, f"docker/nginx.conf: expected {count} {what}, found {n}: the test's rewrite is out of date"
    return new


def loopback_nginx_conf(upstreams: list[tuple[str, int]], http_port: int, https_port: int, tmp: Path,
                        cert: Path, key: Path, source: Path = NGINX_CONF) -> str:
    """docker/nginx.conf with only what differs between a container and this machine rewritten:
    the upstream server (the compose service name) becomes one line per loopback instance with
    the same parameters (less `resolve`, meaningless for an IP literal and unknown to Debian's
    nginx 1.22), the listeners move to free loopback ports, and the files (pid, logs,
    certificate, temporary files) go under ``tmp``. Every rewrite must match, so a change to
    nginx.conf that the test does not understand fails here instead of being skipped."""
    text = source.read_text()

    def upstream(m: re.Match) -> str:
        params = " ".join(p for p in m.group("params").split() if p != "resolve")
        return "\n".join(f"{m.group('indent')}server {host}:{port} {params};" for host, port in upstreams)

    text = _sub(text, r"^(?P<indent>\s*)server app:8000(?P<params>[^;]*);", upstream, 1, "upstream `server app:8000`")
    text = _sub(text, r"^(\s*)listen 80;", rf"\1listen 127.0.0.1:{http_port};", 1, "`listen 80;`")
    text = _sub(text, r"^(\s*)listen 443 ssl;", rf"\1listen 127.0.0.1:{https_port} ssl;", 1, "`listen 443 ssl;`")
    text = _sub(text, r"^pid \S+;", f"pid {tmp}/nginx.pid;", 1, "`pid`")
    text = _sub(text, r"^error_log /dev/stderr (\w+);", rf"error_log {tmp}/error.log \1;", 1, "`error_log`")
    text = _sub(text, r"^(\s*)access_log /dev/stdout;", rf"\1access_log {tmp}/access.log;", 1, "`access_log`")
    text = _sub(text, r"^(\s*)ssl_certificate /etc/nginx/tls/cert.pem;", rf"\1ssl_certificate {cert};", 1,
                "`ssl_certificate`")
    text = _sub(text, r"^(\s*)ssl_certificate_key /etc/nginx/tls/key.pem;", rf"\1ssl_certificate_key {key};", 1,
                "`ssl_certificate_key`")
    # This machine's nginx was built with temp paths under /var/lib/nginx; keep them private.
    temp = "".join(f"    {name}_temp_path {tmp}/{name};\n"
                   for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    text = _sub(text, r"^http \{\n", lambda m: m.group(0) + temp, 1, "`http {`")
    if os.geteuid() == 0:  # nginx would switch its workers to `nobody`, who cannot read tmp
        text = "user root;\n" + text
    return text


class Nginx:
    """Real nginx in the foreground (`daemon off`), prefix and files in a temporary directory."""

    def __init__(self, tmp: Path, conf_text: str):
        self.tmp = tmp
        self.conf = tmp / "nginx.conf"
        self.conf.write_text(conf_text)
        self.proc: subprocess.Popen | None = None

    def command(self, *extra: str) -> list[str]:
        return [nginx_binary(), "-p", str(self.tmp), "-c", str(self.conf), "-e", str(self.tmp / "error.log"),
                *extra]

    def test_config(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)

    def start(self, ports: list[int], timeout: float = 10.0) -> "Nginx":
        check = self.test_config()
        assert check.returncode == 0, f"nginx -t failed:\n{check.stderr}\n{self.conf.read_text()}"
        self.proc = subprocess.Popen(self.command("-g", "daemon off;"), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        for port in ports:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(f"nginx exited with {self.proc.returncode}:\n{self.error_log()}", pytrace=False)
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        self.stop()
                        pytest.fail(f"nginx did not listen on {port} within {timeout}s:\n{self.error_log()}",
                                    pytrace=False)
                    time.sleep(0.05)
        return self

    def error_log(self) -> str:
        path = self.tmp / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, master exits
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


# ----------------------------------------------------------------------------- build context


def dockerignore_patterns(path: Path = REPO_DIR / ".dockerignore") -> list[re.Pattern]:
    """The exclusion patterns of .dockerignore as regexes over context-relative paths (Docker's
    syntax as far as this repository uses it: `*`, `?`, `**`; `!` exceptions are refused)."""
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), f".dockerignore: exceptions are not supported here: {line}"
        pattern = line.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        out.append(re.compile(regex))
    return out


def dockerignored(relpath: str, patterns: list[re.Pattern]) -> bool:
    """Whether the build context leaves ``relpath`` out: it or one of its parents matches."""
    parts = relpath.strip("/").split("/")
    return any(p.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1) for p in patterns)


def copy_build_context(dest: Path, src: Path = REPO_DIR) -> list[str]:
    """Copy what `docker build .` would send as the context (.dockerignore applied) to ``dest``;
    returns the relative paths copied."""
    patterns = dockerignore_patterns(src / ".dockerignore")
    copied = []
    for root, dirs, files in os.walk(src):
        rel_root = os.path.relpath(root, src)
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = [d for d in dirs if not dockerignored(rel_root + d, patterns)]
        for name in files:
            rel = rel_root + name
            if dockerignored(rel, patterns):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(root, name), target, follow_symlinks=False)
            copied.append(rel)
    return copied
