from datetime import datetime
from typing import Any, Literal

from ninja import Field, Schema

from apps.core.schemas import QueuePositionOut
from apps.finetune.services import DEFAULT_EVAL_FRACTION, DEFAULT_SEED


class DatasetCreateIn(Schema):
    slug: str = Field(..., max_length=100)
    name: str = Field(..., max_length=200)
    format: Literal["chat", "prompt_completion", "variables"]
    description: str = Field("", max_length=2000)
    prompt: str | None = Field(None, description="Variables datasets: the prompt's slug")
    prompt_version: int | None = Field(None, description="Variables datasets: its number")


class DatasetVersionOut(Schema):
    number: int
    parent: int | None
    source: str
    source_ref: dict[str, Any]
    sha256: str
    row_count: int
    train_count: int
    eval_count: int
    split_seed: int
    eval_fraction: float
    token_stats: dict[str, Any]
    commit_message: str
    created_by: str | None
    created_at: datetime
    download_url: str


class DatasetOut(Schema):
    slug: str
    name: str
    description: str
    format: str
    prompt: str | None
    prompt_version: int | None
    latest_version: int | None
    created_by: str | None
    created_at: datetime


class SplitForm(Schema):
    commit_message: str = Field("", max_length=500)
    seed: int | None = Field(None, description=f"Split seed (default {DEFAULT_SEED})")
    eval_fraction: float | None = Field(
        None, description=f"Share held out for evaluation (default {DEFAULT_EVAL_FRACTION})"
    )
    target: str | None = Field(None, description="Local model target (default 'local')")


class FromReviewExportIn(SplitForm):
    queue: str = Field(..., description="The review queue's slug")
    export: int = Field(..., description="The export's id")


class FromBatchJobIn(SplitForm):
    batch_job: int


class RowsPageOut(Schema):
    offset: int
    limit: int
    total: int
    next_offset: int | None
    rows: list[dict[str, Any]]


class DiffRowOut(Schema):
    index: int
    row: dict[str, Any]


class DatasetDiffOut(Schema):
    from_version: int
    to_version: int
    from_rows: int
    to_rows: int
    added_count: int
    removed_count: int
    unchanged_count: int
    added: list[DiffRowOut]
    removed: list[DiffRowOut]


# --- fine-tune jobs and adapters ------------------------------------------------------------


class LoraIn(Schema):
    r: int | None = Field(None, description="LoRA rank (default 8)")
    alpha: int | None = Field(None, description="LoRA alpha (default 16)")
    dropout: float | None = Field(None, description="LoRA dropout (default 0.05)")
    target_modules: list[str] | None = Field(
        None,
        description="Module names to adapt (default: the architecture's attention projections)",
    )


class TrainIn(Schema):
    learning_rate: float | None = None
    epochs: float | None = Field(None, description="Passes over the train rows (default 1)")
    max_steps: int | None = Field(None, description="Stop after this many steps (wins over epochs)")
    batch_size: int | None = None
    grad_accum: int | None = None
    max_seq_len: int | None = None
    seed: int | None = None
    eval_every: int | None = None
    checkpoint_every: int | None = None
    warmup_steps: int | None = None
    gradient_checkpointing: bool | None = Field(
        None, description="Recompute activations in the backward pass (less memory)"
    )
    qlora: bool | None = Field(None, description="4-bit base model (needs a CUDA GPU)")


class FineTuneJobCreateIn(Schema):
    dataset: str = Field(..., description="The dataset's slug")
    version: int | None = Field(None, description="Its version number (default: the latest)")
    target: str = Field("local", description="A local model target: its base model is trained")
    base_model: str | None = Field(
        None, description="A registered base model to train (default: the target's)"
    )
    lora: LoraIn = Field(default_factory=LoraIn)
    train: TrainIn = Field(default_factory=TrainIn)
    devices: int | None = Field(
        None,
        description="Devices to train on (default 1): GPUs on a CUDA worker, training "
        "processes on a CPU worker; above 1 the run is launched with accelerate (DDP, or "
        "FSDP), with the same global batch. At most what the workers have.",
    )


class FineTuneJobOut(Schema):
    id: int
    status: str
    dataset: str
    dataset_version: int
    target: str
    base_model: str
    lora: dict[str, Any]
    train: dict[str, Any]
    devices: int
    step: int
    total_steps: int | None
    epoch: float
    loss: float | None
    smoothed_loss: float | None
    eval_loss: float | None
    tokens_per_second: float
    eta_seconds: float | None
    learning_rate: float | None
    points: list[list[float | None]]
    resumed_at_steps: list[int]
    cancel_requested: bool
    error: str
    failure_kind: str
    attempts: int
    queue: QueuePositionOut | None
    adapter: int | None
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class AdapterOut(Schema):
    id: int
    job: int
    dataset: str
    dataset_version: int
    sha256: str
    size_bytes: int
    base_model: str
    base_model_sha256: str
    lora_config: dict[str, Any]
    metrics: dict[str, Any]
    approved: bool
    approved_by: str | None
    approved_at: datetime | None
    created_at: datetime
    download_tar_gz: str
    download_zip: str


class TargetAdapterIn(Schema):
    adapter: int | None = Field(..., description="An approved adapter's id, or null to detach")


class TargetAdapterOut(Schema):
    target: str
    adapter: int | None


class ComparisonParamsIn(Schema):
    max_new_tokens: int | None = Field(None, description="Default 128")
    temperature: float | None = Field(None, description="Default 0 (greedy)")
    top_p: float | None = None
    seed: int | None = Field(None, description="Default 0; both models get the same")


class ComparisonCreateIn(Schema):
    prompts: list[str] = Field(default_factory=list, description="Typed inputs, one user turn each")
    eval_rows: list[int] = Field(
        default_factory=list,
        description="Row numbers (1-based) of the eval split of the adapter's dataset version; "
        "with no prompts and no rows, the first 3 eval rows",
    )
    params: ComparisonParamsIn = Field(default_factory=ComparisonParamsIn)


class ComparisonOutputOut(Schema):
    input: str
    source: str
    reference: str
    base: str
    adapter: str
    base_error: str
    adapter_error: str


class ComparisonOut(Schema):
    id: int
    adapter: int
    adapter_sha256: str
    status: str
    inputs: list[dict[str, Any]]
    params: dict[str, Any]
    base_loss: float | None
    adapter_loss: float | None
    loss_delta: float | None
    base_ppl: float | None
    adapter_ppl: float | None
    ppl_delta: float | None
    eval_rows: int
    eval_tokens: int
    outputs: list[ComparisonOutputOut]
    error: str
    queue: QueuePositionOut | None
    created_by: str | None
    created_at: datetime
    finished_at: datetime | None
