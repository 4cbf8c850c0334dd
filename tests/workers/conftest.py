import pytest


@pytest.fixture(scope="session")
def smollm2_tokenizer(request):
    """The real SmolLM2 tokenizer: from the converted model directory when it exists
    (fast), else straight from the GGUF file (~10 s). When `model` tests are selected
    the real model is converted first, so the GGUF file is read once per session."""
    from transformers import AutoTokenizer

    from workers.runtime.local import gguf_path, load_local_model, model_dir

    if any(item.get_closest_marker("model") for item in request.session.items):
        load_local_model()
    cached = model_dir()
    if (cached / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(cached)
    source = gguf_path()
    return AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)


@pytest.fixture(scope="session")
def tiny_model(smollm2_tokenizer):
    """A LocalModel around a randomly initialised 2-layer Llama (hidden size 32) that
    speaks SmolLM2's vocabulary and chat template, with a 256-token context."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workers.runtime.local import LocalModel, limit_cpu_threads

    limit_cpu_threads()  # as load_local_model does; 6x faster here on a busy machine
    tokenizer = smollm2_tokenizer
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        # Wider than the default 0.02, so greedy picks are clear winners rather than
        # near-ties that float rounding of padded batches could flip.
        initializer_range=0.5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LocalModel(LlamaForCausalLM(config), tokenizer)


@pytest.fixture
def store(settings, tmp_path):
    """STUDIO_MODELS_DIR (returned) and DATA_DIR under tmp_path, for registering models."""
    settings.DATA_DIR = tmp_path / "data"
    settings.STUDIO_MODELS_DIR = str(tmp_path / "store")
    (tmp_path / "store").mkdir()
    return tmp_path / "store"


TINY = "tiny-llama"


@pytest.fixture(scope="module")
def tiny_data_dir(tiny_model, tmp_path_factory):
    """A data dir holding the tiny random Llama as a converted model named TINY."""
    from workers.runtime.local import save_converted

    data_dir = tmp_path_factory.mktemp("data")
    save_converted(tiny_model.model, tiny_model.tokenizer, data_dir / "models" / TINY)
    return data_dir


@pytest.fixture
def tiny(settings, tiny_data_dir):
    settings.DATA_DIR = tiny_data_dir
    return TINY
