"""The local OpenAI-compatible inference server (`python -m workers.server`). It imports
torch: only its own process loads it, never the web process."""
