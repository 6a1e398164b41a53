from __future__ import annotations

import pytest
import torch

from dps.diffusion.schedule import make_schedule, respace, spaced_timesteps
from dps.diffusion.steps import ddpm_sigma


def test_linear_schedule_endpoints_float64() -> None:
    s = make_schedule("linear", 1000)
    assert s.betas.dtype == torch.float64
    assert float(s.betas[0]) == pytest.approx(1e-4) and float(s.betas[-1]) == pytest.approx(0.02)
    assert float(s.alphas_cumprod[-1]) == pytest.approx(4.04e-5, rel=0.01)


def test_cosine_schedule_is_monotone() -> None:
    a = make_schedule("cosine", 1000).alphas_cumprod
    assert bool((a[1:] < a[:-1]).all()) and float(a[0]) > 0.999


def test_spacing_matches_guided_diffusion() -> None:
    assert spaced_timesteps(1000, 10) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert spaced_timesteps(1000, 4, "ddim") == [0, 250, 500, 750]
    assert spaced_timesteps(1000, 1000) == list(range(1000))


@pytest.mark.parametrize("n", [10, 100, 250])
def test_respacing_keeps_alpha_bar(n: int) -> None:
    base = make_schedule("linear")
    r = respace(base, n)
    torch.testing.assert_close(r.alphas_cumprod, base.alphas_cumprod[r.timesteps])
    assert len(r) == n


def test_learned_range_interpolates_between_fixed_variances() -> None:
    s = respace(make_schedule("linear"), 50)
    i = 20
    lo, hi = ddpm_sigma(s, i, "fixed_small"), float(s.betas[i]) ** 0.5
    v = torch.tensor([-1.0, 1.0])
    sig = ddpm_sigma(s, i, "learned_range", v)
    torch.testing.assert_close(sig, torch.tensor([lo, hi], dtype=sig.dtype))
    with pytest.raises(ValueError, match="unknown beta schedule"):
        make_schedule("quadratic")
