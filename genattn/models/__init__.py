"""Models: the SASRec backbone and its attention kinds."""
from .attention import CausalSelfAttention, SoftmaxWeights
from .diffusion import Denoiser, DiffusionWeights
from .loss import LOSSES, SAMPLERS, SampledBCE, SampledSoftmax, full_ce
from .sampling import Sampling, default_sampling, stochastic_sampling
from .sasrec import SASRec, make_noise
from .scheduler import DDIMScheduler
from .vae import VAEWeights

__all__ = ["SASRec", "CausalSelfAttention", "Sampling", "SoftmaxWeights", "VAEWeights",
           "DiffusionWeights", "Denoiser", "DDIMScheduler", "make_noise",
           "default_sampling", "stochastic_sampling", "SampledSoftmax", "SampledBCE", "full_ce", "LOSSES", "SAMPLERS"]
