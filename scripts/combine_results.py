"""One results table from finished evaluation runs of several `reaemb evaluate` output folders.

An evaluation folder holds one method per embedding table and one item-encoder setting for all of them, so
comparisons across item encoders (or baselines tuned in their own folder) live in different folders. This
script relabels each run's method and writes report.json / report.md / plots exactly as `evaluate` does:

    python3 scripts/combine_results.py --out docs/results/beauty \\
        'id=outputs/tune/n1024*/eval/runs/id__sasrec__seed*.json' \\
        'raw_llm+llm_init=outputs/e2/item_init/eval/runs/raw_llm__*.json'

Each argument is LABEL=GLOB; every run file the glob matches becomes method LABEL. Runs must come from the
same prepared data (their records count the same users per group), and a (label, backbone, seed) may appear
once: the script stops with one line naming the clash otherwise.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from reaemb_ray.srs.report import plot_curves, plot_popularity, write_json, write_markdown


def load_runs(specs: list[str]) -> tuple[list[dict], dict, dict]:
    records, curves, buckets, users, seen = [], {}, {}, None, {}
    for spec in specs:
        label, sep, pattern = spec.partition("=")
        files = sorted(glob.glob(pattern))
        if not sep or not label or not files:
            sys.exit(f"combine_results: {spec!r} matched no run file; give LABEL=GLOB of evaluate's runs/*.json")
        for path in files:
            run = json.loads(Path(path).read_text())
            first = run["records"][0]
            key = (label, first["backbone"], first["seed"])
            if key in seen:
                sys.exit(f"combine_results: {key} comes from both {seen[key]} and {path}; narrow one glob")
            seen[key] = path
            n = {r["group"]: r["n_users"] for r in run["records"] if r["protocol"] == "full"}
            if users is not None and n != users:
                sys.exit(f"combine_results: {path} was evaluated on other users ({n}) than the first run "
                         f"({users}); combine runs of one prepared dataset only")
            users = n
            records += [{**r, "method": label} for r in run["records"]]
            curves[f"{label}__{first['backbone']}__seed{first['seed']}"] = run["curve"]
            buckets.setdefault((label, first["backbone"]), []).append(run["popularity_buckets"])
    return records, curves, buckets


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for report.json, report.md and the plots")
    ap.add_argument("runs", nargs="+", help="LABEL=GLOB of evaluate's runs/<method>__<backbone>__seed<s>.json")
    args = ap.parse_args(argv)
    records, curves, buckets = load_runs(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(records, args.out / "report.json")
    write_markdown(records, args.out / "report.md")
    with open(args.out / "report.md", "a") as f:  # where every row came from
        f.write("## Runs combined\n\n" + "".join(f"- `{spec}`\n" for spec in args.runs))
    plot_curves(curves, args.out / "val_curves.png")
    plot_popularity(buckets, args.out / "ndcg_by_popularity.png")
    print(f"wrote {args.out / 'report.md'}")
    return args.out


if __name__ == "__main__":
    main()
