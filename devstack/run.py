"""`make run`: the whole local stack in the foreground — Redis, migrations, demo account, feed simulator, daphne.

Everything it starts is private to this run (a Redis on a unix socket unless REDIS_URL is set, the simulator on a
loopback port with a fresh upstream key) and is stopped on Ctrl-C. Re-running is safe: migrations and the demo
account are idempotent.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time

from devstack.open_files import raise_open_file_limit
from devstack.redis_server import RedisServer

GATEWAY_HOST = os.environ.get("GATEWAY_HOST", "127.0.0.1")
GATEWAY_PORT = int(os.environ.get("GATEWAY_PORT", "8000"))
SIMULATOR_PORT = int(os.environ.get("FEED_SIMULATOR_PORT", "8765"))
SIMULATOR_RATE = os.environ.get("FEED_SIMULATOR_RATE", "200")


def _manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "manage.py", *args], env=env, check=True)


def _print_banner(demo_keys: dict[str, str]) -> None:
    base = f"ws://localhost:{GATEWAY_PORT}/v1/ws"
    print(
        f"""
CuteMarkets gateway running on http://localhost:{GATEWAY_PORT}/  (admin: /admin/, Ctrl-C stops everything)

Demo user 'demo' is on the Expert plan for both products. Demo keys:
  options: {demo_keys['options']}
  stocks:  {demo_keys['stocks']}

Try it:
  npx wscat -c "{base}/options/" -H "Authorization: Bearer {demo_keys['options']}"
  > {{"action":"subscribe","params":"T.O:SPY260515C00500000,T.*"}}
""",
        flush=True,
    )


def main() -> int:
    raise_open_file_limit()  # for daphne, which inherits it
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "cutemarkets.settings")
    with contextlib.ExitStack() as stack:
        if not env.get("REDIS_URL"):
            redis_server = stack.enter_context(RedisServer())
            env["REDIS_URL"] = redis_server.url
        os.environ.update(env)
        _manage("migrate", "--no-input", "-v", "0", env=env)

        import django

        django.setup()
        from devstack.demo import ensure_demo_account

        demo_keys = ensure_demo_account()

        processes: list[subprocess.Popen[bytes]] = []
        if not env.get("UPSTREAM_OPTIONS_URL") and not env.get("UPSTREAM_STOCKS_URL"):
            upstream_key = secrets.token_urlsafe(24)
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "streaming.simulator", "--host", "127.0.0.1",
                     "--port", str(SIMULATOR_PORT), "--api-key", upstream_key, "--rate", SIMULATOR_RATE],
                    env=env,
                )
            )
            env.update(
                UPSTREAM_OPTIONS_URL=f"ws://127.0.0.1:{SIMULATOR_PORT}/options",
                UPSTREAM_STOCKS_URL=f"ws://127.0.0.1:{SIMULATOR_PORT}/stocks",
                UPSTREAM_API_KEY=upstream_key,
            )
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", GATEWAY_HOST, "-p", str(GATEWAY_PORT),
                 "--websocket_timeout", "-1", "cutemarkets.asgi:application"],
                env=env,
            )
        )
        _print_banner(demo_keys)
        try:
            while all(process.poll() is None for process in processes):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
        failed = [process for process in processes if process.returncode not in (0, -signal.SIGTERM, None)]
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
