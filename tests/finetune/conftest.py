import pytest

from apps.finetune import services
from apps.finetune.models import Dataset
from tests.factories import UserFactory


@pytest.fixture(autouse=True)
def _data_dir(settings, tmp_path):
    """Each test writes its dataset files under its own directory (and finds no local
    model tokenizer there, so token counts use the documented approximation)."""
    settings.DATA_DIR = tmp_path
    return tmp_path


def make_dataset(squad, *, slug: str = "support-chat", format: str = "chat", **extra) -> Dataset:
    return services.dataset_create(
        actor=UserFactory(username="owner"),
        squad=squad,
        slug=slug,
        name=slug.replace("-", " ").title(),
        format=format,
        **extra,
    )


def chat(user: str = "Where is my parcel?", answer: str = "It left today.") -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
    }


def jsonl(*rows) -> bytes:
    import json

    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def upload(dataset, content: bytes, filename: str = "rows.jsonl", **kwargs):
    return services.dataset_version_upload(
        actor=UserFactory(username="owner"),
        dataset=dataset,
        content=content,
        filename=filename,
        commit_message=kwargs.pop("commit_message", "rows"),
        **kwargs,
    )
