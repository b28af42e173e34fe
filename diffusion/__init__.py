"""Generic diffusion: processes (what an objective means for the loss and the samplers: diffusion/process.py, the
VP process of eps and v models in vp.py, rectified flow in flow.py), the samplers and their registry (samplers.py,
DPM-Solver++'s arithmetic in dpm_solver.py), and known-pixel conditioning above them (inpaint.py).

Nothing here knows a model family: samplers take a model function and a state that is one tensor or a tuple of
tensors."""

from .flow import FlowProcess
from .inpaint import KnownRegion, repaint
from .process import OBJECTIVES, constant_beta_process, each, make_process
from .samplers import (ONE_STEP, SAMPLERS, canonical, ddim, default_sampler, evaluations, make_step, respaced,
                       run_steps, sample, spacing, supported)
from .vp import SPACINGS, VPProcess, const_betas, linear_betas, logsnr_timesteps, space_timesteps

__all__ = ["FlowProcess", "VPProcess", "KnownRegion", "repaint", "OBJECTIVES", "SAMPLERS", "ONE_STEP", "SPACINGS",
           "constant_beta_process", "make_process", "each", "canonical", "ddim", "default_sampler", "evaluations",
           "make_step", "respaced", "run_steps", "sample", "spacing", "supported", "const_betas", "linear_betas",
           "logsnr_timesteps", "space_timesteps"]
