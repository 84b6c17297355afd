import json
import shutil

import pytest
import torch

from reaemb_ray.model import (build_embedder, export_merged, load_generator, save_generator, tokenize_prompts)
from reaemb_ray.model.generator import read_meta, with_attention


def _saved(tmp_path, tiny_cfg, tiny_cache, randomize_lora):
    torch.manual_seed(0)
    module, tok, path = build_embedder(tiny_cfg, tiny_cache, tau_init=0.7)
    randomize_lora(module)
    with torch.no_grad():
        module.attn.q_proj.bias.add_(0.5)
    module.eval()
    out = save_generator(module, tok, tmp_path / "gen", {"backbone": "tiny"})
    return module, tok, out


def test_save_load_roundtrip_and_merge(tmp_path, tiny_cfg, tiny_cache, prompts, make_prompt, randomize_lora):
    module, tok, out = _saved(tmp_path, tiny_cfg, tiny_cache, randomize_lora)
    for f in ("adapter_config.json", "adapter_model.safetensors", "thought_attention.safetensors",
              "tokenizer_config.json", "reaemb_meta.json"):
        assert (out / f).exists(), f
    b = tokenize_prompts(tok, [make_prompt(tok, a) for a in prompts], 128)
    with torch.no_grad():
        want = module.embed(b)
        assert read_meta(out)["kind"] == "lora" and "backbone_path" not in read_meta(out)  # no node-local path
        loaded, tok2 = load_generator(out, expect_backbone="tiny", cache_dir=tiny_cache)
        assert loaded.has_lora
        assert float(loaded.tau()) == pytest.approx(0.7, rel=1e-5)
        torch.testing.assert_close(loaded.embed(b), want, atol=1e-5, rtol=1e-5)
        merged, _ = load_generator(out, merge_lora=True, cache_dir=tiny_cache)
        assert not merged.has_lora
        torch.testing.assert_close(merged.embed(b), want, atol=1e-4, rtol=1e-4)
        plain_dir = export_merged(out, tmp_path / "merged", cache_dir=tiny_cache)
        assert (plain_dir / "config.json").exists() and not (plain_dir / "adapter_config.json").exists()
        assert read_meta(plain_dir)["kind"] == "merged"
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hf = AutoModelForCausalLM.from_pretrained(str(plain_dir))  # a plain HF folder
        assert "<|Thought|>" in AutoTokenizer.from_pretrained(str(plain_dir)).get_vocab()
        assert hf.get_input_embeddings().weight.shape[0] == len(tok2)
        again, _ = load_generator(plain_dir)
        torch.testing.assert_close(again.embed(b), want, atol=1e-4, rtol=1e-4)


def test_load_refuses_wrong_backbone(tmp_path, tiny_cfg, tiny_cache, randomize_lora):
    _, _, out = _saved(tmp_path, tiny_cfg, tiny_cache, randomize_lora)
    with pytest.raises(ValueError, match="trained on backbone 'tiny' but model.backbone is 'smollm2'"):
        load_generator(out, expect_backbone="smollm2")


def test_load_refuses_hidden_size_mismatch(tmp_path, tiny_cfg, tiny_cache, randomize_lora):
    _, _, out = _saved(tmp_path, tiny_cfg, tiny_cache, randomize_lora)
    with pytest.raises(ValueError, match="hidden size mismatch"):
        load_generator(out, expect_hidden_size=576, cache_dir=tiny_cache)
    meta = json.loads((out / "reaemb_meta.json").read_text())
    meta["hidden_size"] = 896
    (out / "reaemb_meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="hidden size mismatch"):
        load_generator(out, cache_dir=tiny_cache)


def test_load_refuses_missing_tokenizer_or_meta(tmp_path, tiny_cfg, tiny_cache, randomize_lora):
    _, _, out = _saved(tmp_path, tiny_cfg, tiny_cache, randomize_lora)
    (out / "tokenizer_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_generator(out)
    shutil.rmtree(out)
    out.mkdir()
    with pytest.raises(FileNotFoundError, match="not a generator checkpoint"):
        load_generator(out)


def test_attention_only_folder_and_with_attention(tmp_path, tiny_cfg, tiny_cache, prompts, make_prompt):
    """Kind "attention" (no LoRA: the frozen backbone by name), and a copy with other attention weights."""
    torch.manual_seed(1)
    module, tok, _ = build_embedder(tiny_cfg, tiny_cache, with_lora=False)
    out = save_generator(module, tok, tmp_path / "attn", {"backbone": "tiny"})
    assert read_meta(out)["kind"] == "attention" and not (out / "config.json").exists()
    b = tokenize_prompts(tok, [make_prompt(tok, a) for a in prompts], 128)
    loaded, _ = load_generator(out, cache_dir=tiny_cache)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(b), module.eval().embed(b), atol=1e-5, rtol=1e-5)
        state = {k: (v + 0.1).numpy() for k, v in module.attn.state_dict().items()}
        moved = with_attention(out, state, tmp_path / "moved", stage="crrl", crrl_steps=3)
        meta = read_meta(moved)
        assert meta["kind"] == "attention" and meta["stage"] == "crrl" and meta["crrl_steps"] == 3
        again, _ = load_generator(moved, cache_dir=tiny_cache)
        torch.testing.assert_close(again.attn.q_proj.bias, torch.as_tensor(state["q_proj.bias"]))
        assert not torch.allclose(again.embed(b), loaded.embed(b))


def test_a_folder_of_an_unknown_kind_is_refused(tmp_path, tiny_cfg, tiny_cache, randomize_lora):
    _, _, out = _saved(tmp_path, tiny_cfg, tiny_cache, randomize_lora)
    meta = json.loads((out / "reaemb_meta.json").read_text())
    del meta["kind"]
    (out / "reaemb_meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="another version of reaemb"):
        load_generator(out, cache_dir=tiny_cache)
