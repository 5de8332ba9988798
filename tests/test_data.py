"""Data sets, transform presets, seeded loaders and the corrupt-image policy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ghostnet.data import (ArrayDataset, CorruptImageError, ResumableSampler, SeededDataset, TransformConfig,
                           collate_skipping, eval_transform, make_loader, open_split, subset, train_transform)
from ghostnet.train import make_config, read_training_state, train
from support.training import tiny_config, write_image_folder, write_npz_data

pytestmark = pytest.mark.usefixtures("one_thread")


def test_npz_shards_are_read_in_natural_order_with_class_names(tmp_path):
    root = write_npz_data(tmp_path, n_train=(3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1), n_val=5)  # train_0 .. train_10
    train_set = open_split(root, "train")
    shards = [np.load(root / f"train_{i}.npz")["images"] for i in range(11)]
    np.testing.assert_array_equal(train_set.images, np.concatenate(shards))  # train_10 last, not after train_1
    assert len(train_set) == 22 and len(open_split(root, "val")) == 5
    assert train_set.classes == ["class0", "class1", "class2", "class3"]
    image, label = train_set[4]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and label == int(train_set.targets[4])


@pytest.mark.slow
def test_real_cifar10_shards(shared_data):
    val = open_split(shared_data / "cifar10", "val")
    assert len(val) == 10000 and val.classes[0] == "airplane" and val.classes[-1] == "truck"


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((2, 8, 8), np.uint8), np.zeros(2, np.uint8), "uint8 N x H x W x 3"),
    (np.zeros((2, 8, 8, 3), np.float32), np.zeros(2, np.uint8), "uint8 N x H x W x 3"),
    (np.zeros((2, 8, 8, 3), np.uint8), np.zeros(3, np.uint8), "must be 2 integers"),
])
def test_bad_npz_is_a_clear_error(tmp_path, images, labels, message):
    np.savez(tmp_path / "train.npz", images=images, labels=labels)
    with pytest.raises(ValueError, match=message):
        ArrayDataset([tmp_path / "train.npz"])


def test_missing_arrays_and_missing_split_are_clear_errors(tmp_path):
    np.savez(tmp_path / "train.npz", pixels=np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="expected arrays 'images' and 'labels'"):
        open_split(tmp_path, "train")
    only_train = tmp_path / "only_train"
    only_train.mkdir()
    np.savez(only_train / "train_0.npz", images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="found no val data"):
        open_split(only_train, "val")
    with pytest.raises(FileNotFoundError, match="no such data folder"):
        open_split(tmp_path / "absent", "train")
    with pytest.raises(ValueError, match="unknown split"):
        open_split(tmp_path, "test")


def test_torchvision_cifar_is_only_downloaded_when_asked(tmp_path):
    with pytest.raises(ValueError, match="pass --download"):
        open_split("cifar10", "train", data_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_image_folder_with_display_names(tmp_path):
    root = write_image_folder(tmp_path, classes=("n01", "n02"))
    (root / "classes.txt").write_text("n01\tbeagle\nn02\tdingo\n")
    train_set = open_split(root, "train")
    assert train_set.classes == ["beagle", "dingo"] and len(train_set) == 8
    assert open_split(root / "val", "val").classes == ["beagle", "dingo"]  # a bare class-folder tree works for val


def _corrupt_tree(tmp_path):
    root = write_image_folder(tmp_path, per_class=4)
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return root, bad


def test_corrupt_image_error_names_the_file(tmp_path):
    root, bad = _corrupt_tree(tmp_path)
    dataset = open_split(root, "train")
    index = [str(p) for p, _ in dataset.samples].index(str(bad))
    with pytest.raises(CorruptImageError, match=f"{bad}: cannot read image"):
        dataset[index]


def test_corrupt_image_is_skipped_and_counted_when_asked(tmp_path):
    root, bad = _corrupt_tree(tmp_path)
    dataset = open_split(root, "train", eval_transform(TransformConfig(preset="cifar", img_size=16)),
                         skip_corrupt=True)
    batch = collate_skipping([dataset[i] for i in range(len(dataset))])
    assert len(batch) == len(dataset) - 1 and [s.path for s in batch.skipped] == [str(bad)]
    assert batch.images.shape == (len(dataset) - 1, 3, 16, 16)


def test_training_stops_on_a_corrupt_image_unless_skipping(tmp_path, capsys):
    root, bad = _corrupt_tree(tmp_path)
    values = tiny_config(root, tmp_path / "run", epochs=1, batch_size=13)  # all 13 images in one batch
    with pytest.raises(CorruptImageError, match=str(bad)):
        train(make_config(values))
    capsys.readouterr()
    train(make_config({**values, "skip_bad_images": 1, "output": str(tmp_path / "run2")}))
    assert f"skipped unreadable image (1 of at most 1): {bad}: cannot read image" in capsys.readouterr().err
    assert read_training_state(tmp_path / "run2" / "last.pt")["progress"]["global_step"] == 1


def test_splits_with_different_class_folders_are_refused_before_training(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=("cat", "dog", "fox"))
    for image in (root / "val" / "dog").iterdir():
        image.unlink()
    (root / "val" / "dog").rmdir()  # val's "fox" would be numbered 1, train's 2
    with pytest.raises(ValueError, match=r"different class folders \(only in train: dog; only in val: none\)"):
        train(make_config(tiny_config(root, tmp_path / "run", epochs=1)))
    assert not (tmp_path / "run" / "last.pt").exists()


def _augmented(loader_workers: int, dataset, sampler) -> torch.Tensor:
    loader = make_loader(SeededDataset(dataset), 4, sampler, workers=loader_workers)
    return torch.cat([batch.images for batch in loader])


def test_augmentation_depends_only_on_seed_epoch_and_index(tmp_path):
    root = write_npz_data(tmp_path, n_train=(12,))
    cfg = TransformConfig(preset="cifar", img_size=16, color_jitter=0.4, random_erasing=0.5)
    dataset = open_split(root, "train", train_transform(cfg))
    sampler = ResumableSampler(dataset, seed=3)
    sampler.set_epoch(1)
    reference = _augmented(0, dataset, sampler)
    assert torch.equal(reference, _augmented(2, dataset, sampler))  # worker processes do not change it
    sampler.set_start(4)
    assert torch.equal(reference[4:], _augmented(0, dataset, sampler))  # nor does starting mid-epoch
    sampler.set_start(0)
    sampler.set_epoch(2)
    assert not torch.equal(reference, _augmented(0, dataset, sampler))  # another epoch, another augmentation
    # Two processes see disjoint halves of the same permutation.
    shards = [list(ResumableSampler(dataset, 2, rank, seed=3)) for rank in (0, 1)]
    assert sorted(i for shard in shards for i, _ in shard) == list(range(12))


def test_transform_presets(tmp_path):
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (160, 240, 3), dtype=np.uint8))
    cfg = TransformConfig(img_size=128, crop_pct=0.875, randaugment=9, random_erasing=0.2)
    assert train_transform(cfg)(image).shape == (3, 128, 128)
    out = eval_transform(cfg)(image)
    assert out.shape == (3, 128, 128) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown transform preset"):
        TransformConfig(preset="coco")


def test_randaugment_magnitude_is_on_timms_0_to_10_scale():
    from torchvision.transforms import v2

    ra = next(t for t in train_transform(TransformConfig(img_size=64, randaugment=9)).transforms
              if isinstance(t, v2.RandAugment))
    def magnitude(op: str) -> float:  # what torchvision applies for `op` at this transform's magnitude
        return ra._AUGMENTATION_SPACE[op][0](ra.num_magnitude_bins, 64, 64)[ra.magnitude].item()

    assert magnitude("Rotate") == pytest.approx(27.0)  # timm m9: 0.9 x 30 degrees
    assert magnitude("ShearX") == pytest.approx(0.27)  # timm m9: 0.9 x 0.3
    with pytest.raises(ValueError, match="randaugment magnitude"):
        TransformConfig(randaugment=15)


def test_timm_randaugment_is_the_v2_commands_and_follows_the_sample_seed():
    pytest.importorskip("timm")
    from PIL import Image

    cfg = TransformConfig(img_size=64, randaugment=9, randaugment_impl="timm", randaugment_mstd=0.5)
    transform = train_transform(cfg)
    ra = next(t for t in transform.transforms if type(t).__name__ == "_OnPILImages").transform
    # timm's "rand-m9-mstd0.5": two ops per image, each applied with probability 0.5, magnitude 9 with noise 0.5
    assert ra.num_layers == 2 and len(ra.ops) > 10
    assert {(op.magnitude, op.magnitude_std, op.prob) for op in ra.ops} == {(9, 0.5, 0.5)}

    rng = np.random.default_rng(0)
    pil = Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8))
    images = [pil, torch.from_numpy(np.array(pil)).permute(2, 0, 1)]  # as ImageFolder and .npz data give them

    class Transformed(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(images[i])

    seeded = SeededDataset(Transformed())
    import random

    for seed in range(12):  # the same seed gives the same image, whatever the global generators did in between
        first = seeded[(0, seed)]
        random.random(), np.random.rand(), torch.rand(1)
        assert torch.equal(first, seeded[(0, seed)]), seed
    first = [seeded[(i, 7)] for i in (0, 1)]
    assert first[1].shape == first[0].shape == (3, 64, 64)  # image tensors (the .npz data sets) go through too
    assert not all(torch.equal(first[0], seeded[(0, s)]) for s in range(8, 12))  # other seeds, other draws
    # timm's "random" training interpolation: the crop picks bilinear or bicubic, and timm's ops pick their own
    randomly = train_transform(TransformConfig(img_size=64, randaugment=9, randaugment_impl="timm",
                                               train_interpolation="random"))
    crops = randomly.transforms[0].transforms
    assert sorted(c.interpolation.value for c in crops) == ["bicubic", "bilinear"]
    ra_random = next(t for t in randomly.transforms if type(t).__name__ == "_OnPILImages").transform
    assert "interpolation" not in ra_random.ops[0].hparams and "interpolation" in ra.ops[0].hparams
    with pytest.raises(ValueError, match="train_interpolation"):
        TransformConfig(train_interpolation="lanczos")
    with pytest.raises(ValueError, match="randaugment_mstd"):
        TransformConfig(randaugment=9, randaugment_mstd=0.5)  # torchvision's has no magnitude noise
    with pytest.raises(ValueError, match="randaugment_impl"):
        TransformConfig(randaugment=9, randaugment_impl="albumentations")


def test_transform_config_from_model_cfg_and_eval_dict_round_trip():
    from ghostnet.models import get_model_entry

    cfg = TransformConfig.from_model_cfg(get_model_entry("ghostnet_100").default_cfg)  # the official evaluation
    assert (cfg.img_size, cfg.crop_pct, cfg.interpolation) == (224, 0.875, "bicubic")  # timm, facts §1.5
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.preset == "imagenet"
    cifar = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 1.0,
             "interpolation": "bicubic"}
    cfg = TransformConfig.from_model_cfg(cifar, preset="cifar", crop_pct=None)  # None does not override
    assert (cfg.preset, cfg.img_size, cfg.crop_pct, cfg.interpolation, cfg.std) == \
        ("cifar", 32, 1.0, "bicubic", (0.25, 0.25, 0.25))
    stored = cfg.eval_dict()
    assert stored["mean"] == [0.5, 0.5, 0.5] and stored["img_size"] == 32  # plain types for weights_only loads
    back = TransformConfig.from_eval_dict(stored)
    assert back.eval_dict() == stored
    assert TransformConfig.from_eval_dict(stored, img_size=48).img_size == 48
    with pytest.raises(ValueError, match="unknown interpolation"):
        TransformConfig.from_model_cfg({"interpolation": "lanczos"})


def test_subset_is_fixed_and_mixes_classes(tmp_path):
    root = write_image_folder(tmp_path, per_class=4)
    dataset = open_split(root, "train")
    first, second = subset(dataset, 6), subset(dataset, 6)
    assert first.indices == second.indices and len({dataset.targets[i] for i in first.indices}) > 1
    assert subset(dataset, 100) is dataset
