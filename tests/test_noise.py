from __future__ import annotations

import pytest
import torch

from dps.noise import GaussianNoise, PoissonNoise, parse_noise


def test_gaussian_noise_statistics_and_seeding() -> None:
    x = torch.full((4, 3, 64, 64), 0.5, dtype=torch.float64)
    n = GaussianNoise(0.1)
    y = n(x, torch.Generator().manual_seed(0))
    assert float((y - x).std()) == pytest.approx(0.1, rel=0.02)
    torch.testing.assert_close(y, n(x, torch.Generator().manual_seed(0)), rtol=0, atol=0)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7, 8)]
    y_list = n(x, gens)
    torch.testing.assert_close(y_list[2:3], n(x[2:3], [torch.Generator().manual_seed(7)]), rtol=0, atol=0)
    assert GaussianNoise.authors().sigma == pytest.approx(0.025)
    assert torch.equal(GaussianNoise(0.0)(x), x)
    with pytest.raises(ValueError, match=r"sigma .* must be <= 1"):
        GaussianNoise(5.0)


def test_gaussian_data_fit_is_per_sample() -> None:
    y = torch.zeros(2, 3)
    Ax = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 3.0]])
    torch.testing.assert_close(GaussianNoise(0.1).sq_norm(y, Ax), torch.tensor([9.0, 9.0]))


def test_poisson_noise_counts_and_range() -> None:
    x = torch.full((2, 1, 128, 128), 0.4, dtype=torch.float64)
    n = PoissonNoise(rate=1.0)
    y = n(x, torch.Generator().manual_seed(1))
    counts = y * n.peak
    torch.testing.assert_close(counts, counts.round())  # photon counts
    assert float(counts.mean()) == pytest.approx(0.4 * 255, rel=0.01)
    assert float(counts.var()) == pytest.approx(0.4 * 255, rel=0.05)  # Poisson: variance = mean
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    torch.testing.assert_close(y, n(x, torch.Generator().manual_seed(1)), rtol=0, atol=0)


def test_poisson_data_fit_weights_and_zero_guard() -> None:
    n = PoissonNoise(rate=1.0)
    y = torch.tensor([[0.5, 0.0]])
    Ax = torch.tensor([[0.7, 0.1]])
    w = torch.tensor([0.25 / 0.5, 0.25 * 255])  # mean(y) / y_j, the zero count guarded at one photon
    expected = float(w[0] * 0.2**2 + w[1] * 0.1**2)
    assert float(n.sq_norm(y, Ax)) == pytest.approx(expected)


def test_parse_noise() -> None:
    assert parse_noise("gaussian:0.05") == GaussianNoise(0.05)
    assert parse_noise("poisson:2") == PoissonNoise(2.0)
    with pytest.raises(ValueError, match="unknown noise"):
        parse_noise("laplace:1")
