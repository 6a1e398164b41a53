"""dps: Diffusion Posterior Sampling (Chung et al., ICLR 2023) for noisy linear and nonlinear inverse problems.

Images are (B, C, H, W) in [0, 1] at the API edge; the documentation's "Operators and conventions" page
states every convention.
"""
from .diffusion.denoiser import DenoiserOutput, NetworkPrior, Prior
from .diffusion.schedule import Schedule, make_schedule, respace
from .diffusion.grid import Grid, GridSpec
from .diffusion.forms import EDMPrior, VEPrior
from .diffusion.latent import LatentPrior
from .noise import GaussianNoise, PoissonNoise
from .solvers.dps import DPSConfig, DPSResult, dps_sample
from .models.loading import load_model
from .errors import DPSError, NotApplicable
from .execution import Execution, choose_device
from .solvers.methods import METHODS, Reconstruction, reconstruct

__version__ = "0.1.0"

__all__ = ["DPSConfig", "DPSError", "DPSResult", "DenoiserOutput", "EDMPrior", "Execution", "GaussianNoise", "Grid",
           "GridSpec", "LatentPrior", "METHODS", "NetworkPrior", "VEPrior", "NotApplicable", "PoissonNoise", "Prior", "Reconstruction", "Schedule", "choose_device",
           "dps_sample", "load_model", "make_schedule", "reconstruct", "respace"]
