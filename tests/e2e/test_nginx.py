"""docker/compose.yaml's load balancer, for real: Debian's nginx with docker/nginx.conf (upstream,
listeners and files rewritten to loopback by deploy_support.loopback_nginx_conf) in front of two
cppuvicorn instances running the example app (docker/example/main.py) with compose.yaml's
command line.

The client connects from 127.0.0.2 and nginx from 127.0.0.1, so the address the app reports can
only be the client's if X-Forwarded-For was set by nginx and trusted by cppuvicorn. nginx missing
is a failure, not a skip: scripts/bootstrap installs it.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import threading
import time

import httpx
import pytest
import trustme
import yaml
from websockets.sync.client import connect as ws_connect

from conftest import ServerProcess, require_kind
from deploy_support import (COMPOSE_FILE, DOCKER_DIR, Nginx, free_port, image_config, loopback_nginx_conf,
                            nginx_binary, read_dockerfile, stage_index)

CLIENT_ADDR = "127.0.0.2"  # the client's source address; nginx reaches the instances from 127.0.0.1


def compose_app():
    """compose.yaml's app service: its arguments after `cppuvicorn main:app`, its environment
    (the image's ENV, then the service's), the drain and graceful timeouts."""
    service = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["app"]
    stages = read_dockerfile()
    image = image_config(stages, stage_index(stages, service["build"]["target"]))
    command = service["command"]
    assert command[:2] == image.cmd, (command, image.cmd)
    args = list(command[2:])
    # The compose backend network is where nginx connects from; here that is loopback.
    i = args.index("--forwarded-allow-ips")
    args[i + 1] = "127.0.0.1"
    env = {**image.env, **{k: str(v) for k, v in service.get("environment", {}).items()}}
    drain = float(args[args.index("--timeout-drain") + 1])
    graceful = float(args[args.index("--timeout-graceful-shutdown") + 1])
    return args, env, drain, graceful


class Deployment:
    def __init__(self):
        self.instances: list[ServerProcess] = []
        self.nginx: Nginx | None = None

    def start(self, tmp_path_factory) -> None:
        require_kind("cppuvicorn")
        nginx_binary()
        self.args, self.env, self.drain, self.graceful = compose_app()
        self.ports = [free_port(), free_port()]
        for port in self.ports:
            self.instances.append(self.start_instance(port))
        tmp = tmp_path_factory.mktemp("nginx")
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("localhost", "127.0.0.1")
        cert.private_key_pem.write_to_path(tmp / "key.pem")
        cert.cert_chain_pems[0].write_to_path(tmp / "cert.pem")
        self.http_port, self.https_port = free_port(), free_port()
        conf = loopback_nginx_conf([("127.0.0.1", p) for p in self.ports], self.http_port, self.https_port,
                                   tmp, tmp / "cert.pem", tmp / "key.pem")
        self.nginx = Nginx(tmp, conf).start([self.http_port, self.https_port])

    def start_instance(self, port: int) -> ServerProcess:
        args = self.args + ["--host", "127.0.0.1", "--port", str(port), "--app-dir", str(DOCKER_DIR / "example")]
        return ServerProcess("cppuvicorn", "main:app", args, env=self.env).start()

    def client_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def client(self, https: bool = False, **kwargs) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=CLIENT_ADDR, verify=self.client_ssl() if https else True)
        port = self.https_port if https else self.http_port
        return httpx.Client(base_url=f"{'https' if https else 'http'}://localhost:{port}", transport=transport,
                            timeout=10, **kwargs)

    def close(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for srv in self.instances:
            srv.kill()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    d = Deployment()
    try:
        d.start(tmp_path_factory)
        yield d
    finally:
        d.close()


def test_requests_reach_both_instances_with_client_address_and_scheme(deployment):
    pids = set()
    with deployment.client() as c:
        for _ in range(6):
            r = c.get("/")
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["client"] == [CLIENT_ADDR, 0]
            assert doc["scheme"] == "http"
            pids.add(doc["pid"])
        # nginx is the edge: what the client claims is replaced by its real address.
        r = c.get("/", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"})
        assert r.json()["client"] == [CLIENT_ADDR, 0]
        assert r.json()["scheme"] == "http"
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/nginx-health").text == "ok\n"
    assert pids == {srv.pid for srv in deployment.instances}, "round robin should reach both instances"

    with deployment.client(https=True) as c:
        doc = c.get("/").json()
        assert doc["client"] == [CLIENT_ADDR, 0]
        assert doc["scheme"] == "https"


def test_forwarded_headers_trusted_only_from_the_proxy(deployment):
    # Straight to an instance from 127.0.0.2, which --forwarded-allow-ips does not trust.
    transport = httpx.HTTPTransport(local_address=CLIENT_ADDR)
    with httpx.Client(transport=transport, timeout=10) as c:
        r = c.get(f"http://127.0.0.1:{deployment.ports[0]}/",
                  headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"})
    doc = r.json()
    assert doc["client"][0] == CLIENT_ADDR and doc["client"][1] != 0
    assert doc["scheme"] == "http"


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_websocket_through_nginx(deployment, secure):
    sock = socket.socket()
    sock.bind((CLIENT_ADDR, 0))
    port = deployment.https_port if secure else deployment.http_port
    sock.connect(("127.0.0.1", port))
    scheme = "wss" if secure else "ws"
    with ws_connect(f"{scheme}://localhost:{port}/ws", sock=sock, open_timeout=10,
                    ssl=deployment.client_ssl() if secure else None,
                    server_hostname="localhost" if secure else None, max_size=None) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["client"] == [CLIENT_ADDR, 0]
        assert hello["scheme"] == scheme
        assert hello["pid"] in {srv.pid for srv in deployment.instances}
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        big = bytes(range(256)) * 1024  # 256 KiB: several frames through nginx's buffers
        ws.send(big)
        assert ws.recv(timeout=10) == big
        # A WebSocket outlives nginx's request handling: still open after a pause.
        time.sleep(0.3)
        ws.send("still there")
        assert ws.recv(timeout=10) == "still there"


class Load:
    """A few client threads sending GET / through nginx as fast as they can."""

    def __init__(self, deployment, threads: int = 4):
        self.deployment = deployment
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.served: list[tuple[float, int]] = []  # (time, pid)
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        with self.deployment.client() as c:
            while not self.stop_event.is_set():
                try:
                    r = c.get("/")
                    ok = r.status_code == 200
                    outcome = r.json()["pid"] if ok else f"{r.status_code} {r.text[:200]!r}"
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    ok, outcome = False, repr(exc)
                with self.lock:
                    (self.served.append((time.monotonic(), outcome)) if ok else self.failures.append(outcome))

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=15)

    def pids_since(self, since: float) -> set[int]:
        with self.lock:
            return {pid for t, pid in self.served if t >= since}

    def wait_for_pid(self, pid: int, since: float, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pid in self.pids_since(since):
                return True
            time.sleep(0.05)
        return False


def test_rolling_restart_under_load_loses_no_request(deployment):
    """SIGTERM one instance while clients keep sending, restart it: cppuvicorn keeps serving for
    --timeout-drain, then stops listening and finishes what is in flight; nginx sends what the
    stopped instance refuses to the other one. The clients must not see a single failure."""
    old = deployment.instances[0]
    other = deployment.instances[1]
    with Load(deployment) as load:
        start = time.monotonic()
        assert load.wait_for_pid(old.pid, start, 5) and load.wait_for_pid(other.pid, start, 5), load.failures

        mark = old.mark()
        sigterm_at = time.monotonic()
        old.send_signal(signal.SIGTERM)
        old.wait_for_line(r"Draining: still serving for", timeout=5, after=mark)
        code = old.wait_exit(timeout=deployment.drain + deployment.graceful + 5)
        stopped_at = time.monotonic()
        assert code == 0, f"the drained instance exited with {code}:\n{old.log_text()}"
        drained_for = stopped_at - sigterm_at
        assert drained_for >= deployment.drain, drained_for
        # It kept answering during the drain, as a Kubernetes pod must while its endpoint goes.
        assert old.pid in load.pids_since(sigterm_at + 0.5), "no request served during the drain"

        new = deployment.start_instance(deployment.ports[0])
        deployment.instances[0] = new
        restarted_at = time.monotonic()
        # nginx skips the refused instance for fail_timeout (3 s in nginx.conf), then uses it again.
        assert load.wait_for_pid(new.pid, restarted_at, 10), "the restarted instance got no traffic"
        time.sleep(0.5)
    with load.lock:
        total, failures = len(load.served), list(load.failures)
    refused = deployment.nginx.error_log().count("Connection refused")
    print(f"\nrolling restart: {total} requests, {len(failures)} failed, drained for {drained_for:.2f}s, "
          f"nginx retried {refused} refused connection(s)")
    assert total > 100, f"too little load to mean anything: {total} requests"
    assert failures == [], f"{len(failures)} of {total + len(failures)} requests failed: {failures[:5]}"
    assert "[emerg]" not in deployment.nginx.error_log() and "[alert]" not in deployment.nginx.error_log()
