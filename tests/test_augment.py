"""EDM's non-leaky augmentation: exact geometry, label layout and rates, labels reach the network in training."""

import math

import torch

from msrepro.training.augment import AUGMENT_DIM, augment, warp


def test_warp_rotates_by_ninety_degrees_and_translates_by_whole_pixels():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    quarter = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64).expand(2, 2, 3)
    torch.testing.assert_close(warp(x, quarter), torch.rot90(x, 1, (2, 3)))
    shift = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]], dtype=torch.float64).expand(2, 2, 3)
    torch.testing.assert_close(warp(x, shift)[..., :6], x[..., 2:])  # output(x) = input(x + 2), interior


def test_p_zero_is_the_identity_with_zero_labels():
    x = torch.rand(16, 1, 8, 8)
    y, labels = augment(x, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(y, x) and labels.shape == (16, AUGMENT_DIM) and not labels.any()


def test_label_rates_follow_p():
    p, n = 0.12, 20000
    x = torch.zeros(n, 1, 4, 4)
    _, lab = augment(x, p, torch.Generator().manual_seed(1))
    tol = lambda q: 5 * math.sqrt(q * (1 - q) / n)  # noqa: E731
    assert abs(lab[:, 0].mean() - 0.5) < tol(0.5)            # x-flip: always eligible, a fair coin
    assert abs(lab[:, 1].mean() - p / 2) < tol(p / 2)        # y-flip: eligible with p, then a fair coin
    for col in (2, 4, 7):                                    # scale, rotation (sin), translation x: gated by p
        assert abs((lab[:, col] != 0).float().mean() - p) < tol(p)
    assert lab[:, 3].le(0).all() and lab[:, 3].ge(-2).all()  # cos(angle) - 1


def test_training_feeds_the_labels_to_the_network(tmp_path):
    from msrepro.runconfig import load_config
    from msrepro.training.distributed import DistInfo
    from msrepro.training.loop import Trainer

    cfg = load_config([], ["model.backbone=edm", "model.preset=smoke", "dataset.resolution=8",
                           "model.params.channel_mult=[1]", "model.params.attn_resolutions=[]", "train.batch_size=8",
                           "train.heldout_size=8", "train.augment_p=1.0", f"output_dir={tmp_path}", "name=aug"])
    tr = Trainer(cfg, DistInfo())
    weight = tr.model.net.encoders[0].map_augment.weight
    before = weight.detach().clone()
    tr.train_step(0)
    assert not torch.equal(before, weight.detach())  # the augmentation embedding was trained
