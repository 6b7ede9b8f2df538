"""Markdown tables for the parity run: both plans, CV Dice per class and fold, wall times.

Reads what ``run_parity.sh`` left in OUT (``eval_ours``/``eval_ref`` summaries of
``selfunet evaluate``, the splits, both plans, ``timings.tsv``) and prints markdown to stdout.
Besides the per-class mean Dice over cases (the method's number,
docs/explanation/design.md#evaluation), it prints the pooled Dice
(TP/FP/FN summed over all out-of-fold cases), which is less noisy on a six-case set.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

DS = "Dataset501_TSCTSlabs"


def fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def pooled(summary: dict, key: str) -> float:
    tp = sum(c["classes"][key]["tp"] for c in summary["per_case"])
    fp = sum(c["classes"][key]["fp"] for c in summary["per_case"])
    fn = sum(c["classes"][key]["fn"] for c in summary["per_case"])
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan


def fold_mean(summary: dict, cases: list[str], keys: list[str]) -> float:
    per_class = []
    for key in keys:
        values = [c["classes"][key]["dice"] for c in summary["per_case"] if c["case_id"] in cases]
        values = [v for v in values if not math.isnan(v)]
        if values:
            per_class.append(sum(values) / len(values))
    return sum(per_class) / len(per_class) if per_class else math.nan


def plans_table(out: Path) -> list[str]:
    ours = json.loads((out / "ours" / "plan.json").read_text())["configurations"]["3d_fullres"]
    ref_all = json.loads((out / "nnunet_pre" / DS / "nnUNetPlans.json").read_text())
    ref = ref_all["configurations"]["3d_fullres"]
    arch = ref["architecture"]["arch_kwargs"]
    norm, fip = ours["normalization"][0], ref_all["foreground_intensity_properties_per_channel"]["0"]
    rows = [
        ("spacing (mm)", ours["spacing"], ref["spacing"]),
        ("median shape", ours["median_shape"], ref["median_image_size_in_voxels"]),
        ("patch size", ours["patch_size"], ref["patch_size"]),
        ("batch size", ours["batch_size"], ref["batch_size"]),
        ("features per stage", ours["topology"]["features_per_stage"], arch["features_per_stage"]),
        ("strides", ours["topology"]["strides"], arch["strides"]),
        ("kernels", ours["topology"]["kernel_sizes"], arch["kernel_sizes"]),
        ("batch dice", ours["batch_dice"], ref["batch_dice"]),
        ("CT clip [p0.5, p99.5]", [norm["clip_low"], norm["clip_high"]],
         [fip["percentile_00_5"], fip["percentile_99_5"]]),
        ("CT mean / std", [round(norm["mean"], 2), round(norm["std"], 2)],
         [round(fip["mean"], 2), round(fip["std"], 2)]),
    ]
    lines = ["| 3d_fullres | selfunet | nnU-Net v2 | same |", "|---|---|---|---|"]
    for name, a, b in rows:
        a_ = json.loads(json.dumps(a))
        b_ = [float(x) for x in b] if isinstance(b, list) and b and not isinstance(b[0], list) else b
        a_f = [float(x) for x in a_] if isinstance(a_, list) and a_ and not isinstance(a_[0], list) else a_
        same = "yes" if json.dumps(a_f) == json.dumps(b_) else "**no**"
        lines.append(f"| {name} | {a} | {b} | {same} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--val-iterations", type=int, required=True)
    args = parser.parse_args()
    out = args.out
    ours = json.loads((out / "eval_ours" / "summary.json").read_text())
    ref = json.loads((out / "eval_ref" / "summary.json").read_text())
    splits = json.loads((out / "ours" / "splits.json").read_text())
    keys = [k for k in ours["labels"] if k != "0"]

    print(f"## Budget: {args.epochs} epoch(s) x {args.iterations} iterations "
          f"({args.val_iterations} validation iterations per epoch), {len(splits)} folds\n")
    print("### Plans\n")
    print("\n".join(plans_table(out)) + "\n")
    print("### Folds (the same on both sides)\n")
    for k, fold in enumerate(splits):
        print(f"- fold {k}: train {', '.join(fold['train'])}; val {', '.join(fold['val'])}")
    print("\n### Cross-validation Dice (out-of-fold, scored by `selfunet evaluate`)\n")
    print("| class | selfunet mean Dice | nnU-Net mean Dice | diff | selfunet pooled | nnU-Net pooled "
          "| cases (both empty: selfunet / nnU-Net) |")
    print("|---|---|---|---|---|---|---|")
    for key in keys:
        o, r = ours["mean"][key]["dice"], ref["mean"][key]["dice"]
        n, m = ours["counts"].get(key, {}), ref["counts"].get(key, {})
        print(f"| {key} {ours['labels'][key]} | {fmt(o)} | {fmt(r)} | {fmt(o - r)} | {fmt(pooled(ours, key))} | "
              f"{fmt(pooled(ref, key))} | {n.get('cases', '?')} "
              f"({n.get('both_empty', '?')} / {m.get('both_empty', '?')}) |")
    o, r = ours["mean_foreground_dice"], ref["mean_foreground_dice"]
    po = sum(pooled(ours, k) for k in keys) / len(keys)
    pr = sum(pooled(ref, k) for k in keys) / len(keys)
    print(f"| **mean foreground** | **{fmt(o)}** | **{fmt(r)}** | **{fmt(o - r)}** | {fmt(po)} | {fmt(pr)} | |")
    print(f"\nEmpty-mask rule: {ours['empty_mask_rule']}\n")
    print("| fold | selfunet mean fg Dice | nnU-Net mean fg Dice |")
    print("|---|---|---|")
    for k, fold in enumerate(splits):
        print(f"| {k} | {fmt(fold_mean(ours, fold['val'], keys))} | {fmt(fold_mean(ref, fold['val'], keys))} |")
    print("\n### Per case Dice (selfunet / nnU-Net)\n")
    print("| case | " + " | ".join(ours["labels"][k] for k in keys) + " |")
    print("|---|" + "---|" * len(keys))
    ref_cases = {c["case_id"]: c for c in ref["per_case"]}
    for case in sorted(ours["per_case"], key=lambda c: c["case_id"]):
        rc = ref_cases[case["case_id"]]
        cells = [f"{fmt(case['classes'][k]['dice'])} / {fmt(rc['classes'][k]['dice'])}" for k in keys]
        print(f"| {case['case_id']} | " + " | ".join(cells) + " |")
    print("\n### Wall time (seconds; 1-min load average at start/end)\n")
    with (out / "timings.tsv").open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    print("| side | step | seconds | load start | load end |")
    print("|---|---|---|---|---|")
    totals: dict[str, float] = {}
    for row in rows:
        cells = [row["side"], row["step"], row["seconds"], row["load_1min_start"], row["load_1min_end"]]
        print("| " + " | ".join(cells) + " |")
        if row["step"].startswith("train"):
            totals[row["side"]] = totals.get(row["side"], 0.0) + float(row["seconds"])
    for side, total in totals.items():
        print(f"\n{side}: training + out-of-fold prediction over all folds {total:.0f} s")


if __name__ == "__main__":
    main()
