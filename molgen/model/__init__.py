"""The DiScoFormer and its parts: config, layers, input features, graph algorithms, density head,
repair adapter, and the denoiser wrapper the sampler and the likelihood use."""

from molgen.model.config import DensityConfig, DiScoConfig, RepairAdapterConfig
from molgen.model.denoiser import denoise, model_denoiser
from molgen.model.discoformer import DiScoFormer, ModelOutput, posterior_probs, upgrade_state_dict

__all__ = ["DensityConfig", "DiScoConfig", "DiScoFormer", "ModelOutput", "RepairAdapterConfig", "denoise",
           "model_denoiser", "posterior_probs", "upgrade_state_dict"]
