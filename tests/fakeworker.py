"""A Celery worker whose torch runtime is replaced by the stand-ins the service tests use
(tests/finetune/fake_training.py; local generation answers "base"/"adapter" text), so
worker-process tests of fine-tunes and comparisons run in seconds without a model.

    python -m tests.fakeworker <celery worker arguments>

STUDIO_FAKE_STEP_SECONDS (test-only): how long each training step, and each local
generation call, takes.
"""

import os
import sys
import time


def install() -> None:
    from tests.finetune import fake_training
    from workers import runtime
    from workers.runtime import GenerationResult, backends

    pause = float(os.environ.get("STUDIO_FAKE_STEP_SECONDS", "0.2"))
    script = fake_training.Script(on_step=lambda step: time.sleep(pause))
    module = fake_training.make_module(script)
    sys.modules["workers.runtime.training"] = module
    runtime.training = module

    def run_conversations(spec, conversations, params, *, batch_size=8, on_progress=None):
        time.sleep(pause * len(conversations))
        who = "adapter" if spec.adapter_dir else "base"
        return [GenerationResult(text=f"{who} answer", input_tokens=3, output_tokens=2)] * len(
            conversations
        )

    backends.run_conversations = run_conversations


if __name__ == "__main__":
    install()
    from celery.__main__ import main

    sys.argv = ["celery", *sys.argv[1:]]
    sys.exit(main())
