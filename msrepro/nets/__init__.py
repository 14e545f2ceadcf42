"""Network building blocks and the DDPM++ U-Net family, split into encoder and decoder parts.

:mod:`msrepro.nets.layers` holds the layers (FIR resampling with plain convolutions, residual blocks,
self-attention, the positional noise embedding); :mod:`msrepro.nets.ddpmpp` the encoder/decoder pair and the
:class:`~msrepro.nets.ddpmpp.DDPMppBackbone` adapter base that the ``dpm_solver`` and ``edm`` plugins configure.
"""
