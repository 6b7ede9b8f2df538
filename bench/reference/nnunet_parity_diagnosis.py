"""Where selfunet's prediction of an nnU-Net model differs from nnU-Net's, stage by stage, for one case.

    python bench/reference/nnunet_parity_diagnosis.py TRAINER_FOLDER IMAGES_FOLDER CASE \\
        [--reference-python $SELFUNET_REFERENCE_PYTHON]

TRAINER_FOLDER is an nnU-Net v2 trainer folder (fold 0 is used), IMAGES_FOLDER holds
``CASE_0000.nii.gz`` ... The reference's python (its venv, bench/reference/setup_reference.sh)
preprocesses the case with nnU-Net's DefaultPreprocessor, predicts its logits on the network's
grid with ``nnUNetPredictor`` as shipped (window logits summed in float16) and with the sums in
float32, and predicts the case end to end (``predict_from_files_sequential``, probabilities saved);
no mirroring throughout. This script then imports the model and compares, printing one line each:

1. preprocessing: our array against nnU-Net's (where they differ: within 3 voxels of the crop
   box's border, or inside);
2. the network's grid: our sliding window on nnU-Net's array against its float16 and float32
   logits, and once more with nnU-Net's Gaussian weight map (centre ``patch // 2``,
   ``scipy.ndimage.gaussian_filter`` of a delta) in place of ours;
3. back on the image grid: our probabilities (softmax, then resampled) and the same logits reverted
   in nnU-Net v2's order (resampled, then softmax) against nnU-Net's saved probabilities.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

REFERENCE = r'''
import json, sys, numpy as np, torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
import nnunetv2.inference.predict_from_raw_data as predictor_module
from nnunetv2.inference import sliding_window_prediction
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
folder, files, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
torch.set_num_threads(2)
p = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), perform_everything_on_device=False,
                    allow_tqdm=False)
p.initialize_from_trained_model_folder(folder, use_folds=(0,), checkpoint_name="checkpoint_final.pth")
data, _, _ = DefaultPreprocessor(verbose=False).run_case(files, None, p.plans_manager, p.configuration_manager,
                                                          p.dataset_json)
logits16 = p.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float().numpy()
p.predict_from_files_sequential([files], out, save_probabilities=True, overwrite=True,
                                folder_with_segs_from_prev_stage=None)
torch.half = torch.float32  # the same predictor with its sums in float32
gaussian = sliding_window_prediction.compute_gaussian.__wrapped__
predictor_module.compute_gaussian = lambda *a, **k: gaussian(*a, **{**k, "dtype": torch.float32})
logits32 = p.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float().numpy()
np.savez(out + "/arrays.npz", data=data, logits16=logits16, logits32=logits32)
'''


def _nnunet_gaussian(patch, sigma_fraction: float = 1 / 8) -> torch.Tensor:
    from scipy.ndimage import gaussian_filter

    delta = np.zeros(patch)
    delta[tuple(p // 2 for p in patch)] = 1
    weights = gaussian_filter(delta, [p * sigma_fraction for p in patch], 0, mode="constant", cval=0)
    weights = torch.from_numpy(weights / weights.max()).float()
    weights[weights == 0] = weights[weights > 0].min()
    return weights


def _stats(diff: np.ndarray) -> str:
    return f"max {diff.max():.3g}, mean {diff.mean():.2g}, p99.9 {np.quantile(diff, 0.999):.3g}"


def main() -> None:
    import selfunet.inference.sliding_window as sliding_window
    from selfunet.inference.predict import InputCase, inference_config, read_input_case
    from selfunet.interop.nnunet_import import import_nnunet
    from selfunet.model_archive import load_model_archive
    from selfunet.preprocessing.preprocess import preprocess_image_for_inference
    from selfunet.preprocessing.revert import revert_probabilities, uncrop

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trainer_folder", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("case")
    parser.add_argument("--reference-python", default=os.environ.get("SELFUNET_REFERENCE_PYTHON"))
    args = parser.parse_args()
    files = sorted(args.images.glob(f"{args.case}_[0-9][0-9][0-9][0-9]*"))
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([args.reference_python, "-c", REFERENCE, str(args.trainer_folder),
                        json.dumps([str(f) for f in files]), tmp], check=True, capture_output=True)
        reference = dict(np.load(Path(tmp) / "arrays.npz"))
        saved = np.load(Path(tmp) / f"{args.case}.npz")["probabilities"].astype(np.float32)
        import_nnunet(args.trainer_folder, Path(tmp) / "model.zip", folds=["0"], postprocessing="none")
        loaded = load_model_archive(Path(tmp) / "model.zip", torch.device("cpu"))
    model = loaded.models[loaded.members[0]][0]
    image, geometry = read_input_case(InputCase(args.case, tuple(files), args.case), len(files))
    data, properties = preprocess_image_for_inference(image, geometry, model.plan, model.configuration, args.case)

    diff = np.abs(data - reference["data"])
    border = np.ones(diff.shape[1:], bool)
    border[tuple(slice(3, -3) if n > 6 else slice(None) for n in diff.shape[1:])] = False
    print(f"1. preprocessing {list(data.shape)}: |ours - nnU-Net| {_stats(diff)}; > 1e-3 at "
          f"{(diff[:, border] > 1e-3).sum()} border and {(diff[:, ~border] > 1e-3).sum()} inner voxels, > 0.1 at "
          f"{(diff[:, border] > 0.1).sum()} / {(diff[:, ~border] > 0.1).sum()}")

    config = inference_config(model.configuration, False, None, torch.device("cpu"))

    def logits() -> np.ndarray:
        return sliding_window.predict_sliding_window(model.network, torch.from_numpy(reference["data"]),
                                                     model.configuration.patch_size, loaded.plan.num_outputs,
                                                     config).numpy()

    ours = logits()
    original = sliding_window.gaussian_importance_map
    sliding_window.gaussian_importance_map = lambda patch, sigma=1 / 8: _nnunet_gaussian(patch, sigma)
    try:
        with_theirs = logits()
    finally:
        sliding_window.gaussian_importance_map = original
    for name, values in (("ours", ours), ("ours with nnU-Net's Gaussian", with_theirs)):
        for kind in ("logits16", "logits32"):
            delta = np.abs(values - reference[kind])
            agree = (values.argmax(0) == reference[kind].argmax(0)).mean()
            print(f"2. logits, {name} vs nnU-Net's ({kind[-2:]}-bit sums): {_stats(delta)}; argmax equal on "
                  f"{100 * agree:.3f}% of the voxels")

    softmax = loaded.plan.label_scheme.activation == "softmax"

    def activation(values: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(values))
        return (torch.softmax(tensor, 0) if softmax else torch.sigmoid(tensor)).numpy()

    def full(crop: np.ndarray) -> np.ndarray:
        return np.stack([uncrop(c, properties, fill=1.0 if k == 0 and softmax else 0.0)
                         for k, c in enumerate(crop)]).reshape(saved.shape)

    resampling = model.configuration.resampling
    ours_logits = sliding_window.predict_sliding_window(  # our whole chain: on our own preprocessed array
        model.network, torch.from_numpy(data), model.configuration.patch_size, loaded.plan.num_outputs, config).numpy()
    for name, probabilities in (
            ("probabilities resampled (selfunet)", full(revert_probabilities(activation(ours_logits), properties,
                                                                             resampling))),
            ("logits resampled, then the softmax (nnU-Net v2's order)",
             full(activation(revert_probabilities(ours_logits, properties, resampling))))):
        print(f"3. image grid, {name}: |dp| {_stats(np.abs(probabilities - saved))}")


if __name__ == "__main__":
    main()
