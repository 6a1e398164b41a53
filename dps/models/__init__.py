"""Networks and loaders: the guided-diffusion UNet, checkpoint loading, the diffusers adapter."""
from .loading import GUIDED_DIFFUSION_PRESETS, CheckpointMismatchError, infer_unet_config, load_model
from .unet import UNetConfig, UNetModel

__all__ = ["GUIDED_DIFFUSION_PRESETS", "CheckpointMismatchError", "UNetConfig", "UNetModel", "infer_unet_config",
           "load_model"]
