"""Training batches: the device path (read on the host, augment on the device) is the CPU twin of
the CUDA path and gives the very batches the host path gives; process workers give the same
batches as threads, in order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fresh_interpreter

from selfunet.training.augment import AugmentationConfig, Augmenter
from selfunet.training.batches import RawBatch, TrainBatchSource, finish
from selfunet.training.loader import ProcessLoader, open_loader
from selfunet.training.sampling import PatchSampler

PATCH = (8, 20, 20)


@pytest.fixture
def source_parts(tmp_path: Path) -> tuple[PatchSampler, dict]:
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(12, 30, 28), (10, 26, 34)]):
        image = rng.standard_normal((2, *shape)).astype(np.float32)
        seg = np.zeros((1, *shape), dtype=np.int8)
        seg[0, 3:7, 5:15, 5:15] = 1
        seg[0, :, :3] = -1
        image[1][seg[0] < 0] = 0
        np.save(tmp_path / f"c{i}.npy", image)
        np.save(tmp_path / f"c{i}_seg.npy", seg)
        np.savez(tmp_path / f"c{i}_fg.npz", class_1=np.argwhere(seg[0] == 1).astype(np.int32))
        (tmp_path / f"c{i}.json").write_text(json.dumps({"case_id": f"c{i}", "classes_present": [1]}))
    config = AugmentationConfig(p_rotation=0.5, p_scaling=0.5, p_noise=0.5, p_blur=0.5)
    augmentation = dict(config=config, patch_size=PATCH, dimension=3, intensity_channels=2, mask_channels=[1])
    reader = Augmenter(device="cpu", **augmentation)
    sampler = PatchSampler(tmp_path, ["c0", "c1"], PATCH, batch_size=3, dimension=3,
                           read_patch_size=reader.read_patch_size)
    return sampler, augmentation


def test_device_path_gives_the_host_path_batches(source_parts: tuple[PatchSampler, dict]) -> None:
    """CUDA training reads raw boxes in the worker and augments with the device's augmenter; on
    the CPU that path must produce exactly the batches of augmenting in the worker."""
    sampler, augmentation = source_parts
    host = TrainBatchSource(sampler, Augmenter(device="cpu", **augmentation), seed=4, augment_here=True)
    device = TrainBatchSource(sampler, Augmenter(device="cpu", **augmentation), seed=4, augment_here=False)
    on_device = Augmenter(device="cpu", **augmentation)  # stands in for device="cuda"
    for index in range(4):
        raw = device(index)
        assert isinstance(raw, RawBatch)
        assert raw.boxes.voxels <= 3 * 3 * int(np.prod(sampler.read_patch_size))
        got_image, got_label = finish(raw, on_device)
        want_image, want_label = finish(host(index), on_device)
        assert got_image.shape == (3, 2, *PATCH) and got_label.dtype == torch.int64
        assert torch.equal(got_image, want_image) and torch.equal(got_label, want_label)
        assert (got_image[:, 1][got_label[:, 0] < 0] == 0).all()


@fresh_interpreter
def test_process_workers_give_the_thread_batches_in_order(source_parts: tuple[PatchSampler, dict]) -> None:
    sampler, augmentation = source_parts
    source = TrainBatchSource(sampler, Augmenter(device="cpu", **augmentation), seed=1, augment_here=True)
    with open_loader(source, start_index=5, prefetch=2, num_workers=1, mode="thread") as threads:
        expected = [next(threads) for _ in range(4)]
    with open_loader(source, start_index=5, prefetch=2, num_workers=2, mode="process") as processes:
        assert isinstance(processes, ProcessLoader)
        got = [next(processes) for _ in range(4)]
    for (a, b), (c, d) in zip(got, expected):
        assert torch.equal(a, c) and torch.equal(b, d)


@fresh_interpreter
def test_process_worker_error_reaches_the_consumer() -> None:
    with ProcessLoader(_fail_at_two, start_index=0, prefetch=2, num_workers=2) as loader:
        assert next(loader) == 0 and next(loader) == 1
        with pytest.raises(ValueError, match="item 2 is bad"):
            next(loader)


def _fail_at_two(index: int) -> int:
    if index == 2:
        raise ValueError("item 2 is bad")
    return index


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
def test_raw_batches_pin(source_parts: tuple[PatchSampler, dict]) -> None:
    sampler, augmentation = source_parts
    raw = TrainBatchSource(sampler, Augmenter(device="cpu", **augmentation), seed=0, augment_here=False)(0)
    pinned = raw.pin_memory()
    assert all(t.is_pinned() for t in pinned.boxes.images + pinned.boxes.labels)


@fresh_interpreter
def test_trainer_with_process_workers_trains_like_with_a_thread(tiny_work_template: Path, tmp_path: Path) -> None:
    """The same batches reach the network whichever loader mode: equal losses."""
    import shutil

    from rich.console import Console

    from selfunet.training.train import Trainer
    from selfunet.training.train_config import TrainConfig
    from selfunet.training.training_log import read_log

    losses = {}
    for mode, workers in (("thread", 1), ("process", 2)):
        work = Path(shutil.copytree(tiny_work_template, tmp_path / mode))
        config = TrainConfig(epochs=1, iterations_per_epoch=3, validation_iterations=1, predict_validation=False,
                             device="cpu", amp="off", seed=3, loader_mode=mode, loader_workers=workers)
        trainer = Trainer(work, "3d_fullres", 0, config, console=Console(quiet=True))
        trainer.run()
        losses[mode] = read_log(trainer.out / "log.jsonl")[0]["train_loss"]
    assert losses["process"] == pytest.approx(losses["thread"], rel=1e-5)
