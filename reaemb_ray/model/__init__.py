"""Backbone loading (+<|Thought|>), the latent-thought attention, naive/efficient two-pass embedding."""
from reaemb_ray.model.backbone import THOUGHT_TOKEN, load_backbone, resolve_backbone, resolve_backbone_name
from reaemb_ray.model.generator import (ThoughtEmbedder, build_embedder, export_merged, load_generator,
                                        save_generator)
from reaemb_ray.model.thought_attention import LatentThoughtAttention
from reaemb_ray.model.two_pass import (PromptStates, efficient_embed, embed_with_thoughts, naive_embed, pool,
                                       naive_embed_with_thoughts, prompt_states, tokenize_prompts)

__all__ = ["THOUGHT_TOKEN", "load_backbone", "resolve_backbone", "resolve_backbone_name", "ThoughtEmbedder",
           "build_embedder", "export_merged", "load_generator", "save_generator", "LatentThoughtAttention",
           "PromptStates", "efficient_embed", "embed_with_thoughts", "naive_embed", "pool",
           "naive_embed_with_thoughts", "prompt_states", "tokenize_prompts"]
