"""`reaemb prepare`: raw dataset -> `{output_dir}/prepared/` (see reaemb_ray/data/prepare.py).

Skips the work when `prepared/_DONE.json` holds the fingerprint of the current `data` section and every
output file is present; `--fresh` forces a rebuild.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict

from reaemb_ray import storage
from reaemb_ray.data.prepare import FILES, prepare


def data_fingerprint(cfg, fields=storage.changed_fields) -> str:
    return storage.fingerprint(fields(cfg.data))


def is_up_to_date(cfg) -> bool:
    done = cfg.out / "prepared" / "_DONE.json"
    if not done.is_file() or not all((cfg.out / "prepared" / f).is_file() for f in FILES):
        return False
    try:
        recorded = json.loads(done.read_text()).get("fingerprint")
    except json.JSONDecodeError:
        return False
    # format 1 hashed every field (defaults included); its records stay valid
    return recorded in (data_fingerprint(cfg), data_fingerprint(cfg, storage.whole_section))


def main(cfg, args) -> None:
    if storage.is_uri(cfg.output_dir):
        raise ValueError(f"output_dir {cfg.output_dir!r} is a URI; `reaemb prepare` writes locally -- use "
                         "`reaemb run` (it mirrors the local work folder to the URI) or a local output_dir")
    out = cfg.out / "prepared"
    if not getattr(args, "fresh", False) and is_up_to_date(cfg):
        print(f"prepare: {out} is up to date (same data config); pass --fresh to rebuild")
        print((out / "summary.json").read_text())
        return
    done = out / "_DONE.json"
    done.unlink(missing_ok=True)  # an interrupted rebuild must not look finished
    t0 = time.time()
    prepare(cfg)
    summary = (out / "summary.json").read_text()
    done.write_text(json.dumps({"stage": "prepare", "fingerprint": data_fingerprint(cfg), "data": asdict(cfg.data),
                                "seconds": round(time.time() - t0, 2),
                                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))
    print(summary)
