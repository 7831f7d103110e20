"""genattn: generative (VAE / diffusion) attention for sequential recommendation.

Importing `genattn` does not import torch; the training modules (`genattn.models`,
`genattn.training`, `genattn.evaluation`) do. The torch-free runtime is
`genattn_runtime`, the exporter `genattn_export`.
"""
__version__ = "0.1.0"
