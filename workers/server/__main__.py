"""`python -m workers.server`: run the local inference server (see workers/server/app.py).

    python -m workers.server [--host 127.0.0.1] [--port 8001] [--model smollm2-135m-instruct]
                             [--model another-registered-model ...] [--memory-budget-mb N]
                             [--adapters-dir DIR] [--max-rows N] [--supervise]

With --supervise (what `make run` uses) this process only supervises: it runs the server
as a child and starts it again when it dies (a crash, an out-of-memory kill, a stray
`kill -9`), saying how it died. More than MAX_RESTARTS deaths within RESTART_WINDOW_S
seconds end the supervisor with exit code 1 and a loud message: the same crash again and
again is a problem to fix, not to hide. SIGTERM/SIGINT stop the child, then the supervisor.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="a registered model (DATA_DIR/models/<id>) loaded at start-up; repeat to "
        "load several. Other registered models load on their first request",
    )
    parser.add_argument(
        "--memory-budget-mb",
        type=int,
        default=0,
        help="the weights' budget: the --models must fit it at start-up; a registered "
        "model loaded on first request evicts the least recently used idle ones to fit "
        "(0: no limit)",
    )
    parser.add_argument(
        "--adapters-dir", default=None, help="adapter_id root (default DATA_DIR/finetune)"
    )
    parser.add_argument("--max-rows", type=int, default=None, help="cap on rows per batch")
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16", "int8", "q4"),
        default=None,
        help="weights on a CPU (default: STUDIO_LOCAL_PRECISION, else fp32)",
    )
    parser.add_argument("--supervise", action="store_true", help="restart the server if it dies")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="local-server %(levelname)s %(message)s")
    if args.supervise:
        argv = [arg for arg in (sys.argv[1:] if argv is None else argv) if arg != "--supervise"]
        return supervise([sys.executable, "-m", "workers.server", *argv])
    return serve(args)


def serve(args: argparse.Namespace) -> int:
    from workers.runtime.local import DEFAULT_MODEL_ID, data_dir
    from workers.server.app import InferenceHTTPServer, ModelPool
    from workers.server.protocol import RequestError

    model_ids = args.model or [DEFAULT_MODEL_ID]
    if args.precision:  # read by load_directory, here and by adapters merged later
        os.environ["STUDIO_LOCAL_PRECISION"] = args.precision
    adapters_dir = Path(args.adapters_dir) if args.adapters_dir else data_dir() / "finetune"
    pool = ModelPool(
        adapters_dir,
        budget_bytes=args.memory_budget_mb * 2**20,
        default_model=model_ids[0],
        max_rows=args.max_rows,
    )
    for model_id in model_ids:
        try:
            pool.load(model_id, evict=False)  # the --models must fit together
        except RequestError as exc:
            logging.critical("cannot serve %s: %s", model_id, exc.message)
            pool.stop()
            return 2
    service = pool.services[model_ids[0]]
    model_id = ", ".join(model_ids)
    server = InferenceHTTPServer((args.host, args.port), pool)

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    health = service.health()
    logging.info(
        "serving %s on http://%s:%d (pid %d, %s %s, attention %s, up to %d rows, KV budget %d MiB)",
        model_id,
        args.host,
        args.port,
        health["pid"],
        health["device"],
        health["dtype"],
        health["attention"],
        health["max_rows"],
        health["kv_budget_mb"],
    )
    server.serve_forever()
    server.server_close()
    pool.stop()
    return 0


def supervise(command: list[str]) -> int:
    stopping = threading.Event()
    child: subprocess.Popen | None = None

    def stop(signum, frame):
        stopping.set()
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    deaths: list[float] = []
    while not stopping.is_set():
        child = subprocess.Popen(command)
        logging.info("supervisor: started the local inference server, pid %d", child.pid)
        code = child.wait()
        if stopping.is_set():
            break
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        now = time.monotonic()
        deaths = [at for at in deaths if now - at < RESTART_WINDOW_S] + [now]
        if len(deaths) > MAX_RESTARTS:
            logging.critical(
                "supervisor: the local inference server died %d times within %.0f s "
                "(last: pid %d %s); giving up",
                len(deaths),
                RESTART_WINDOW_S,
                child.pid,
                how,
            )
            return 1
        logging.error("supervisor: local inference server pid %d %s; restarting", child.pid, how)
        time.sleep(min(0.25 * 2 ** (len(deaths) - 1), 2.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
