"""Train one fold of the reference nnU-Net v2 with an exact epochs x iterations budget.

Run it with the reference venv's python (/work/refvenv/bin/python).

Why this wrapper: nnU-Net's trainer hard-codes 250 iterations per epoch and 50 validation
iterations, and its shipped variants (nnUNetTrainer_1epoch, _5epochs, ...) only change the
number of epochs. On the loaded 2-core bench machine one iteration takes ~20 s, so the parity
run needs fewer iterations. This script defines a subclass that changes ONLY
``num_epochs``, ``num_iterations_per_epoch`` and ``num_val_iterations_per_epoch`` and hands it
to nnU-Net's own ``run_training`` (same plans, same splits_final.json, same augmentation, same
final validation with mirroring), by making nnU-Net's trainer lookup return it. Nothing of
nnU-Net is copied; it is only imported and run.

    nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=... \
    /work/refvenv/bin/python bench/parity/ref_train.py 501 0 --epochs 1 --iterations 250 --val-iterations 50
"""

from __future__ import annotations

import argparse
import multiprocessing

import nnunetv2.run.run_training as rt
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

TRAINER_NAME = "nnUNetTrainer_Parity"


def make_trainer(epochs: int, iterations: int, val_iterations: int) -> type:
    class nnUNetTrainer_Parity(nnUNetTrainer):
        # nnU-Net's __init__ records its arguments by name, so the signature must be spelled out
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = epochs
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = val_iterations

    return nnUNetTrainer_Parity


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset")
    parser.add_argument("fold", type=int)
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--iterations", type=int, default=250)
    parser.add_argument("--val-iterations", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--plans", default="nnUNetPlans", help="plans identifier (e.g. a plan matched to ours)")
    args = parser.parse_args()

    if args.device == "cpu":  # what nnUNetv2_train -device cpu does before training
        torch.set_num_threads(multiprocessing.cpu_count())
    trainer = make_trainer(args.epochs, args.iterations, args.val_iterations)
    original = rt.recursive_find_trainer_class_by_name
    rt.recursive_find_trainer_class_by_name = lambda name: trainer if name == TRAINER_NAME else original(name)
    rt.run_training(args.dataset, args.configuration, args.fold, trainer_class_name=TRAINER_NAME,
                    plans_identifier=args.plans, device=torch.device(args.device))


if __name__ == "__main__":
    main()
