"""Fetch approved prompts from Studio at run time — an example client app.

    STUDIO_URL=http://127.0.0.1:8000 STUDIO_TOKEN=stu_... \
        python examples/prompt_client.py demo summarise '{"tone": "formal", "text": "..."}'

`PromptClient` keeps each prompt it fetched with its ETag and revalidates with
`If-None-Match`: an unchanged prompt costs a 304 without a body. Between
revalidations it serves from memory for `max_age` seconds, and if Studio is
unreachable it keeps serving the last good copy (stale-if-error), so a
Studio outage never takes the calling app down. Rendering happens server-side
(`/render`) so the input schema is enforced in one place.
"""

import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class _Entry:
    etag: str
    body: dict[str, Any]
    checked_at: float


class PromptClient:
    def __init__(
        self, base_url: str, token: str, *, max_age: float = 30.0, timeout: float = 5.0
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        self._cache: dict[tuple[str, str, str], _Entry] = {}
        self._lock = threading.Lock()
        self.max_age = max_age

    def get(self, squad: str, prompt: str, *, label: str = "production") -> dict[str, Any]:
        """The prompt version the label points at (messages, schemas, model settings)."""
        key = (squad, prompt, label)
        with self._lock:
            entry = self._cache.get(key)
        if entry and time.monotonic() - entry.checked_at < self.max_age:
            return entry.body
        headers = {"If-None-Match": entry.etag} if entry else {}
        try:
            response = self._http.get(
                f"/squads/{squad}/prompts/{prompt}", params={"label": label}, headers=headers
            )
        except httpx.TransportError:
            if entry:  # stale-if-error
                return entry.body
            raise
        if response.status_code == 304 and entry:
            entry.checked_at = time.monotonic()
            return entry.body
        response.raise_for_status()
        entry = _Entry(response.headers["ETag"], response.json(), time.monotonic())
        with self._lock:
            self._cache[key] = entry
        return entry.body

    def render(
        self, squad: str, prompt: str, variables: dict[str, Any], *, label: str = "production"
    ) -> list[dict[str, str]]:
        """Messages rendered by Studio; a 422 lists every variable error with its JSON path."""
        response = self._http.post(
            f"/squads/{squad}/prompts/{prompt}/render",
            params={"label": label},
            json={"variables": variables},
        )
        if response.status_code == 422:
            errors = response.json().get("errors", [])
            raise ValueError("; ".join(f"{e['path']}: {e['message']}" for e in errors))
        response.raise_for_status()
        return response.json()["messages"]

    def close(self) -> None:
        self._http.close()


def main() -> None:
    import os

    squad, prompt, variables = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    client = PromptClient(os.environ["STUDIO_URL"], os.environ["STUDIO_TOKEN"])
    version = client.get(squad, prompt)
    print(f"{prompt} v{version['version']} ({version['content_hash'][:12]})")
    for message in client.render(squad, prompt, variables):
        print(f"[{message['role']}] {message['content']}")


if __name__ == "__main__":
    main()
