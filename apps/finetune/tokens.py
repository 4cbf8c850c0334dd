"""Token counts for dataset rows, without torch or transformers in the web process.

With the `tokenizers` library installed (it comes with transformers in the `ml` extra)
and the model's folder readable here (its registered folder, or the converted directory
`DATA_DIR/models/<base_model>` written by workers.runtime.local on first load), rows are
counted with the model's own tokenizer.
Otherwise the count is ceil(characters / 4), the usual estimate for English text with
BPE vocabularies; token_stats names the counter used, so a reader knows which it was.
"""

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

APPROXIMATE = "approx:ceil(chars/4)"


@dataclass(frozen=True)
class TokenCounter:
    name: str
    count: Callable[[str], int]


def _approximate(text: str) -> int:
    return math.ceil(len(text) / 4)


def token_counter(base_model: str) -> TokenCounter:
    """The model's tokenizer when available, else the documented approximation."""
    from workers.runtime.registry import load_dir_of

    path = (load_dir_of(base_model) if base_model else Path(settings.DATA_DIR)) / "tokenizer.json"
    if base_model and path.is_file() and importlib.util.find_spec("tokenizers") is not None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        return TokenCounter(
            f"tokenizers:{base_model}",
            lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids),
        )
    return TokenCounter(APPROXIMATE, _approximate)


def token_stats(counts: list[int]) -> dict[str, float | int]:
    """min / mean / p95 (nearest rank) / max tokens per row, and the total."""
    if not counts:
        return {"min": 0, "mean": 0, "p95": 0, "max": 0, "total": 0}
    ordered = sorted(counts)
    rank = max(math.ceil(0.95 * len(ordered)), 1)
    return {
        "min": ordered[0],
        "mean": round(sum(ordered) / len(ordered), 2),
        "p95": ordered[rank - 1],
        "max": ordered[-1],
        "total": sum(ordered),
    }
