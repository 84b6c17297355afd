"""Pipeline stages: each module has its work function and `stages(cfg)`; base.py says when a stage is done,
run.py runs them (see docs/ARCHITECTURE.md)."""
