"""Start and stop real Celery worker processes against the test database and the
configured broker (Redis in CI, kombu's filesystem transport on the defaults)."""

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.db import connection

from studio.celery import app as celery_app

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        user = db.get("USER") or ""
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        auth = f"{user}{password}@" if user else ""
        return f"postgres://{auth}{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"
    return f"sqlite:///{db['NAME']}"


def purge_queues() -> None:
    with celery_app.connection_for_write() as conn:
        for queue in ("default", "gpu"):
            # A queue that does not exist yet has nothing to purge.
            with contextlib.suppress(Exception):
                conn.default_channel.queue_purge(queue)


class WorkerProcess:
    """`fake_runtime`: the torch runtime replaced by tests/fakeworker.py's stand-ins."""

    def __init__(self, name: str = "worker", *, fake_runtime: bool = False, **env: str) -> None:
        self.name = name
        self.log_path = Path(settings.DATA_DIR) / f"test-{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fakeworker" if fake_runtime else "celery",
                "-A",
                "studio",
                "worker",
                "-Q",
                "default,gpu",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"{name}@%h",
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "studio.settings.base",
                "DATABASE_URL": database_url(),
                "STUDIO_DATA_DIR": str(settings.DATA_DIR),
                "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
                # The filesystem broker's folders as this process has them, even when a
                # test moved DATA_DIR after settings were loaded (tests/finetune does).
                "STUDIO_BROKER_DIR": str(settings.BROKER_DIR),
                # As in the test settings: no checkpoint file outliving a test's database
                # (a flushed chain restarts at sequence 1 and would look forked).
                "STUDIO_AUDIT_CHECKPOINT_DIR": settings.STUDIO_AUDIT_CHECKPOINT_DIR,
                **env,
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so kill() takes the children too
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.process.poll() is None

    def pause(self) -> None:
        """SIGSTOP the whole worker: alive, but silent (no heartbeats) until resume()."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def stop(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGCONT)  # a paused worker cannot stop
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        if not self._log.closed:
            self._log.close()
