"""The autoencoder inferer: slice context with edge repetition, batching, volumes and anomaly maps."""

from __future__ import annotations

import pytest
import torch

from pddpm_monai.inferers.autoencoder import AutoEncoderInferer, autoencoder_reconstruction, slice_context


def test_slice_context_stacks_neighbours_and_repeats_the_edges():
    slices = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1).expand(4, 1, 2, 2)
    stacked = slice_context(slices, 1)
    assert stacked.shape == (4, 3, 2, 2)
    assert stacked[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert slice_context(slices, 0) is slices
    with pytest.raises(ValueError, match="non-negative"):
        slice_context(slices, -1)


def test_reconstruction_is_chunked_without_changing_the_result():
    calls = []

    def network(x):
        calls.append(x.shape[0])
        return x[:, 1:2] * 2  # the centre slice of a context of 1

    slices = torch.rand(7, 1, 4, 4)
    out = autoencoder_reconstruction(slices, network, context=1, max_batch=3)
    assert calls == [3, 3, 1]
    torch.testing.assert_close(out, slices * 2)


def test_inferer_on_volumes_and_anomaly_maps():
    volume = torch.rand(2, 1, 4, 4, 6)
    half = AutoEncoderInferer(slice_batch=4)(volume, lambda x: x * 0.5)
    torch.testing.assert_close(half, volume * 0.5)
    anomaly = AutoEncoderInferer(return_anomaly_map=True)(volume[0, ..., 0][None], lambda x: x * 0.5)
    torch.testing.assert_close(anomaly, (volume[0, ..., 0][None] * 0.5).abs())
    with pytest.raises(ValueError, match="slices"):
        AutoEncoderInferer()(torch.rand(4, 4), lambda x: x)
