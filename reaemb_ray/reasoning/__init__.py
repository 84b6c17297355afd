"""Explicit-reasoning mode (RecCoT): a generative LM writes a JSON chain of thought about an item, trained with
token-level GRPO on format / accuracy / analysis rewards; a small LM embeds item text + reasoning.

Pure computation (no Ray) lives here; `actors/reason_*.py` are the Ray shells and `stages/reason.py` the
controller. See docs/RECCOT.md.
"""
