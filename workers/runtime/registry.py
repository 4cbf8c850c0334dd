"""Registered base models on the workers: what a model is (read from its files), its
sha256 manifest, and the check at load time that its files have not changed.

A registered model named N lives, for the runtime, in `DATA_DIR/models/N/`: a record
`studio_model.json` written at registration (where the files are, the manifest, its
hash) and, for a GGUF source, the converted safetensors directory. The apps pass the
manifest hash they expect (the registry's current version); `resolve()` refuses a
record of another registration and files whose sha256 differs from the manifest
(`ModelFilesChanged`), so a model whose files changed on disk does not load until it is
registered again.

Reading a folder (Hugging Face layout) needs no torch: config.json, the tokenizer
files, the safetensors headers (tensor shapes and dtypes give the parameter count and
catch a truncated file). Only a GGUF source is loaded with transformers to convert it
once, as for the default model.

File hashes are memoised per process by (path, size, mtime, inode): a load after the
first costs a stat per file. A change that keeps size, mtime and inode is not seen until
the process restarts (registration always hashes afresh).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workers.runtime import BackendError

RECORD = "studio_model.json"
DEFAULT_MODEL_ID = "smollm2-135m-instruct"
WEIGHT_SUFFIXES = (".safetensors",)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
CONFIG_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# bytes per parameter of each safetensors / config dtype
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
CONFIG_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


class RegistrationRefused(Exception):
    """The model cannot be served; `reason` is one of REASONS, the message says why."""

    REASONS = (
        "missing_files",
        "corrupt",
        "unknown_architecture",
        "no_chat_template",
        "not_found",
    )

    def __init__(self, message: str, *, reason: str) -> None:
        assert reason in self.REASONS, reason
        super().__init__(message)
        self.reason = reason


class ModelFilesChanged(BackendError):
    """A registered model's files differ from its manifest: it must be registered again."""

    def __init__(self, model: str, manifest_sha256: str, problems: list[str]) -> None:
        super().__init__(
            f"base model {model!r} refused to load: {'; '.join(problems)}. Its files changed "
            "since registration; a staff member must register it again."
        )
        self.model = model
        self.manifest_sha256 = manifest_sha256
        self.problems = problems


@dataclass
class Facts:
    """What registration learns about a model."""

    architecture: str
    model_type: str
    parameters: int
    context_length: int
    dtype: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    chat_template: str  # "" when the tokenizer's own is used
    chat_template_source: str  # "tokenizer" or "given"
    manifest: dict[str, str]
    manifest_sha256: str
    load_path: str  # the directory transformers loads


@dataclass
class Record:
    """`DATA_DIR/models/<name>/studio_model.json`: where a registered model's files are
    and what they hashed to."""

    name: str
    version: int
    source_kind: str
    load_path: str
    files: dict[str, str]  # manifest name -> absolute path hashed at load
    manifest: dict[str, str]
    manifest_sha256: str
    chat_template: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --- hashing --------------------------------------------------------------------------------

_hashes: dict[tuple[str, int, int, int], str] = {}
_hash_lock = threading.Lock()


def file_sha256(path: Path, *, fresh: bool = False) -> str:
    """sha256 of a file, memoised by (path, size, mtime, inode) unless `fresh`."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if not fresh:
        with _hash_lock:
            if key in _hashes:
                return _hashes[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _hash_lock:
        _hashes[key] = value
    return value


def manifest_sha256(manifest: dict[str, str]) -> str:
    """One hash for a manifest: sha256 of its sorted `<name> <sha256>` lines."""
    lines = "".join(f"{name} {manifest[name]}\n" for name in sorted(manifest))
    return hashlib.sha256(lines.encode()).hexdigest()


# --- reading a folder ---------------------------------------------------------------------------


def _architectures() -> dict[str, Any]:
    from workers.runtime.training import ARCHITECTURES

    return ARCHITECTURES


def model_files(directory: Path) -> dict[str, Path]:
    """The weight, config and tokenizer files of a Hugging Face folder, by name."""
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        if path.suffix in WEIGHT_SUFFIXES or path.name in TOKENIZER_FILES + CONFIG_FILES:
            found[path.name] = path
    return found


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size.
    RegistrationRefused(corrupt) for a file that is not safetensors or is truncated."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if length <= 0 or length > min(size - 8, 100 * 1024 * 1024):
                raise ValueError(f"header length {length} does not fit a {size}-byte file")
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as exc:
        raise RegistrationRefused(
            f"{path.name} is not a readable safetensors file ({exc})", reason="corrupt"
        ) from None
    end = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(meta["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise RegistrationRefused(
                f"{path.name}: tensor {name!r} has no data offsets", reason="corrupt"
            ) from None
    if 8 + length + end != size:
        raise RegistrationRefused(
            f"{path.name} is {size} bytes but its header describes {8 + length + end}: "
            "the file is truncated or damaged",
            reason="corrupt",
        )
    return header


def inspect_folder(
    directory: Path,
    *,
    chat_template: str = "",
    expected: dict[str, str] | None = None,
) -> Facts:
    """Read a Hugging Face layout folder without torch. RegistrationRefused with the
    reason for what cannot be served; `expected` maps file names to the sha256 the
    caller knows (a vendor's checksums, the hub cache's blob names)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RegistrationRefused(f"{directory} is not a folder", reason="not_found")
    files = model_files(directory)
    if "config.json" not in files:
        raise RegistrationRefused(
            f"{directory} has no config.json (Hugging Face layout expected)",
            reason="missing_files",
        )
    try:
        config = json.loads(files["config.json"].read_text())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise RegistrationRefused(f"config.json cannot be read: {exc}", reason="corrupt") from None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    model_type = str(config.get("model_type") or "")
    known = _architectures()
    if model_type not in known:
        raise RegistrationRefused(
            f"unknown architecture {model_type or '(no model_type)'!r}: Studio trains and "
            f"serves {', '.join(sorted(known))}",
            reason="unknown_architecture",
        )
    architectures = config.get("architectures") or []
    architecture = str(architectures[0]) if architectures else ""
    if not architecture.endswith("ForCausalLM"):
        raise RegistrationRefused(
            f"architecture {architecture or '(none)'!r} is not a causal language model "
            "(…ForCausalLM)",
            reason="unknown_architecture",
        )
    weights = [path for name, path in files.items() if name.endswith(".safetensors")]
    if not weights:
        raise RegistrationRefused(
            f"{directory} has no safetensors weights (pickled .bin files are not loaded)",
            reason="missing_files",
        )
    if "model.safetensors.index.json" in files:
        try:
            index = json.loads(files["model.safetensors.index.json"].read_text())
            shards = set(index["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise RegistrationRefused(
                f"model.safetensors.index.json cannot be read: {exc}", reason="corrupt"
            ) from None
        missing = sorted(shard for shard in shards if shard not in files)
        if missing:
            raise RegistrationRefused(
                f"weight shard(s) missing: {', '.join(missing)}", reason="missing_files"
            )
    if "tokenizer.json" not in files and "tokenizer.model" not in files:
        raise RegistrationRefused(
            f"{directory} has no tokenizer (tokenizer.json or tokenizer.model)",
            reason="missing_files",
        )
    if "tokenizer_config.json" not in files:
        raise RegistrationRefused(
            f"{directory} has no tokenizer_config.json", reason="missing_files"
        )
    manifest = {name: file_sha256(path, fresh=True) for name, path in files.items()}
    for name, want in (expected or {}).items():
        if name not in manifest:
            raise RegistrationRefused(
                f"{name} is listed with a checksum but is not in {directory}",
                reason="missing_files",
            )
        if manifest[name] != want.lower():
            raise RegistrationRefused(
                f"{name} is corrupt: its sha256 is {manifest[name]}, expected {want.lower()}",
                reason="corrupt",
            )
    parameters, tensor_dtypes = 0, {}
    for path in weights:
        for name, meta in safetensors_header(path).items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in meta.get("shape", []):
                count *= int(dim)
            parameters += count
            tensor_dtypes[meta.get("dtype")] = tensor_dtypes.get(meta.get("dtype"), 0) + count
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "")
    if not dtype and tensor_dtypes:
        dtype = CONFIG_DTYPES.get(max(tensor_dtypes, key=tensor_dtypes.get), "float32")
    own_template = _tokenizer_chat_template(files)
    if chat_template:
        source = "given"
    elif own_template:
        source = "tokenizer"
    else:
        raise RegistrationRefused(
            "the tokenizer has no chat template; give one at registration",
            reason="no_chat_template",
        )

    def pick(*names: str) -> int:
        for name in names:
            for where in (config, text):
                value = where.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
        return 0

    return Facts(
        architecture=architecture,
        model_type=model_type,
        parameters=parameters,
        context_length=pick("max_position_embeddings", "n_positions", "max_sequence_length"),
        dtype=dtype or "float32",
        hidden_size=pick("hidden_size", "n_embd", "d_model"),
        num_layers=pick("num_hidden_layers", "n_layer", "num_layers"),
        vocab_size=pick("vocab_size"),
        chat_template=chat_template,
        chat_template_source=source,
        manifest=manifest,
        manifest_sha256=manifest_sha256(manifest),
        load_path=str(directory.resolve()),
    )


def _tokenizer_chat_template(files: dict[str, Path]) -> str:
    if "chat_template.jinja" in files:
        return files["chat_template.jinja"].read_text()
    for name in ("chat_template.json", "tokenizer_config.json"):
        if name in files:
            try:
                value = json.loads(files[name].read_text()).get("chat_template")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(value, list):  # named templates: [{"name", "template"}]
                value = next((t.get("template") for t in value if isinstance(t, dict)), None)
            if isinstance(value, str) and value.strip():
                return value
    return ""


# --- the three sources --------------------------------------------------------------------------


def models_root() -> Path:
    """STUDIO_MODELS_DIR: the models store every worker mounts."""
    return _setting("STUDIO_MODELS_DIR", str(_data_dir() / "models-store"))


def _setting(name: str, default: str) -> Path:
    try:
        from django.conf import settings

        value = getattr(settings, name)
    except Exception:  # a bare worker process
        value = os.environ.get(name, default)
    return Path(value or default).resolve()


def _data_dir() -> Path:
    from workers.runtime.local import data_dir

    return data_dir()


def runtime_dir(name: str) -> Path:
    return _data_dir() / "models" / name


def source_path(source_kind: str, source: str) -> Path:
    """Where a folder or GGUF source is: a path relative to STUDIO_MODELS_DIR that
    stays inside it. RegistrationRefused(not_found) otherwise."""
    root = models_root()
    path = (root / source).resolve()
    if not path.is_relative_to(root):
        raise RegistrationRefused(f"{source!r} is outside the models store", reason="not_found")
    if not path.exists():
        raise RegistrationRefused(
            f"{source!r} does not exist in the models store ({root})", reason="not_found"
        )
    return path


def hub_snapshot(repo_id: str, revision: str = "") -> tuple[Path, dict[str, str]]:
    """The local Hugging Face cache's snapshot of `repo_id` (the hub is never asked), and
    the sha256 of its LFS files (their blob names)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, revision=revision or None, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError) as exc:
        raise RegistrationRefused(
            f"{repo_id} is not in the local Hugging Face cache ({exc})", reason="not_found"
        ) from None
    expected = {}
    for file in path.iterdir():
        if file.is_symlink():
            blob = Path(os.readlink(file)).name
            if re.fullmatch(r"[0-9a-f]{64}", blob):
                expected[file.name] = blob
    return path, expected


def register(
    *,
    name: str,
    version: int,
    source_kind: str,
    source: str,
    revision: str = "",
    chat_template: str = "",
    expected: dict[str, str] | None = None,
) -> Facts:
    """Read, check and hash a model, and write its runtime record (and, for GGUF, the
    converted folder) under DATA_DIR/models/<name>. RegistrationRefused for what cannot
    be served."""
    extra: dict[str, Any] = {}
    if source_kind == "folder":
        facts = inspect_folder(
            source_path("folder", source), chat_template=chat_template, expected=expected
        )
        files = {n: str(Path(facts.load_path) / n) for n in facts.manifest}
    elif source_kind == "hub":
        if not HUB_ID.match(source):
            raise RegistrationRefused(f"{source!r} is not a hub id", reason="not_found")
        path, hub_expected = hub_snapshot(source, revision)
        facts = inspect_folder(
            path, chat_template=chat_template, expected={**hub_expected, **(expected or {})}
        )
        files = {n: str(path / n) for n in facts.manifest}
    elif source_kind in ("gguf", "package"):
        gguf = package_gguf() if source_kind == "package" else source_path("gguf", source)
        if not gguf.is_file() or gguf.suffix != ".gguf":
            raise RegistrationRefused(f"{source!r} is not a .gguf file", reason="not_found")
        digest = file_sha256(gguf, fresh=True)
        if expected and expected.get(gguf.name, digest).lower() != digest:
            raise RegistrationRefused(
                f"{gguf.name} is corrupt: its sha256 is {digest}, expected "
                f"{expected[gguf.name].lower()}",
                reason="corrupt",
            )
        converted = convert_gguf(gguf, runtime_dir(name), digest)
        facts = inspect_folder(converted, chat_template=chat_template)
        # The GGUF file is what was registered; the converted copy is checked too.
        extra["converted_manifest"] = facts.manifest
        facts.manifest = {gguf.name: digest}
        facts.manifest_sha256 = manifest_sha256(facts.manifest)
        files = {gguf.name: str(gguf)}
    else:
        raise RegistrationRefused(f"unknown source kind {source_kind!r}", reason="not_found")
    write_record(
        Record(
            name=name,
            version=version,
            source_kind=source_kind,
            load_path=facts.load_path,
            files=files,
            manifest=facts.manifest,
            manifest_sha256=facts.manifest_sha256,
            chat_template=chat_template,
            extra=extra,
        )
    )
    return facts


def package_gguf() -> Path:
    from workers.runtime.local import gguf_path

    try:
        return gguf_path()
    except BackendError as exc:
        raise RegistrationRefused(str(exc), reason="not_found") from None


def convert_gguf(gguf: Path, target: Path, digest: str) -> Path:
    """The safetensors folder converted from `gguf` (once per file hash)."""
    marker = target / ".converted-from"
    if (target / "config.json").exists() and marker.exists() and marker.read_text() == digest:
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.runtime.local import save_converted

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    staging = target.parent / f".{target.name}-converted"
    shutil.rmtree(staging, ignore_errors=True)
    save_converted(model, tokenizer, staging)
    (staging / ".converted-from").write_text(digest)
    record = target / RECORD
    if record.exists():
        shutil.copy(record, staging / RECORD)
    old = target.parent / f".{target.name}-old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def write_record(record: Record) -> None:
    directory = runtime_dir(record.name)
    directory.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".record-", dir=directory)
    with os.fdopen(handle, "w") as out:
        json.dump(asdict(record), out, indent=2)
    os.replace(tmp, directory / RECORD)


def read_record(name: str) -> Record | None:
    path = runtime_dir(name) / RECORD
    if not path.is_file():
        return None
    return Record(**json.loads(path.read_text()))


# --- at load time ------------------------------------------------------------------------------


def resolve(name: str, expected_sha256: str = "") -> Path:
    """The directory to load model `name` from, after checking its files against the
    manifest of its registration (and that registration's hash against the one the
    apps expect, when given). ModelFilesChanged when a file changed or went missing;
    BackendError when this worker has no such model."""
    record = read_record(name)
    if record is None:
        if not expected_sha256:
            # nothing to compare with (the CLI server, runtime tests): the folder as is
            return runtime_dir(name)
        if name != DEFAULT_MODEL_ID:
            raise BackendError(f"base model {name!r} is not registered on this worker")
        record = _default_record()
    if expected_sha256 and record.manifest_sha256 != expected_sha256:
        raise BackendError(
            f"base model {name!r}: this worker holds registration "
            f"{record.manifest_sha256[:12]}, the registry's is {expected_sha256[:12]} (is "
            "DATA_DIR/models shared by the workers? else register the model again)"
        )
    problems = []
    for manifest_name, path in record.files.items():
        want = record.manifest.get(manifest_name)
        try:
            got = file_sha256(Path(path))
        except OSError:
            problems.append(f"{manifest_name} is missing")
            continue
        if got != want:
            problems.append(f"{manifest_name} has sha256 {got[:12]}…, registered {want[:12]}…")
    converted = record.extra.get("converted_manifest")
    if converted:
        for manifest_name, want in converted.items():
            path = Path(record.load_path) / manifest_name
            try:
                if file_sha256(path) != want:
                    problems.append(f"the converted {manifest_name} changed")
            except OSError:
                problems.append(f"the converted {manifest_name} is missing")
    if problems:
        raise ModelFilesChanged(name, record.manifest_sha256, problems)
    return Path(record.load_path)


def _default_record() -> Record:
    """The packaged default's record, written on first use: the registry's data
    migration registered its GGUF file by hash; the converted copy is this worker's."""
    from workers.runtime.local import gguf_path

    gguf = gguf_path()
    manifest = {gguf.name: file_sha256(gguf)}
    record = Record(
        name=DEFAULT_MODEL_ID,
        version=1,
        source_kind="package",
        load_path=str(runtime_dir(DEFAULT_MODEL_ID)),
        files={gguf.name: str(gguf)},
        manifest=manifest,
        manifest_sha256=manifest_sha256(manifest),
    )
    write_record(record)
    return record


def config_of(name: str) -> dict[str, Any] | None:
    """config.json of a model this worker knows (registered or the converted default),
    read without torch and without hashing; None when absent."""
    record = read_record(name)
    directory = Path(record.load_path) if record else runtime_dir(name)
    try:
        return json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None


def served_names() -> list[str]:
    """The models this worker can load (what the local server lists as loadable): each
    registered model's runtime directory with a record, a converted folder of an
    unregistered one (CLI and runtime tests), and the packaged default."""
    root = _data_dir() / "models"
    names = {DEFAULT_MODEL_ID}
    if root.is_dir():
        for directory in root.iterdir():
            if directory.name.startswith(".") or not directory.is_dir():
                continue
            if (directory / RECORD).is_file() or (directory / "config.json").is_file():
                names.add(directory.name)
    return sorted(names)


def parameter_count(name: str) -> int:
    """The parameters of model `name` from its safetensors headers (no torch, no
    hashing); 0 when its weights are not there yet (the default before conversion)."""
    directory = load_dir_of(name)
    total = 0
    try:
        weights = sorted(directory.glob("*.safetensors"))
        for path in weights:
            for tensor, meta in safetensors_header(path).items():
                if tensor == "__metadata__":
                    continue
                count = 1
                for dim in meta.get("shape", []):
                    count *= int(dim)
                total += count
    except (OSError, RegistrationRefused):
        return 0
    return total


def load_dir_of(name: str) -> Path:
    record = read_record(name)
    return Path(record.load_path) if record else runtime_dir(name)
