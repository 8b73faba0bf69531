"""``jobqueue dev``: the whole system in one command.

Starts embedded Redis and MongoDB when no URL is configured (data under ``.jobqueue/``,
with a webhook signing secret made there if none is set), then the api, a worker, the
scheduler and the notifier as child processes; prints the URLs; on Ctrl-C or SIGTERM
stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.dev.embedded import EmbeddedServer, child_env, start_mongodb, start_redis
from shared.settings import Settings
from shared.tenants import new_secret

SERVICES = ("api", "worker", "scheduler", "notifier")


SECRET_FILE_MODE = 0o600


def dev_webhook_secret(data_dir: Path) -> str:
    """The dev stack's signing secret, made once and kept under the data dir.

    The file is readable by its owner only: created with mode 0600 (never written with
    looser permissions first), and tightened to 0600 if it already exists looser."""
    path = data_dir / "webhook_secret"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    except FileExistsError:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, SECRET_FILE_MODE)
    else:
        with os.fdopen(fd, "w") as out:
            out.write(new_secret())
    return path.read_text().strip()


def _service_command(name: str, host: str, port: int) -> list[str]:
    args = [sys.executable, "-m", f"services.{name}"]
    if name == "api":
        args += ["--host", host, "--port", str(port)]
    return args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jobqueue dev")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir", type=Path, default=Path(".jobqueue"))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)

    settings = Settings()
    servers: list[EmbeddedServer] = []
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        env: dict[str, str] = {}
        if not settings.redis_url:
            servers.append(start_redis(args.data_dir / "redis"))
            env["JOBQUEUE_REDIS_URL"] = servers[-1].url
        if not settings.mongodb_url:
            servers.append(start_mongodb(args.data_dir / "mongodb"))
            env["JOBQUEUE_MONGODB_URL"] = servers[-1].url
        if not settings.webhook_secret:
            env["JOBQUEUE_WEBHOOK_SECRET"] = dev_webhook_secret(args.data_dir)
        for name in SERVICES:
            for _ in range(args.workers if name == "worker" else 1):
                children.append(subprocess.Popen(
                    _service_command(name, args.host, args.port),
                    env=child_env(**env), stdin=subprocess.DEVNULL))
        for server in servers:
            print(f"embedded {server.name}: {server.url}", flush=True)
        if "JOBQUEUE_WEBHOOK_SECRET" in env:
            print(f"webhook signing secret: {env['JOBQUEUE_WEBHOOK_SECRET']}", flush=True)
        base = f"http://{args.host}:{args.port}"
        print(f"jobqueue is up: API {base}  docs {base}/docs  logs {settings.log_dir}/  "
              "(Ctrl-C stops everything)", flush=True)
        while not stopping:
            if any(child.poll() is not None for child in children):
                print("a service exited; stopping the rest", file=sys.stderr, flush=True)
                break
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + settings.shutdown_grace_seconds + 5
        for child in children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for server in reversed(servers):
            server.stop()
    exit_codes = [c.returncode for c in children]
    sys.exit(0 if stopping or not exit_codes else 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
