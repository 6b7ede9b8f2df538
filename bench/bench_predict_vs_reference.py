"""Whole-command CPU prediction side by side with the reference, same model, same 8x mirroring.

Usage (numbers and machine: docs/benchmarks/prediction-cpu-side-by-side.md):

    python bench/bench_predict_vs_reference.py setup --root /tmp/bps
    python bench/bench_predict_vs_reference.py run --root /tmp/bps --repeats 2 --threads 2
    python bench/bench_predict_vs_reference.py network --root /tmp/bps --threads 2

``setup`` writes the demo task, trains our 3d_fullres fold 0 for a few iterations, exports it with
``selfunet export-model --format nnunet`` (an nnU-Net v2 trainer folder the reference's
``nnUNetv2_predict_from_modelfolder`` loads) and imports that folder back with
``selfunet import-nnunet`` into ``model.zip``: both sides then predict with the same weights.

``setup --zoom F`` scales the test images by F along every axis at the same spacing (linear
interpolation): larger anatomy, more windows per case, so the network dominates as it does on
real scans.

``run`` interleaves the whole commands (reference; ours in fp32 with its default network runtime;
ours in fp32 with ``--backend torch``; ours with every default, where ``--amp auto`` may pick
bf16; then again) on the test images with the same thread count, and reports
per run: wall time, CPU time of the process tree,
time to the end of the imports (``python -X importtime``, a separate run), and from one cProfile
run of each side the shares of model loading, the network's forward passes, reverting and
writing. Labels are compared voxel by voxel per case.

``network`` times the network alone on one preprocessed-size window of this model: torch's eager
default (fp32, 8 mirrored passes one after the other, as the sliding window does per window),
channels-last, ``torch.compile``, the 8 mirrors as one batch of 8, the product's OpenVINO
compilation (:mod:`selfunet.inference.openvino_network`), and ONNX Runtime (where importable, e.g.
from ``--ort-path``).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: the reference's venv python (bench/reference/setup_reference.sh prints it last)
REF_PYTHON = os.environ.get("SELFUNET_REFERENCE_PYTHON", "python")
DATASET = "Dataset935_PredictBench"
TRAINER_FOLDER = f"{DATASET}/nnUNetTrainer__selfunetPlans__3d_fullres"


def checkpoint_of(root: Path) -> Path:
    return root / "work" / "train" / "3d_fullres" / "fold_0" / "checkpoint_final.pt"


def sh(args: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=True, env=env, **kw)


def zoom_test_images(images: Path, factor: float) -> None:
    """Every image of ``images`` resampled to ``factor`` times its size at the same spacing."""
    import SimpleITK as sitk

    for file in sorted(images.glob("*.nii.gz")):
        image = sitk.ReadImage(str(file))
        size = [max(1, round(n * factor)) for n in image.GetSize()]
        # the same physical extent sampled finer, then relabelled with the original spacing
        finer = [sp * n / m for sp, n, m in zip(image.GetSpacing(), image.GetSize(), size)]
        zoomed = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), finer,
                               image.GetDirection(), 0.0, image.GetPixelID())
        zoomed.SetSpacing(image.GetSpacing())
        sitk.WriteImage(zoomed, str(file))


def setup(root: Path, cases: int, test_cases: int, iterations: int, zoom: float = 1.0) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import convert_msd_to_nnunetv2

    from selfunet.evaluation.ensemble import Selection
    from selfunet.inference.postprocess import PostprocessingRule

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    data, work = root / "data", root / "work"
    sh(["selfunet", "demo-data", data, "--cases", cases, "--test-cases", test_cases])
    sh(["selfunet", "fingerprint", data, "-w", work])
    sh(["selfunet", "plan", work])
    sh(["selfunet", "preprocess", work, "-c", "3d_fullres"])
    sh(["selfunet", "train", work, "-c", "3d_fullres", "-f", "0", "--epochs", "1",
        "--iterations-per-epoch", iterations, "--validation-iterations", "1", "--device", "cpu", "--amp", "off",
        "--no-predict-validation"])
    Selection(selected="3d_fullres", members=["3d_fullres"], postprocessing=PostprocessingRule(), candidates=[],
              labels={"1": "organ", "2": "lesion"}, file_ending=".nii.gz",
              num_cases=cases).save(work / "selection.json")
    sh(["selfunet", "export-model", work, "--format", "nnunet", "-o", root / "nnunet_results", "--nnunet-dataset",
        DATASET])
    sh(["selfunet", "import-nnunet", root / "nnunet_results" / TRAINER_FOLDER, "-o", root / "model.zip"])
    convert_msd_to_nnunetv2(data, root / "raw")  # imagesTs as NAME_0000.nii.gz, ... for both sides
    if zoom != 1.0:
        zoom_test_images(root / "raw" / "imagesTs", zoom)


def env_for(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), nnUNet_raw="/nonexistent",
               nnUNet_preprocessed="/nonexistent", nnUNet_results="/nonexistent", PYTHONWARNINGS="ignore")
    return env


def command(side: str, root: Path, out: Path) -> list[str]:
    images = root / "raw" / "imagesTs"
    if side == "old":  # an earlier tree of selfunet (--old-tree), same interpreter
        return [sys.executable, "-m", "selfunet.cli", "predict", str(images), "-o", str(out), "--model",
                str(root / "model.zip"), "--device", "cpu", "--amp", "off"]
    if side in ("ours", "ours-torch", "ours-defaults"):
        # ours: fp32 as the reference, the default runtime; ours-torch: fp32 in torch;
        # ours-defaults: every default (--amp auto picks bf16 where measured faster, --backend auto)
        options = {"ours": ["--amp", "off"], "ours-torch": ["--amp", "off", "--backend", "torch"],
                   "ours-defaults": []}[side]
        return ["selfunet", "predict", str(images), "-o", str(out), "--model", str(root / "model.zip"),
                "--device", "cpu", *options]
    tool = Path(REF_PYTHON).parent / "nnUNetv2_predict_from_modelfolder"
    return [str(tool), "-i", str(images), "-o", str(out), "-m", str(root / "nnunet_results" / TRAINER_FOLDER),
            "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"]


def python_of(side: str) -> str:
    return REF_PYTHON if side == "ref" else sys.executable


def as_python(side: str, cmd: list[str], flags: list[str]) -> list[str]:
    """The console script run through its python with extra interpreter flags."""
    return [python_of(side), *flags, cmd[0], *cmd[1:]] if side == "ref" else \
        [python_of(side), *flags, "-m", "selfunet.cli", *cmd[1:]]


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = os.times()
    if proc.returncode:
        raise SystemExit(f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def import_seconds(side: str, env: dict, root: Path) -> float:
    """Cumulative import time (python -X importtime) of one whole predict run."""
    out = root / "tmp_importtime"
    shutil.rmtree(out, ignore_errors=True)
    cmd = as_python(side, command(side, root, out), ["-X", "importtime"])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    total = 0
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = line.split("|")
            try:
                self_us = int(parts[0].split(":")[1])
            except ValueError:
                continue
            total += self_us
    return total / 1e6


PROFILE_GROUPS = {  # substring of "file:function" -> bucket (first match wins)
    "network": ["torch/nn/modules/module.py:_call_impl", "torch/nn/modules/module.py:_wrapped_call_impl"],
}


def profile_run(side: str, env: dict, root: Path) -> dict:
    """One cProfile run of the whole command: cumulative seconds of its main phases."""
    out, prof = root / "tmp_profile", root / f"profile_{side}.pstats"
    shutil.rmtree(out, ignore_errors=True)
    cmd = as_python(side, command(side, root, out), ["-m", "cProfile", "-o", str(prof)])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    stats = pstats.Stats(str(prof)).stats
    total = max(v[3] for v in stats.values())

    def cum(pred) -> float:
        # the outermost matching frame's cumulative time: sum of entries whose callers do not match
        best = 0.0
        for (file, _, func), (_, _, _, ct, callers) in stats.items():
            if pred(file, func) and not any(pred(cf, cfn) for (cf, _, cfn) in callers):
                best += ct
        return best

    def is_forward(file: str, func: str) -> bool:
        return file.endswith("torch/nn/modules/module.py") and func in ("_wrapped_call_impl", "_call_impl")

    def named(*names):
        return lambda file, func: func in names and ("selfunet" in file or "nnunetv2" in file)

    def import_pred(file: str, func: str) -> bool:
        return file == "<frozen importlib._bootstrap>" and func in ("_find_and_load",)

    phases = {
        "total (profiled)": total,
        "imports": cum(import_pred),
        "network forward": cum(is_forward),
        "torch.load": cum(lambda f, fn: fn == "load" and f.endswith("torch/serialization.py")),
    }
    if side == "ours":
        phases.update({
            "load model (selfunet)": cum(named("load_model_archive", "open_model", "load_members", "_load_members",
                                               "load_member")),
            "read images": cum(named("read_image", "read_case", "read_channels")),
            "revert (resample back)": cum(named("revert_slabs", "revert_slab", "revert_to_original", "revert")),
            "write": cum(named("write_image", "write_label_map", "write_segmentation")),
            "network runtime choice + OpenVINO compilation": cum(named("for_inference")),
        })
    else:
        phases.update({
            "load model (ref)": cum(named("initialize_from_trained_model_folder")),
            "revert (ref export)": cum(named("convert_predicted_logits_to_segmentation_with_correct_shape",
                                             "export_prediction_from_logits")),
            "sliding window (ref)": cum(named("predict_sliding_window_return_logits")),
        })
    return {k: round(v, 3) for k, v in phases.items()}


def top_functions(side: str, root: Path, n: int = 25) -> list[str]:
    stats = pstats.Stats(str(root / f"profile_{side}.pstats"))
    rows = []
    for (file, line, func), (_, _, tt, ct, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][3])[:n * 4]:
        if "selfunet" in file or "nnunetv2" in file:
            rows.append(f"{ct:8.3f} {tt:8.3f}  {Path(file).name}:{line} {func}")
    return rows[:n]


def labels_agreement(a: Path, b: Path) -> dict:
    import numpy as np
    import SimpleITK as sitk

    rows = {}
    for file in sorted(a.glob("*.nii.gz")):
        x = sitk.GetArrayFromImage(sitk.ReadImage(str(file)))
        y = sitk.GetArrayFromImage(sitk.ReadImage(str(b / file.name)))
        rows[file.name[:-7]] = {"shape": list(x.shape), "agree_%": round(100.0 * float(np.mean(x == y)), 4)}
    return rows


def run(root: Path, repeats: int, threads: int, profile: bool, old_tree: str | None = None) -> dict:
    """``old_tree``: a folder holding an earlier ``selfunet/`` (``git archive COMMIT selfunet | tar -x``),
    timed as a third side to see which change moved the ratio."""
    env = env_for(threads)
    sides = ("ref", "ours", "ours-torch", "ours-defaults", *(("old",) if old_tree else ()))
    walls: dict[str, list[float]] = {side: [] for side in sides}
    cpus: dict[str, list[float]] = {side: [] for side in sides}
    for r in range(repeats):
        for side in sides:
            out = root / f"out_{side}"
            shutil.rmtree(out, ignore_errors=True)
            side_env = {**env, "PYTHONPATH": old_tree} if side == "old" else env
            wall, cpu = timed(command(side, root, out), side_env)
            walls[side].append(round(wall, 2))
            cpus[side].append(round(cpu, 2))
            print(f"repeat {r} {side}: wall {wall:.2f} s, cpu {cpu:.2f} s", flush=True)
    result = {"threads": threads, "wall_s": walls, "cpu_s": cpus,
              "median_wall_s": {k: statistics.median(v) for k, v in walls.items()},
              "ratio_ours_over_ref": round(statistics.median(walls["ours"]) / statistics.median(walls["ref"]), 3),
              "ratio_ours_torch_over_ref": round(statistics.median(walls["ours-torch"]) /
                                                 statistics.median(walls["ref"]), 3),
              "agreement": labels_agreement(root / "out_ref", root / "out_ours"),
              "agreement_torch_vs_ref": labels_agreement(root / "out_ref", root / "out_ours-torch"),
              "agreement_default_vs_torch": labels_agreement(root / "out_ours-torch", root / "out_ours"),
              "ratio_ours_defaults_over_ref": round(statistics.median(walls["ours-defaults"]) /
                                                    statistics.median(walls["ref"]), 3),
              "agreement_defaults_vs_ref": labels_agreement(root / "out_ref", root / "out_ours-defaults"),
              "load_after": os.getloadavg(),
              "cases": len(list((root / "out_ours").glob("*.nii.gz")))}
    result["import_s"] = {side: round(import_seconds(side, env, root), 2) for side in ("ref", "ours")}
    if old_tree:
        result["agreement_old_vs_ours"] = labels_agreement(root / "out_old", root / "out_ours")
    if profile:
        result["profile_s"] = {side: profile_run(side, env, root) for side in ("ref", "ours")}
        result["top_functions"] = {side: top_functions(side, root) for side in ("ref", "ours")}
    return result


# ------------------------------------------------------------------ network variants -----------
def network_variants(root: Path, threads: int, repeats: int, ort_path: str | None) -> dict:
    """Seconds for one window's 8 mirrored passes, per way of running the same network."""
    import itertools

    import numpy as np
    import torch

    from selfunet.inference.predict import load_trained_model

    torch.set_num_threads(threads)
    model = load_trained_model(checkpoint_of(root), torch.device("cpu"))
    net = model.network.eval()
    patch = list(model.configuration.patch_size)
    channels = model.plan.input_channels(model.configuration.name)
    x = torch.randn(1, channels, *patch, generator=torch.Generator().manual_seed(0))
    subsets = [c for r in range(4) for c in itertools.combinations((0, 1, 2), r)]
    results: dict = {"patch": patch, "channels": channels, "threads": threads, "repeats": repeats,
                     "torch": torch.__version__}

    def mirrored(forward, inp):
        total = forward(inp).clone()
        for subset in subsets[1:]:
            dims = [a + 2 for a in subset]
            total += torch.flip(forward(torch.flip(inp, dims)), dims)
        return total / len(subsets)

    def batched(forward, inp):
        stack = torch.cat([torch.flip(inp, [a + 2 for a in s]) if s else inp for s in subsets])
        out = forward(stack)
        total = out[0:1].clone()
        for i, s in enumerate(subsets[1:], start=1):
            total += torch.flip(out[i:i + 1], [a + 2 for a in s])
        return total / len(subsets)

    variants: dict = {}
    with torch.inference_mode():
        reference = mirrored(net, x)
        results["max |averaged logit| (default)"] = float(reference.abs().max())
        variants["default fp32 (8 passes of 1)"] = lambda: mirrored(net, x)
        variants["8 mirrors as one batch of 8"] = lambda: batched(net, x)
        net_cl = load_trained_model(checkpoint_of(root), torch.device("cpu")).network.eval()
        net_cl = net_cl.to(memory_format=torch.channels_last_3d)
        x_cl = x.contiguous(memory_format=torch.channels_last_3d)
        variants["channels-last (8 passes of 1)"] = lambda: mirrored(net_cl, x_cl)
        variants["channels-last, batch of 8"] = lambda: batched(net_cl, x_cl)
    try:
        compiled = torch.compile(net)
        with torch.inference_mode():
            start = time.perf_counter()
            compiled(x)
            results["torch.compile first call (compile) s"] = round(time.perf_counter() - start, 2)
        variants["torch.compile (8 passes of 1)"] = lambda: mirrored(compiled, x)
    except Exception as error:  # a missing compiler is a result, not a crash
        results["torch.compile"] = f"failed: {type(error).__name__}: {str(error)[:200]}"
    try:
        from selfunet.inference import openvino_network

        start = time.perf_counter()
        ov_net = openvino_network.compile_network(net, patch, "f32", threads, cache=None)
        results["openvino conversion + compilation s"] = round(time.perf_counter() - start, 2)
        results["openvino"] = openvino_network.openvino_version()
        variants["openvino, the product's (8 passes of 1)"] = lambda: mirrored(ov_net, x)
        variants["openvino, batch of 8"] = lambda: batched(ov_net, x)
    except Exception as error:
        results["openvino error"] = f"{type(error).__name__}: {str(error)[:300]}"
    if ort_path:
        sys.path.insert(0, ort_path)
    try:
        import onnxruntime as ort

        onnx_file = root / "network.onnx"
        with torch.no_grad():
            torch.onnx.export(net, x, str(onnx_file), input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])

        def ort_forward(inp):
            return torch.from_numpy(session.run(["y"], {"x": np.ascontiguousarray(inp.numpy())})[0])

        results["onnxruntime"] = ort.__version__
        variants["onnxruntime (8 passes of 1)"] = lambda: mirrored(ort_forward, x)
        variants["onnxruntime (batch of 8)"] = lambda: batched(ort_forward, x)
    except Exception as error:
        results["onnxruntime error"] = f"{type(error).__name__}: {str(error)[:300]}"
    # round robin, so every variant sees the same machine load
    times: dict = {name: [] for name in variants}
    with torch.inference_mode():
        for name, fn in variants.items():
            fn()  # warm-up
            results[f"max |diff| {name}"] = float((fn() - reference).abs().max())
        for _ in range(repeats):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        results[name] = statistics.median(values)
        results[f"{name} all"] = [round(v, 3) for v in values]
    results["load_after"] = os.getloadavg()
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["setup", "run", "network"])
    parser.add_argument("--root", type=Path, required=True, help="scratch folder for data, models and predictions")
    parser.add_argument("--cases", type=int, default=8, help="setup: training cases of the demo task")
    parser.add_argument("--test-cases", type=int, default=3, help="setup: test cases predicted")
    parser.add_argument("--iterations", type=int, default=5, help="setup: training iterations")
    parser.add_argument("--zoom", type=float, default=1.0, help="setup: scale the test images by this per axis")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--old-tree", default=None, help="run: also time the selfunet/ found in this folder")
    parser.add_argument("--ort-path", default=None, help="network: a folder holding onnxruntime (pip --target)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here too")
    args = parser.parse_args()
    if args.step == "setup":
        setup(args.root, args.cases, args.test_cases, args.iterations, args.zoom)
        return
    if args.step == "run":
        result = run(args.root, args.repeats, args.threads, not args.no_profile, args.old_tree)
    else:
        result = network_variants(args.root, args.threads, args.repeats, args.ort_path)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
