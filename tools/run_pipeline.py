#!/usr/bin/env python
"""Run the three DS2D2 stages end to end, plus the student trained alone, and print AP per stage.

    python tools/run_pipeline.py --config configs/synthetic/retinanet_R50_to_R18.yaml --output output/pipeline

``--config`` is a stage-3 (DS2D2Distiller) config. The other stages are derived from it:
  teacher     MODEL.DS2D2.TEACHER_CONFIG
  amplifier   --amplifier-config if given, else the teacher config turned into a DS2D2Amplifier
  student     the distiller config with MODEL.META_ARCHITECTURE = MODEL.DS2D2.DETECTOR (same schedule)
  ds2d2       the distiller config, with the teacher and amplifier weights of this run
Each stage is a ``train_net.py`` run in OUTPUT/<stage>; a stage whose eval_results.json exists is skipped, so
an interrupted pipeline resumes (an unfinished stage restarts from its last checkpoint with --resume).
Options after ``--`` (KEY VALUE pairs) are passed to every stage, e.g. ``-- MODEL.DEVICE cuda``; the ds2d2
stage builds its teacher from the config.yaml the teacher stage recorded, so they reach the teacher as it was
trained. Before anything trains, every stage's config is built as train_net.py will build it: its datasets
(DATASETS.OWN included: docs/own_data.md) are registered and checked, and the teacher's classes compared with
the student's.
"""
import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List, Sequence, Tuple

from detectron2.config import CfgNode

from ds2d2.checks import check_config
from ds2d2.config import load_config
from ds2d2.teacher import check_teacher_classes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("AP", "AP50", "AP75", "APs")  # of COCO's box evaluation ("bbox" results)


def load(path: str, opts: Sequence[str] = ()) -> CfgNode:
    """The config a stage's train_net.py builds from ``path`` and ``opts`` (datasets registered, checked)."""
    cfg = load_config(path, opts)
    check_config(cfg)
    return cfg


def stages(args, extra: List[str]) -> Tuple[List[Dict], Dict[str, str]]:
    """(name, config file, overrides) of the four runs, outputs chained."""
    cfg = load_config(args.config, extra, register=False)
    ds = cfg.MODEL.DS2D2
    out = {name: os.path.join(args.output, name) for name in ("teacher", "amplifier", "student", "ds2d2")}
    teacher_w = os.path.join(out["teacher"], "model_final.pth")
    amplifier_w = os.path.join(out["amplifier"], "model_final.pth")
    if args.amplifier_config:
        amp_file, amp_opts = args.amplifier_config, []
    else:
        amp_file = ds.TEACHER_CONFIG
        amp_opts = [
            "MODEL.META_ARCHITECTURE", "DS2D2Amplifier",
            "MODEL.DS2D2.DETECTOR", ds.DETECTOR,
            "MODEL.WEIGHTS", "",
        ]
    return [
        dict(name="teacher", config=ds.TEACHER_CONFIG, opts=[]),
        dict(name="amplifier", config=amp_file, opts=amp_opts + ["MODEL.DS2D2.TEACHER_WEIGHTS", teacher_w]),
        dict(name="student", config=args.config, opts=["MODEL.META_ARCHITECTURE", ds.DETECTOR]),
        dict(
            name="ds2d2",
            config=args.config,
            opts=["MODEL.DS2D2.TEACHER_WEIGHTS", teacher_w, "MODEL.DS2D2.AMPLIFIER_WEIGHTS", amplifier_w],
        ),
    ], out


def check_stages(plan: List[Dict], outputs: Dict[str, str], extra: List[str]) -> None:
    """Build every stage's config as its train_net.py run will (errors name the stage and its config file)."""
    built = {}
    for stage in plan:
        opts = stage["opts"] + ["OUTPUT_DIR", outputs[stage["name"]]] + extra
        try:
            built[stage["name"]] = load(stage["config"], opts)
        except (AssertionError, KeyError, OSError, ValueError) as e:
            raise SystemExit(f"run_pipeline: stage {stage['name']} ({stage['config']}): {e}") from e
    try:
        check_teacher_classes(built["teacher"], built["ds2d2"], plan[0]["config"])
    except ValueError as e:
        raise SystemExit(f"run_pipeline: {e}") from e


def run_stage(stage: Dict, output: str, extra: List[str]) -> Dict:
    results_file = os.path.join(output, "eval_results.json")
    if not os.path.isfile(results_file):
        cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", stage["config"]]
        if os.path.isfile(os.path.join(output, "last_checkpoint")):
            cmd.append("--resume")
        cmd += stage["opts"] + ["OUTPUT_DIR", output] + extra
        print(f"==> stage {stage['name']}: {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
    with open(results_file) as f:
        return json.load(f)


def scores(result: Dict) -> Dict[str, float]:
    """A stage's numbers for the table: COCO box AP (METRICS) when it has "bbox" results, and each other
    evaluator's headline (its first number, e.g. the VOC / rotated VOC AP's mAP50 or DOTA Task 1's mAP)
    named "<evaluator> <metric>"."""
    row = {m: result["bbox"].get(m, float("nan")) for m in METRICS} if "bbox" in result else {}
    row.update({f"{name} {next(iter(v))}": next(iter(v.values())) for name, v in result.items()
                if name != "bbox" and isinstance(v, dict) and v})
    return row


def table(results: Dict[str, Dict]) -> str:
    columns = list(dict.fromkeys(c for res in results.values() for c in scores(res)))
    lines = ["| stage | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, res in results.items():
        row = scores(res)
        lines.append(f"| {name} | " + " | ".join(f"{row.get(c, float('nan')):.1f}" for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="stage-3 (DS2D2Distiller) config file")
    parser.add_argument(
        "--amplifier-config", default="", help="stage-2 config (default: derived from the teacher's)"
    )
    parser.add_argument("--output", required=True, help="folder of the run; one sub-folder per stage")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every stage, after --"
    )
    args = parser.parse_args()
    extra = [o for o in args.opts if o != "--"]
    try:
        plan, outputs = stages(args, extra)
    except (AssertionError, KeyError, OSError, ValueError) as e:
        raise SystemExit(f"run_pipeline: {args.config}: {e}") from e
    check_stages(plan, outputs, extra)
    results = {s["name"]: run_stage(s, outputs[s["name"]], extra) for s in plan}
    report = table(results)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(report + "\n")
    print("\nDS2D2 pipeline (AP on the test split, as each stage's evaluator reports it):\n" + report)


if __name__ == "__main__":
    main()
