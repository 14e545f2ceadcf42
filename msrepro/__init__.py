"""msrepro: reproduction suite for multi-stage diffusion models with a shared encoder and per-stage decoders.

Zhang, Lu et al., "Improving Training Efficiency of Diffusion Models via Multi-Stage Framework and Tailored
Multi-Decoder Architecture", CVPR 2024.
"""

__version__ = "0.1.0"
