"""`reaemb` command line: one entry point, one subcommand per stage, `--config FILE` plus `key.sub=value`."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from reaemb_ray.config import ConfigError, load_config

# subcommand -> (module in reaemb_ray.stages, one-line help)
STAGES = {
    "prepare": ("prepare", "read a raw dataset, write canonical Parquet (items, splits, co-occurrence)"),
    "lrcl": ("lrcl", "stage 1: latent-reasoning contrastive learning as a Ray Train job"),
    "crrl": ("crrl", "stage 2: collaborative-reward RL with rollout, reward and learner actors"),
    "export": ("export", "compute every item's embedding with Ray Data batch inference"),
    "evaluate": ("evaluate", "train SASRec/GRU4Rec/Bert4Rec on each embedding table and report metrics"),
    "run": ("run", "the whole pipeline, resuming from whatever stage outputs already exist"),
    "bench": ("bench", "measure speed ratios and memory; prints JSON"),
}


class StageFailed(RuntimeError):
    """Raised by `run` with the failing stage named."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reaemb", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in STAGES.items():
        sp = sub.add_parser(name, help=help_text)
        sp.add_argument("--config", "-c", default=None, help="YAML config (see configs/)")
        sp.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. lrcl.steps=10")
        if name == "bench":
            sp.add_argument("--quick", action="store_true", help="small sizes, finishes in a few minutes")
            sp.add_argument("--out", default=None, help="also write the JSON here")
            sp.add_argument("--sections", default=None,
                            help="comma-separated subset, e.g. forward,rollout (default: all; later runs add the rest)")
        if name in ("prepare", "lrcl", "crrl", "export", "evaluate", "run", "bench"):
            sp.add_argument("--fresh", action="store_true", help="ignore existing outputs and start over")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"reaemb: config error: {e}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"reaemb_ray.stages.{STAGES[args.command][0]}")
    try:
        module.main(cfg, args)
    except ConfigError as e:
        print(f"reaemb {args.command}: config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, ConnectionError, StageFailed) as e:
        print(f"reaemb {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
