"""Run every benchmark and write benchmarks/results/*.json plus benchmarks/results/SUMMARY.md.

    python -m benchmarks.run_all [--only calibration,trial,sweep,feature_cache,quickstart_memory]

Each figure is a ratio measured side by side in one run on the machine recorded with it; the machines
these run on are shared and noisy, so compare ratios, not absolute times across machines.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json

from benchmarks.common import RESULTS
from gapinit_ray.atomic import write_atomic

ALL = ("calibration", "trial", "sweep", "feature_cache", "quickstart_memory")


def summary() -> str:
    lines = ["# Benchmark results", ""]
    for name in ALL:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            lines.append(f"- **{name}**: not run")
            continue
        r = json.loads(path.read_text())
        figures = {
            k: v for k, v in r.items() if k not in ("machine", "benchmark") and not isinstance(v, list)
        }
        lines.append(f"## {name}")
        lines.append("")
        lines.append("```json")
        lines.append(json.dumps(figures, indent=1, sort_keys=True, default=str))
        lines.append("```")
        lines.append(f"machine: `{json.dumps(r.get('machine'))}`")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(ALL))
    args = ap.parse_args()
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}", flush=True)
        takes_argv = bool(inspect.signature(module.main).parameters)
        module.main([]) if takes_argv else module.main()
    text = summary()
    write_atomic(RESULTS / "SUMMARY.md", text)
    print(text)


if __name__ == "__main__":
    main()
