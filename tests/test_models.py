"""The guided-diffusion UNet, checkpoint loading (guided-diffusion, safetensors, diffusers) and training."""
from __future__ import annotations

import json

import pytest
import torch

from dps.models import GUIDED_DIFFUSION_PRESETS, CheckpointMismatchError, UNetModel, infer_unet_config, load_model
from dps.models.loading import save_unet_safetensors
from dps.models.unet import _qkv_attention

from conftest import REFERENCE as REF, reference_tensors


def _meta_shapes(config: dict) -> dict:
    with torch.device("meta"):
        model = UNetModel(config)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------ reference parity
@pytest.mark.parametrize("name,preset", [("ffhq_10m", "ffhq256"), ("imagenet256", "imagenet256")])
def test_manifest_key_and_shape_parity(name, preset):
    manifest = json.loads((REF / f"{name}_manifest.json").read_text())
    assert GUIDED_DIFFUSION_PRESETS[preset] == manifest["config"]
    shapes = _meta_shapes(manifest["config"])
    assert shapes == manifest["state_dict_shapes"]  # same keys, same order-free shapes
    assert sum(torch.Size(s).numel() for s in shapes.values()) == manifest["num_parameters"]
    # and the config is recovered from the shapes alone (the preset they match)
    sd = {k: torch.empty(v, device="meta") for k, v in manifest["state_dict_shapes"].items()}
    assert infer_unet_config(sd) == manifest["config"]


def test_small_adm_numerical_parity(reference_pt):
    io = reference_tensors("small_adm_io")
    prior = load_model(reference_pt["small_adm"], config=REF / "small_adm_config.json")
    with torch.no_grad():
        out = prior.network(io["x"], io["t"])
    assert out.shape == io["output"].shape == (2, 6, 32, 32)
    assert (out - io["output"]).abs().max().item() <= 1e-5
    # the same through the inferred config (heads given, image size given)
    prior2 = load_model(reference_pt["small_adm"], config={"image_size": 32, "num_head_channels": 16})
    with torch.no_grad():
        assert torch.equal(prior2.network(io["x"], io["t"]), out)
    # the prior splits eps and the learned-range values
    with torch.no_grad():
        d = prior(io["x"], io["t"])
    assert torch.equal(d.eps, out[:, :3]) and torch.equal(d.var_values, out[:, 3:])
    assert prior.event_shape == (3, 32, 32)


def test_wrong_heads_change_the_output(reference_pt):
    """The head count is not in the weights; a wrong one must give a different network (so we ask)."""
    io = reference_tensors("small_adm_io")
    ok = load_model(reference_pt["small_adm"], config={"image_size": 32, "num_head_channels": 16})
    bad = load_model(reference_pt["small_adm"], config={"image_size": 32, "num_heads": 1})
    with torch.no_grad():
        assert (ok.network(io["x"], io["t"]) - bad.network(io["x"], io["t"])).abs().max() > 1e-3
    with pytest.raises(ValueError, match="heads cannot be inferred"):
        load_model(reference_pt["small_adm"], config={"image_size": 32})


def test_mismatched_state_dict_lists_every_problem(tmp_path, reference_pt):
    sd = reference_tensors("small_adm")
    sd.pop("out.2.bias")
    sd["extra.weight"] = torch.zeros(3)
    sd["time_embed.0.weight"] = torch.zeros(128, 16)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        load_model(tmp_path / "bad.pt", config=REF / "small_adm_config.json")
    msg = str(err.value)
    assert "missing keys (1): out.2.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "time_embed.0.weight checkpoint [128, 16] vs model [128, 32]" in msg
    # a preset that does not fit is refused too, never randomly initialised
    with pytest.raises(CheckpointMismatchError):
        load_model(reference_pt["small_adm"], config="ffhq256")


def test_not_a_unet_state_dict(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointMismatchError, match="not a guided-diffusion UNet"):
        load_model(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="no model at"):
        load_model(tmp_path / "missing.pt")


# ------------------------------------------------------------------------------------ architecture options
ARCHS = [
    dict(image_size=32, num_channels=32, num_res_blocks=2, channel_mult="1,2", attention_resolutions="16",
         resblock_updown=False, use_scale_shift_norm=False, learn_sigma=False, in_channels=1, num_heads=2),
    dict(image_size=64, num_channels=32, num_res_blocks=1, channel_mult="1,1,2,2", attention_resolutions="16,8",
         resblock_updown=True, use_scale_shift_norm=True, learn_sigma=True, in_channels=3, num_head_channels=32),
    dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2,3", attention_resolutions="",
         resblock_updown=False, use_scale_shift_norm=True, learn_sigma=True, in_channels=3, num_heads=1),
]


@pytest.mark.parametrize("cfg", ARCHS)
def test_infer_config_recovers_architecture(cfg):
    torch.manual_seed(0)
    model = UNetModel(cfg)
    inferred = infer_unet_config(model.state_dict(), image_size=cfg["image_size"])
    heads = {k: cfg[k] for k in ("num_heads", "num_head_channels") if k in cfg}
    rebuilt = UNetModel({**inferred, **heads})
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    t = torch.tensor([3, 700])
    for p in model.parameters():  # zero-initialised output layers would hide differences
        torch.nn.init.normal_(p, std=0.05)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        out = model(x, t)
    assert out.shape == (2, cfg["in_channels"] * (2 if cfg["learn_sigma"] else 1), *x.shape[2:])
    assert torch.equal(out, rebuilt(x, t))
    assert out.abs().max() > 0


def test_new_order_attention_matches_scaled_dot_product():
    torch.manual_seed(0)
    bs, heads, ch, length = 2, 3, 8, 10
    qkv = torch.randn(bs, 3 * heads * ch, length)
    q, k, v = (z.reshape(bs, heads, ch, length).transpose(-1, -2) for z in qkv.chunk(3, dim=1))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # (bs, heads, length, ch)
    ours = _qkv_attention(qkv, heads, legacy=False).reshape(bs, heads, ch, length).transpose(-1, -2)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # legacy order: heads first, then q/k/v inside each head
    q2, k2, v2 = qkv.reshape(bs, heads, 3 * ch, length).split(ch, dim=2)
    ref2 = torch.nn.functional.scaled_dot_product_attention(*(z.transpose(-1, -2) for z in (q2, k2, v2)))
    ours2 = _qkv_attention(qkv, heads, legacy=True).reshape(bs, heads, ch, length).transpose(-1, -2)
    torch.testing.assert_close(ours2, ref2, atol=1e-5, rtol=1e-5)


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError, match="unknown UNet config keys"):
        UNetModel({"num_chanels": 32})


# ------------------------------------------------------------------------------------ safetensors
def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(1)
    cfg = dict(ARCHS[0])
    model = UNetModel(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    save_unet_safetensors(tmp_path / "m.safetensors", model)
    prior = load_model(tmp_path / "m.safetensors")
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([0, 999])
    with torch.no_grad():
        assert torch.equal(prior.network(x, t), model(x, t))
    assert prior.event_shape == (1, 32, 32) and not prior.learn_sigma
    # a file whose tensors do not fit its declared config is refused
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(tmp_path / "m.safetensors"))
    tensors["out.2.weight"] = tensors["out.2.weight"][:, :16].contiguous()
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointMismatchError, match="out.2.weight"):
        load_model(tmp_path / "bad.safetensors")


# ------------------------------------------------------------------------------------ diffusers
@pytest.mark.parametrize("prediction,variance", [("epsilon", "fixed_small"), ("v_prediction", "fixed_small"),
                                                 ("epsilon", "learned_range")])
def test_diffusers_unet_through_adapter(tmp_path, prediction, variance):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    out_ch = 6 if variance == "learned_range" else 3
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=out_ch, layers_per_block=1,
                                 block_out_channels=(32, 32), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=1e-4,
                                    beta_end=0.02, prediction_type=prediction, variance_type=variance)
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    sched.save_pretrained(tmp_path / "pipe" / "scheduler")
    prior = load_model(tmp_path / "pipe")
    assert prior.event_shape == (3, 16, 16)
    torch.testing.assert_close(prior.schedule.alphas_cumprod.float(), sched.alphas_cumprod, rtol=1e-5, atol=1e-7)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 900])
    with torch.no_grad():
        raw = unet(x, t).sample
        torch.testing.assert_close(prior.network(x, t), raw, atol=1e-6, rtol=1e-6)
        d = prior(x, t)
    a = prior.schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    head = raw[:, :3]
    if prediction == "epsilon":
        torch.testing.assert_close(d.eps, head)
    else:  # v-prediction: x0 = sqrt(a) x - sqrt(1-a) v
        torch.testing.assert_close(d.x0, a.sqrt() * x - (1 - a).sqrt() * head)
    # x0 and eps are always consistent with x_t = sqrt(a) x0 + sqrt(1-a) eps
    torch.testing.assert_close(a.sqrt() * d.x0 + (1 - a).sqrt() * d.eps, x, atol=1e-4, rtol=1e-4)
    assert (d.var_values is not None) == (variance == "learned_range")


def test_diffusers_folder_without_scheduler_is_an_error(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(32, 32), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(tmp_path / "u")
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        load_model(tmp_path / "u")


# ------------------------------------------------------------------------------------ training
from conftest import TINY  # noqa: E402


def test_training_resumes_exactly(tmp_path):
    from dps.train import TrainConfig, train

    cfg = dict(unet=TINY, batch_size=4, checkpoint_every=2, log_every=1)
    straight = train(TrainConfig(steps=4, **cfg), tmp_path / "a", progress=False)
    train(TrainConfig(steps=2, **cfg), tmp_path / "b", progress=False)  # "interrupted" after 2 steps
    resumed = train(TrainConfig(steps=4, **cfg), tmp_path / "b", progress=False)
    for (k, v), v2 in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, v2), k
    assert (tmp_path / "a" / "loss.csv").read_text().splitlines()[1:][-1].split(",")[:3] == \
        (tmp_path / "b" / "loss.csv").read_text().splitlines()[1:][-1].split(",")[:3]
    assert len((tmp_path / "b" / "loss.csv").read_text().splitlines()) == 5  # header + 4 steps, no duplicates
    assert (tmp_path / "b" / "loss.png").stat().st_size > 0
    prior = load_model(tmp_path / "b" / "model.safetensors")
    assert prior.metadata["train_steps"] == "4"
    # the weights moved away from their initialisation
    init = train.__globals__["UNetModel"](TINY)
    assert any(not torch.equal(a, b) for a, b in zip(init.state_dict().values(), resumed.state_dict().values()))
    with pytest.raises(ValueError, match=r"other settings \(changed: batch_size\)"):
        train(TrainConfig(steps=4, **{**cfg, "batch_size": 8}), tmp_path / "b", progress=False)


def test_ddpm_loss_is_zero_for_the_true_noise():
    """L_simple of an oracle that returns the injected noise is exactly 0; of a zero network, ~1."""
    from dps.diffusion.schedule import make_schedule
    from dps.train import ddpm_loss

    abar = make_schedule("linear").alphas_cumprod
    x0 = torch.rand(16, 1, 8, 8) * 2 - 1

    class Oracle(torch.nn.Module):
        def forward(self, x_t, t):
            a = abar[t].float().view(-1, 1, 1, 1)
            return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    assert ddpm_loss(Oracle(), x0, abar, torch.Generator().manual_seed(0)).item() < 1e-8
    zero = ddpm_loss(lambda x, t: torch.zeros_like(x), x0, abar, torch.Generator().manual_seed(0)).item()
    assert 0.8 < zero < 1.2
