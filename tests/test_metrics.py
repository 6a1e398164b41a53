"""PSNR, SSIM (against scikit-image), the Frechet distance (against its definition), the digit classifier."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from dps.metrics import frechet_distance, gaussian_stats, psnr, ssim


def test_psnr_known_values():
    x = torch.zeros(2, 1, 8, 8)
    ref = x.clone()
    ref[0] += 0.1  # MSE 0.01 -> 20 dB
    ref[1, :, :4] += 0.5  # MSE 0.125 -> 9.03 dB
    torch.testing.assert_close(psnr(x, ref), torch.tensor([20.0, 10 * np.log10(8.0)], dtype=torch.float32), atol=1e-4, rtol=0)


@pytest.mark.parametrize("channels,size", [(1, 32), (3, 24)])
def test_ssim_matches_scikit_image(channels, size):
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, channels, size, size, generator=g)
    x = (ref + 0.1 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    ours = ssim(x, ref)
    for b in range(2):
        theirs = metrics.structural_similarity(
            x[b].numpy().astype(np.float64), ref[b].numpy().astype(np.float64), data_range=1.0,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=True, channel_axis=0)
        assert abs(float(ours[b]) - theirs) < 1e-5
    assert torch.allclose(ssim(ref, ref), torch.ones(2))
    assert (ours < 0.99).all()


def test_frechet_distance_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 4)), rng.normal(size=(400, 4)) @ np.diag([1, 2, 3, 0.5]) + 1.0
    mu1, s1 = gaussian_stats(torch.from_numpy(a))
    mu2, s2 = gaussian_stats(torch.from_numpy(b))
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert abs(frechet_distance(mu1, s1, mu2, s2) - expected) < 1e-8
    # closed form for diagonal Gaussians: sum (m1-m2)^2 + (sqrt(v1) - sqrt(v2))^2
    d = frechet_distance(np.zeros(3), np.diag([1.0, 4.0, 9.0]), np.ones(3), np.diag([4.0, 4.0, 1.0]))
    assert abs(d - (3 + 1 + 0 + 4)) < 1e-10
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-6


def test_embedded_classifier_reads_held_out_digits():
    from dps.data.digits import digits_split
    from dps.metrics.digits_classifier import classify, load_classifier, prior_quality

    model = load_classifier()
    x, y = digits_split("held_out")
    probs, feats = classify(model, x)
    assert (probs.argmax(1) == y).float().mean() > 0.97
    assert feats.shape == (len(x), 128)
    xt, _ = digits_split("train")
    q_real = prior_quality(model, x[:150], x[150:], xt)
    q_noise = prior_quality(model, torch.rand(150, 1, 32, 32), x[150:], xt)
    # held-out images look like held-out images; uniform noise does not
    assert q_real["frechet_samples_vs_held_out"] < 0.2 * q_noise["frechet_samples_vs_held_out"]
    assert q_real["class_evenness"] > 0.95 and q_real["confidence"] > 0.9


def test_digits_split_is_disjoint_and_fixed():
    from dps.data.digits import digits_split, load_digits_32

    xt, _ = digits_split("train")
    xh, _ = digits_split("held_out")
    allx, _ = load_digits_32()
    assert len(xt) + len(xh) == len(allx) == 1797 and len(xh) == 359
    flat_t = {tuple(v) for v in (xt.flatten(1) * 1e4).round().long().tolist()}
    assert sum(tuple(v) in flat_t for v in (xh.flatten(1) * 1e4).round().long().tolist()) <= 5  # duplicates in source
    assert xh.min() >= 0 and xh.max() <= 1 and xh.shape[1:] == (1, 32, 32)
