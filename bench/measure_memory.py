"""Measure a job's extra memory over an idle engine: the data planning.py's peak_bytes rests on.

Each case runs in a fresh process, like a server that has just started: the engine is built and
warmed up, the resident set (VmRSS) is read as "idle", the kernel's peak counter is reset
(``/proc/self/clear_refs`` = 5), then the job's inputs are made and the job runs; VmHWM minus
idle is the job's extra memory, inputs included. Each case is printed as one JSON line beside
``planning.plan_job``'s peak_bytes for the same job, so the estimate's margin is seen directly.

    .venv/bin/python bench/measure_memory.py                # the calibration set (~15 min)
    .venv/bin/python bench/measure_memory.py --case 512x384,style_scale=4
    .venv/bin/python bench/measure_memory.py --out bench/memory-results.json

A case is ``HxW[,key=value...]``: the content's size, then StyleParams fields (numbers, booleans
and strings as given), plus ``style=HxW`` (the painting's size, default 512x512), ``mask=1``
and ``detail_steps=N`` (steps per detail tile: memory does not depend on it, time does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Single passes isolate the per-pixel cost of a step; style scales the style pass; the large
#: photo at a small size the upscaling; the defaults and a mask check the whole job.
CALIBRATION = (
    "256x256,coarse_to_fine=false,precision=float32",
    "512x512,coarse_to_fine=false,precision=float32",
    "768x768,coarse_to_fine=false,precision=float32",
    "1024x1024,coarse_to_fine=false,precision=float32",
    "256x256,coarse_to_fine=false",
    "512x512,coarse_to_fine=false",
    "768x768,coarse_to_fine=false",
    "1024x1024,coarse_to_fine=false",
    "512x512,coarse_to_fine=false,optimizer=adam,precision=float32",
    "384x384,coarse_to_fine=false,style_scale=2,precision=float32",
    "384x384,coarse_to_fine=false,style_scale=4,precision=float32",
    "384x384,coarse_to_fine=false,style_scale=4",
    "288x384,style_scale=4,style=1536x1536",
    "3000x4000,max_size=384,coarse_to_fine=false",
    "768x1024,max_size=1024",
    "768x1024,max_size=1024,mask=1",
    "768x1024,max_size=384",
    "512x512,coarse_to_fine=false,style_loss=wasserstein",
    "512x512,coarse_to_fine=false,style_loss=sliced",
    "1024x1024,coarse_to_fine=false,style_loss=sliced",
    "768x1024,max_size=384,upscale=detail",
    "3000x4000,max_size=384,upscale=detail,iterations=2,detail_steps=1",
    "512x512,coarse_to_fine=false,precision=float32,iterations=40",
)


def _parse_case(text: str) -> tuple[tuple[int, int], tuple[int, int], bool, dict]:
    size, *pairs = text.split(",")
    h, w = (int(v) for v in size.split("x"))
    style = (512, 512)
    mask = False
    overrides: dict = {"iterations": 3, "max_size": 0}
    for pair in pairs:
        key, value = pair.split("=", 1)
        if key == "detail_steps":
            from nst_server.engine import planning

            planning.DETAIL_STEPS = int(value)
        elif key == "style":
            style = tuple(int(v) for v in value.split("x"))  # type: ignore[assignment]
        elif key == "mask":
            mask = value not in ("0", "false")
        elif value in ("true", "false"):
            overrides[key] = value == "true"
        else:
            try:
                overrides[key] = int(value)
            except ValueError:
                try:
                    overrides[key] = float(value)
                except ValueError:
                    overrides[key] = value
    return (h, w), style, mask, overrides


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_here(case: str) -> dict:
    """Run ``case`` in this process (a fresh one: see the module docstring)."""
    import gc

    import numpy as np

    from nst_server.engine import StyleEngine
    from nst_server.engine.planning import plan_job
    from nst_server.params import StyleParams
    from nst_server.weights import resolve_weights

    (h, w), style_hw, has_mask, overrides = _parse_case(case)
    engine = StyleEngine(resolve_weights())
    engine.load()
    params = StyleParams.from_mapping(overrides, engine.device)
    plan = plan_job((h, w), [style_hw], params, has_mask=has_mask)
    gc.collect()
    idle = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
    rng = np.random.default_rng(0)
    content = rng.uniform(0, 1, (h, w, 3)).astype(np.float32)
    painting = rng.uniform(0, 1, (*style_hw, 3)).astype(np.float32)
    mask = None
    if has_mask:
        mask = np.zeros((h, w), np.float32)
        mask[:, w // 2 :] = 1.0
    started = time.perf_counter()
    engine.stylize(content, [painting], params, mask=mask)
    peak = _status("VmHWM")
    return {
        "case": case,
        "passes": [list(p) for p in plan.passes],
        "style_sizes": [[list(s) for s in sizes] for sizes in plan.style_sizes],
        "precision": engine.precision if params.precision == "auto" else params.precision,
        "idle_mb": round(idle / 2**20, 1),
        "measured_mb": round((peak - idle) / 2**20, 1),
        "planned_mb": round(plan.peak_bytes / 2**20, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }


def measure(case: str) -> dict:
    """Run ``case`` in a fresh Python process; its JSON line back."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "NST_FREE_MEMORY_MB": "100000"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", case],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        return {"case": case, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", help="one case (repeatable)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="also write all results to this JSON file")
    ns = parser.parse_args(argv)
    if ns.child:
        sys.path.insert(0, str(REPO))
        print(json.dumps(measure_here(ns.child)))
        return 0
    results = []
    for case in ns.case or CALIBRATION:
        result = measure(case)
        results.append(result)
        print(json.dumps(result), flush=True)
    if ns.out:
        ns.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
