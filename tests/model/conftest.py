import pytest
import torch

from reaemb_ray.config import ModelConfig


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("backbones"))


@pytest.fixture()
def tiny_cfg():
    cfg = ModelConfig(backbone="tiny", max_length=64)
    cfg.lora.dropout = 0.0  # dropout would make the two passes differ randomly
    return cfg


def _make_prompt(tok, attributes: str) -> str:
    """The real prompt: every row shares the template head, so batches use the shared-head layout."""
    from reaemb_ray.data.prompts import item_prompt

    return item_prompt(tok, attributes, "item")


def _make_custom_prompt(tok, attributes: str) -> str:
    """A prompt whose rows share no token prefix (the text reversed): batches use plain left padding."""
    return attributes[::-1] + "<|Thought|>" + tok.eos_token


PROMPT_ATTRS = [
    "title is Nivea lotion 8 oz; brand is Nivea; categories is Beauty, Skin Care",
    "title is x",
    "title is The Drama Story (1999); genres is Drama, Comedy, Action; brand is Acme; categories is Movies",
]


@pytest.fixture()
def prompts():
    return PROMPT_ATTRS


def _randomize_lora(module, seed=0):
    """LoRA B starts at zero (a no-op); give it values so LoRA paths are actually exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(params=["shared_head", "left_padded"])
def make_prompt(request):
    return _make_prompt if request.param == "shared_head" else _make_custom_prompt


@pytest.fixture()
def randomize_lora():
    return _randomize_lora
