"""Importing official checkpoints (score_sde, EDM, latent-diffusion and the authors' multistage forks).

- :mod:`msrepro.convert.core`: ``import_checkpoint(format, file, out, items)``, the pipeline and config resolution;
- :mod:`msrepro.convert.keymap`: the one-to-one key mapping with shape checks (:class:`KeyMap`, :class:`Rule`);
- :mod:`msrepro.convert.unpickle`: the restricted unpickler for EDM's network pickles (no pickled code runs);
- one module per format family: :mod:`~msrepro.convert.score_sde` (``score_sde``, ``multistage_sde``),
  :mod:`~msrepro.convert.edm` (``edm``, ``multistage_edm``), :mod:`~msrepro.convert.ldm` (``ldm``,
  ``multistage_ldm``) with :mod:`~msrepro.convert.kl_vae` for LDM's KL first stage.
"""

from msrepro.convert.core import ImportResult, formats, get_format, import_checkpoint
from msrepro.convert.keymap import ConversionError, KeyMap, Rule
from msrepro.convert.unpickle import RefusedGlobal

__all__ = ["ConversionError", "ImportResult", "KeyMap", "RefusedGlobal", "Rule", "formats", "get_format",
           "import_checkpoint"]
