"""Every operator over one factory: adjoints, autograd agreement, pseudo-inverses, gradchecks, save/load."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dps.operators import (OPERATOR_CLASSES, Blur, Inpainting, LinearOperator, MatrixOperator, Operator,
                           PhaseRetrieval, SaturatedMotionBlur, SuperResolution, gaussian_kernel, load_operator,
                           motion_kernel, save_operator)
from dps.tasks import OPERATOR_BUILDERS, build_operator
from dps.operators.kernel_wizard import KernelWizard, NonUniformBlur
from dps.operators.resize import imresize_matrix

SHAPE = (2, 32, 32)


SMALL_KW = {"input_nc": 3, "nf": 8, "front_RBs": 2, "back_RBs": 2, "N_frames": 1, "kernel_dim": 64, "use_vae": True,
            "KernelExtractor": {"norm": "none", "use_sharp": True, "n_blocks": 4, "padding_type": "reflect",
                                "use_dropout": False},
            "Adapter": {"norm": "none", "use_dropout": False}}


def small_kernel_wizard() -> KernelWizard:
    torch.manual_seed(0)
    return KernelWizard(SMALL_KW)


def operators(shape=SHAPE) -> dict[str, Operator]:
    """Every operator a task file can name (``OPERATOR_BUILDERS`` with its default parameters, seed 0) at
    ``shape``, and variants of their options. The KernelWizard blur needs its network and 3 x 128 x 128 images:
    it has tests of its own below."""
    ops = {name: build_operator({"name": name}, shape, seed=0) for name in OPERATOR_BUILDERS if name != "nonuniform_blur"}
    g = torch.Generator().manual_seed(0)
    ops.update({
        "sr2": SuperResolution(shape, 2),
        "gauss_circular": Blur.gaussian(shape, size=5, std=1.5, boundary="circular"),
        "gauss_zeros": Blur.gaussian(shape, size=5, std=1.5, boundary="zeros"),
        "matrix": MatrixOperator(torch.randn(7, 12, generator=g, dtype=torch.float64)),
    })
    return ops


def linear_ops() -> dict[str, LinearOperator]:
    return {k: v for k, v in operators().items() if v.linear}


def nonlinear_ops() -> dict[str, torch.nn.Module]:
    return {k: v for k, v in operators().items() if not v.linear}


LINEAR = sorted(linear_ops())
NONLINEAR = sorted(nonlinear_ops())


def test_the_factory_covers_every_operator_class() -> None:
    """A new operator class (OPERATOR_CLASSES, what load_operator rebuilds) must be in the factory above, so
    that every generic test below runs on it."""
    covered = {type(op) for op in operators().values()} | {NonUniformBlur}
    assert set(OPERATOR_CLASSES.values()) <= covered, set(OPERATOR_CLASSES.values()) - covered


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", LINEAR)
def test_adjoint_identity(name: str) -> None:
    op = linear_ops()[name]
    x = rand(3, *op.in_shape)
    y = rand(*op.A(x).shape, seed=1)
    lhs, rhs = (op.A(x) * y).sum(), (x * op.A_adjoint(y)).sum()
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)


@pytest.mark.parametrize("name", LINEAR)
def test_adjoint_matches_autograd_vjp(name: str) -> None:
    op = linear_ops()[name]
    x = rand(2, *op.in_shape).requires_grad_(True)
    Ax = op.A(x)
    y = rand(*Ax.shape, seed=2)
    (vjp,) = torch.autograd.grad(Ax, x, y)
    torch.testing.assert_close(vjp, op.A_adjoint(y), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", LINEAR)
def test_pseudo_inverse(name: str) -> None:
    """A A^+ A x = A x (a generalised inverse): exact for masks and SR, to CG tolerance for blurs."""
    op = linear_ops()[name]
    x = rand(2, *op.in_shape)
    Ax = op.A(x)
    rel = float((op.A(op.A_dagger(Ax)) - Ax).norm() / Ax.norm())
    assert rel < (1e-10 if op.exact_pinv else 2e-3)


@pytest.mark.parametrize("name", LINEAR + NONLINEAR)
def test_batch_independent_and_shape(name: str) -> None:
    op = operators()[name]
    x = rand(3, *op.in_shape)
    full = op.A(x)
    torch.testing.assert_close(op.A(x[1:2]), full[1:2])
    assert tuple(full.shape[1:]) == op.out_shape
    with pytest.raises(ValueError, match="expects inputs of shape"):
        op.A(rand(1, 2, 16, 15))


@pytest.mark.parametrize("name", NONLINEAR)
def test_nonlinear_gradcheck(name: str) -> None:
    tiny = (1, 12, 12)
    op = operators(tiny)[name]
    x = (0.2 + 0.6 * rand(2, *tiny)).requires_grad_(True)
    assert torch.autograd.gradcheck(op.A, (x,), eps=1e-6, atol=1e-5)


def test_nonuniform_blur_gradcheck_and_fixed_latent() -> None:
    op = NonUniformBlur(small_kernel_wizard().double(), (3, 128, 128), generator=torch.Generator().manual_seed(0))
    x = rand(1, 3, 128, 128).requires_grad_(True)
    torch.testing.assert_close(op.A(x), op.A(x))  # the latent is kept between calls
    v = rand(1, 3, 128, 128, seed=4)
    (g,) = torch.autograd.grad((op.A(x) * v).sum(), x)
    d = rand(1, 3, 128, 128, seed=7) - 0.5
    h = 1e-6
    fd = ((op.A(x + h * d) * v).sum() - (op.A(x - h * d) * v).sum()) / (2 * h)
    assert torch.isclose((g * d).sum(), fd, rtol=1e-5)


def test_phase_retrieval_properties() -> None:
    op = PhaseRetrieval(SHAPE, oversampling=2.0)
    x = rand(2, *SHAPE)
    y = op.A(x)
    assert y.shape == (2, 2, 64, 64)
    torch.testing.assert_close(y.pow(2).sum((2, 3)), x.pow(2).sum((2, 3)))  # orthonormal DFT (Parseval)
    # |F| of the padded image is invariant to a shift of the support inside the padding
    pad_x = torch.nn.functional.pad(x[:, :, :28, :28], (2, 2, 2, 2))
    pad_s = torch.roll(pad_x, shifts=(2, -2), dims=(2, 3))
    torch.testing.assert_close(op.A(pad_x), op.A(pad_s))
    torch.testing.assert_close(op.A(torch.flip(pad_x, (2, 3))), op.A(pad_x))  # and to the flip
    authors = PhaseRetrieval.authors((3, 256, 256))
    assert authors.pad == 64  # int(2.0 / 8 * 256): a 1.5x oversampling ratio


def test_saturated_blur_is_nonlinear_and_bounded() -> None:
    op = SaturatedMotionBlur(SHAPE, blur=Blur.motion(SHAPE, size=9, seed=1))
    x = rand(1, *SHAPE)
    assert not torch.allclose(op.A(2 * x), 2 * op.A(x))
    ones = op.A(torch.ones(1, *SHAPE, dtype=torch.float64))
    assert float(ones.max()) <= 1.0 / (1 - np.exp(-3.0)) + 1e-9 and float(ones.min()) > 0.9


def test_saturated_blur_stays_finite_far_below_the_image_range() -> None:
    """The response is (1 - exp(-alpha u)) / (1 - exp(-alpha)) on u >= 0 and its tangent below: an iterate far below
    0 (a latent model's first decoded estimates) gets a finite value and gradient, images are unchanged."""
    op = SaturatedMotionBlur(SHAPE, blur=Blur.motion(SHAPE, size=9, seed=1))
    u = torch.tensor([-100.0, -1.0, 0.0, 0.5, 1.0], dtype=torch.float32, requires_grad=True)
    f = op.response(u)
    f.sum().backward()
    scale = 1 - np.exp(-3.0)
    assert torch.isfinite(f).all() and torch.isfinite(u.grad).all()
    torch.testing.assert_close(f[:2], 3.0 * u[:2].detach() / scale)
    torch.testing.assert_close(f[2:], (1 - torch.exp(-3.0 * u[2:].detach())) / scale)
    torch.testing.assert_close(u.grad[1], u.grad[2])  # the tangent continues the slope at 0


def test_imresize_interior_matches_pillow_bicubic() -> None:
    """Away from the borders MATLAB's and Pillow's antialiased bicubic (a = -0.5) agree exactly."""
    x = rand(1, 64, seed=9)[0].float().numpy()
    pil = np.asarray(Image.fromarray(x[None, :]).resize((16, 1), Image.BICUBIC), dtype=np.float64)[0]
    ours = (imresize_matrix(64, 0.25) @ torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(ours[3:-3], pil[3:-3], atol=1e-5)
    assert not np.allclose(ours, np.convolve(x, np.ones(4) / 4, "valid")[::4][:16], atol=1e-3)


def test_imresize_rows_sum_to_one_and_preserve_constants() -> None:
    for n, s in [(256, 0.25), (32, 0.5), (30, 1 / 3)]:
        M = imresize_matrix(n, s)
        torch.testing.assert_close(M.sum(1), torch.ones(M.shape[0], dtype=torch.float64))


def test_masks() -> None:
    g = torch.Generator().manual_seed(1)
    op = Inpainting.random((3, 64, 64), missing=0.92, generator=g)
    assert int((op.mask == 0).sum()) == round(0.92 * 64 * 64)
    y = op.A(torch.ones(1, 3, 64, 64))
    assert torch.equal(y[0, 0], y[0, 1]) and torch.equal(y[0, 0], y[0, 2])  # same pixels in every channel
    box = Inpainting.box((3, 256, 256), generator=g)
    assert int((box.mask == 0).sum()) == 128 * 128
    rows = torch.nonzero((box.mask == 0).any(1)).squeeze(1)
    assert 16 <= int(rows.min()) and int(rows.max()) <= 256 - 16 - 1
    centred = Inpainting.box((3, 256, 256), centred=True)
    assert torch.equal(torch.nonzero(centred.mask == 0).min(0).values, torch.tensor([64, 64]))


def test_kernels_are_normalised_and_seeded() -> None:
    k = gaussian_kernel(61, 3.0)
    assert float(k.sum()) == pytest.approx(1.0) and torch.equal(k, k.T)
    a = motion_kernel(61, 0.5, np.random.default_rng(7))
    b = motion_kernel(61, 0.5, np.random.default_rng(7))
    c = motion_kernel(61, 0.5, np.random.default_rng(8))
    assert a.shape == (61, 61) and a.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a > 1e-3).sum() > 10  # a trajectory, not a single point
    assert Blur.gaussian((3, 256, 256)).kernel.shape == (61, 61)


@pytest.mark.parametrize("name", LINEAR + NONLINEAR)
def test_save_load_roundtrip(name: str, tmp_path: Path) -> None:
    op = operators()[name]
    save_operator(op, tmp_path / "op.pt")
    again = load_operator(tmp_path / "op.pt")
    x = rand(2, *op.in_shape)
    torch.testing.assert_close(again.A(x), op.A(x), rtol=0, atol=0)
    assert not list(tmp_path.glob(".*.tmp"))


def test_nonuniform_blur_save_load_needs_weights(tmp_path: Path) -> None:
    kw = small_kernel_wizard()
    op = NonUniformBlur(kw, (3, 128, 128), generator=torch.Generator().manual_seed(3))
    save_operator(op, tmp_path / "nub.pt")
    with pytest.raises(ValueError, match="kernel_wizard"):
        load_operator(tmp_path / "nub.pt")
    again = load_operator(tmp_path / "nub.pt", kernel_wizard=kw)
    torch.testing.assert_close(again.latent, op.latent, rtol=0, atol=0)


def test_bad_arguments_are_explained() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        SuperResolution((3, 30, 30), 4)
    with pytest.raises(ValueError, match="odd"):
        Blur(torch.ones(4, 4))
    with pytest.raises(ValueError, match="boundary"):
        Blur.gaussian(SHAPE, size=9, boundary="mirror")
    with pytest.raises(ValueError, match="missing fraction"):
        Inpainting.random(SHAPE, missing=1.5)


def test_box_position_covers_exactly_the_authors_range() -> None:
    """At 256 px the top-left corner is uniform on [16, 111] in each axis (the authors' randint(16, 112)):
    over many seeds both ends are reached and nothing lies outside."""
    from dps.operators.inpainting import box_mask

    tops, lefts = set(), set()
    for seed in range(3000):
        m = box_mask((256, 256), generator=torch.Generator().manual_seed(seed))
        rows = torch.nonzero((m == 0).any(1)).squeeze(1)
        cols = torch.nonzero((m == 0).any(0)).squeeze(1)
        assert len(rows) == len(cols) == 128
        tops.add(int(rows[0]))
        lefts.add(int(cols[0]))
    assert tops == set(range(16, 112)) and lefts == set(range(16, 112))


def test_truncated_gaussian_kernel_is_scipys() -> None:
    """truncate=4 reproduces scipy.ndimage.gaussian_filter on a delta (the authors' kernel); the full kernel
    differs from it by about 1.5e-6 per tap at the paper's 61 x 61, std 3."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((61, 61))
    delta[30, 30] = 1
    authors = torch.from_numpy(gaussian_filter(delta, sigma=3.0, truncate=4.0))
    ours = gaussian_kernel(61, 3.0, truncate=4.0)
    torch.testing.assert_close(ours, authors, rtol=0, atol=1e-12)
    assert float(ours[30, 30 + 13]) == 0 and float(ours[30, 30 + 12]) > 0  # radius int(4 * 3 + 0.5) = 12
    diff = float((gaussian_kernel(61, 3.0) - ours).abs().max())
    assert 1e-7 < diff < 1e-5
    op = Blur.gaussian((1, 256, 256), truncate=4.0)
    assert op.config["kind"] != Blur.gaussian((1, 256, 256)).config["kind"]  # a saved operator says which


def test_authors_phase_retrieval_is_their_measurement() -> None:
    """convention="authors": the authors' padding int(2.0 / 8 * H) of the [-1, 1] image with zeros, i.e.
    auth(2x - 1) = |F pad_0(2x - 1)| = 2 |F pad_0(x - 1/2)| (checked with numpy's FFT), which differs from
    ours by far more than the DC term; the relation of the two holds exactly."""
    x = rand(2, 3, 32, 32)
    op = PhaseRetrieval.authors((3, 32, 32))
    assert op.pad == 8 and op.config["convention"] == "authors" and op.fourier_support is None
    p = np.pad(2 * x.numpy() - 1, ((0, 0), (0, 0), (8, 8), (8, 8)))
    ref = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(p, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)))
    torch.testing.assert_close(op(x), torch.from_numpy(ref), rtol=1e-10, atol=1e-10)
    half = PhaseRetrieval((3, 32, 32), pad=8)(x - 0.5)  # ours applied to x - 1/2
    torch.testing.assert_close(op(x), 2 * half)
    ours = PhaseRetrieval((3, 32, 32), pad=8)(x)
    c = 24  # the DC bin of the (48, 48) centred spectrum
    off_dc = torch.ones(48, 48, dtype=torch.bool)
    off_dc[c, c] = False
    assert float((op(x) / 2 - ours)[..., off_dc].norm() / ours[..., off_dc].norm()) > 0.1
    again = load_operator_roundtrip(op)
    torch.testing.assert_close(again(x), op(x))


def load_operator_roundtrip(op):
    import tempfile

    from dps.operators import load_operator, save_operator

    with tempfile.TemporaryDirectory() as d:
        save_operator(op, Path(d) / "op.pt")
        return load_operator(Path(d) / "op.pt")
