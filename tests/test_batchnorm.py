"""BatchNorm re-estimation: running statistics become the data's, modes and momenta come back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from octswap.batchnorm import recalibrate_batchnorm


def reference_stats(conv: nn.Conv2d, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal-weight average over batches of each batch's channel mean and unbiased variance."""
    means, variances = [], []
    with torch.no_grad():
        for x in inputs:
            y = conv(x).transpose(0, 1).reshape(conv.out_channels, -1)
            means.append(y.mean(1))
            variances.append(y.var(1, unbiased=True))
    return torch.stack(means).mean(0), torch.stack(variances).mean(0)


def test_running_stats_become_the_data_and_modes_return():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU())
    net.train()
    net[2].eval()  # a frozen BatchNorm inside a training model stays frozen afterwards
    inputs = [torch.randn(6, 3, 8, 8) * 2 + 5 for _ in range(4)]
    used = recalibrate_batchnorm(net, inputs, batches=3)
    mean, var = reference_stats(net[0], inputs[:3])  # dropout off: it would change the statistics
    assert used == 3
    assert torch.allclose(net[2].running_mean, mean, atol=1e-5)
    assert torch.allclose(net[2].running_var, var, rtol=1e-4)
    assert net[2].momentum == 0.3 and int(net[2].num_batches_tracked) == 3
    assert [m.training for m in net] == [True, True, False, True] and net.training


def test_octave_model_statistics_are_re_estimated(tiny_resnet):
    import octswap

    converted, _ = octswap.convert(tiny_resnet, alpha=0.5, input_shape=(3, 16, 16))
    bn_l = converted.get_submodule("layer1.bn1").bn_l
    before = bn_l.running_mean.clone()
    recalibrate_batchnorm(converted, [(torch.randn(4, 3, 16, 16) + 3, torch.zeros(4)) for _ in range(2)])
    assert not torch.allclose(bn_l.running_mean, before)
    assert not converted.training


def test_empty_loader_leaves_statistics_alone():
    bn = nn.BatchNorm2d(2)
    bn.running_mean.fill_(7)
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_batchnorm(nn.Sequential(bn), [])
    assert torch.equal(bn.running_mean, torch.full((2,), 7.0)) and bn.momentum == 0.1
