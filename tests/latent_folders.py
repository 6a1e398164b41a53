"""Tiny random Stable Diffusion and LDM folders, written the way diffusers and transformers save them (the loader
tests and the documentation's stand-ins)."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def tiny_tokenizer(folder: Path):
    """A CLIP tokenizer over a small vocabulary: the letters, each also word-final, and the two special tokens."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=8)
    tok.save_pretrained(str(folder))
    return tok


def write_tiny_stable_diffusion(root: Path, sample_size: int = 4, prediction: str = "epsilon") -> Path:
    """A Stable-Diffusion-shaped folder with random weights: AutoencoderKL (factor 2, 4 latent channels),
    UNet2DConditionModel, CLIP text model and tokenizer, DDIM scheduler (scaled_linear betas, as SD 1.5)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                                  latent_channels=4, norm_num_groups=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    unet = diffusers.UNet2DConditionModel(sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
                                          block_out_channels=(16, 16), norm_num_groups=4, cross_attention_dim=16,
                                          attention_head_dim=4,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    text = CLIPTextModel(CLIPTextConfig(vocab_size=54, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=8, bos_token_id=0,
                                        eos_token_id=1, pad_token_id=1))
    sched = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    prediction_type=prediction)
    vae.save_pretrained(root / "vae")
    unet.save_pretrained(root / "unet")
    text.save_pretrained(root / "text_encoder")
    tiny_tokenizer(root / "tokenizer")
    sched.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


def write_tiny_ldm(root: Path, sample_size: int = 4) -> Path:
    """An unconditional LDM folder with random weights: VQModel (factor 2, 3 latent channels), UNet2DModel, DDIM."""
    import diffusers

    torch.manual_seed(0)
    vq = diffusers.VQModel(in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                           latent_channels=3, num_vq_embeddings=16, norm_num_groups=4,
                           down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    unet = diffusers.UNet2DModel(sample_size=sample_size, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    vq.save_pretrained(root / "vqvae")
    unet.save_pretrained(root / "unet")
    diffusers.DDIMScheduler().save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "LDMPipeline"}))
    return root
