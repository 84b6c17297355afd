"""`reaemb` command line: one entry point, one subcommand per stage, `--config FILE` plus `key.sub=value`.

Before a stage starts, the config is validated (reaemb_ray/config.py) and the stage's inputs are checked
(reaemb_ray/preflight.py). A stage subcommand runs that one stage with the same check `reaemb run` uses
(reaemb_ray/stages/base.py): it refuses to start when a stage it reads is not done, skips when its record
matches today's inputs, and otherwise says why it (re)does the work. A user error (a bad value, file or
folder) prints one line naming the key or the file and the fix, with no traceback (`--debug` shows it);
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
import traceback

from reaemb_ray.config import ConfigError, InputError, config_yaml, load_config

# subcommand -> (one-line help, the stage it runs for a config)
STAGE_COMMANDS = {
    "prepare": ("read a raw dataset, write canonical Parquet (items, splits, co-occurrence)", lambda cfg: "prepare"),
    "srs_pretrain": ("train the ID-SASRec that the srs reward and LLMEmb alignment read", lambda cfg: "srs_pretrain"),
    "lrcl": ("stage 1: latent-reasoning contrastive learning as a Ray Train job (model.use_thought=false: llmemb)",
             lambda cfg: "lrcl" if cfg.model.use_thought else "llmemb"),
    "crrl": ("stage 2: collaborative-reward RL with rollout, reward and learner actors", lambda cfg: "crrl"),
    "reason": ("explicit-reasoning mode: GRPO-trained JSON reasons (vLLM rollouts), embedded by a small LM",
               lambda cfg: "reason"),
    "export": ("compute every item's embedding with Ray Data batch inference (export.method)",
               lambda cfg: f"export_{cfg.export.method}"),
    "evaluate": ("train SASRec/GRU4Rec/Bert4Rec on each embedding table and report metrics", lambda cfg: "evaluate"),
}
OTHER_COMMANDS = {
    "run": "the whole pipeline, skipping finished stages and resuming interrupted ones",
    "bench": "measure speed ratios and memory; prints JSON",
}
COMMANDS = [*STAGE_COMMANDS, *OTHER_COMMANDS]
# errors printed as one line: InputError (the input is wrong) and the errors of files, folders and connections
USER_ERRORS = (ValueError, OSError)  # OSError includes ConnectionError (an unreachable cluster)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reaemb", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    helps = {name: h for name, (h, _) in STAGE_COMMANDS.items()} | OTHER_COMMANDS
    for name, help_text in helps.items():
        sp = sub.add_parser(name, help=help_text)
        sp.add_argument("--config", "-c", default=None, help="YAML config (see configs/); required")
        sp.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. lrcl.steps=10")
        sp.add_argument("--fresh", action="store_true", help="ignore existing outputs and start over")
        sp.add_argument("--debug", action="store_true", help="show the traceback of an error")
        if name == "bench":
            sp.add_argument("--quick", action="store_true", help="small sizes, finishes in a few minutes")
            sp.add_argument("--out", default=None, help="also write the JSON here")
            sp.add_argument("--sections", default=None,
                            help="comma-separated subset, e.g. forward,rollout (default: all; later runs add the rest)")
    sp = sub.add_parser("config", help="validate a config; --print shows the effective config as YAML")
    sp.add_argument("--config", "-c", default=None, help="YAML config (default: the built-in defaults)")
    sp.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    sp.add_argument("--print", action="store_true", dest="print_config", help="print the effective config")
    sp.add_argument("--check", choices=sorted(COMMANDS), default=None,
                    help="also check what this command would read and write (folders, backbone, data)")
    sp.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, OSError) and not isinstance(e, ConnectionError) and e.filename and str(e.filename) not in text:
        text += f": {e.filename}"
    return text or type(e).__name__


def _config_command(args) -> int:
    from reaemb_ray import preflight

    if args.config is None:
        print("reaemb config: no --config given: this is the built-in default config", file=sys.stderr)
    cfg = load_config(args.config, args.overrides)
    if args.check:
        preflight.check(cfg, args.check)
    if args.print_config:
        print(config_yaml(cfg), end="")
    else:
        print(f"reaemb config: valid{' for ' + args.check if args.check else ''}")
    return 0


def _run_command(args) -> int:
    from reaemb_ray import preflight

    if args.config is None:
        raise ConfigError(f"--config is required: pass a YAML file (e.g. reaemb {args.command} --config configs/demo.yaml); "
                          "`reaemb config --print` shows the built-in defaults, which you can save and edit")
    cfg = load_config(args.config, args.overrides)
    preflight.check(cfg, args.command, quick=getattr(args, "quick", False))
    if args.command == "run":
        from reaemb_ray.stages.run import main as run_main

        run_main(cfg, fresh=args.fresh)
    elif args.command == "bench":
        from reaemb_ray.stages.bench import main as bench_main

        bench_main(cfg, quick=args.quick, fresh=args.fresh, out=args.out, sections=args.sections)
    else:
        from reaemb_ray.stages.run import run_stage

        run_stage(cfg, STAGE_COMMANDS[args.command][1](cfg), fresh=args.fresh)
    return 0


def main(argv: list[str] | None = None) -> int:
    from reaemb_ray.stages.base import StageFailed, StageNotReady

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    where = f"reaemb {args.command}"
    try:
        return _config_command(args) if args.command == "config" else _run_command(args)
    except ConfigError as e:
        if args.debug:
            traceback.print_exc()
        print(f"{where}: config error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (*USER_ERRORS, StageFailed, StageNotReady) as e:
        if args.debug:
            traceback.print_exc()
        blames_input = isinstance(e, (InputError, FileNotFoundError, StageNotReady)) or isinstance(e.__cause__, InputError)
        hint = "" if args.debug or blames_input else " (--debug shows the traceback)"
        print(f"{where}: error: {_one_line(e)}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{where}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
