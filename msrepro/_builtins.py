"""The explicit import manifest of msrepro's built-in registry entries.

Importing a module here registers what it defines; nothing is registered by accident elsewhere. The built-in
backbones are not imported here: they register through entry points (``pyproject.toml``), exactly as an outside
plugin does; :data:`BUILTIN_BACKBONES` names them, so that a missing or broken one is an error for the grid.
"""

#: the entry points ``msrepro.backbones`` of msrepro's own pyproject.toml (name -> module)
BUILTIN_BACKBONES: dict[str, str] = {"dpm_solver": "msrepro.backbones.dpm_solver", "edm": "msrepro.backbones.edm",
                                     "ldm": "msrepro.backbones.ldm"}

import msrepro.schedules  # noqa: F401  schedules: vp_linear, edm, ddpm_discrete
import msrepro.datasets.digits  # noqa: F401  datasets: digits
import msrepro.samplers  # noqa: F401  samplers: dpm_solver, dpm_solver_pp, heun, ddim, euler
import msrepro.datasets.cifar10  # noqa: F401  datasets: cifar10 (+ prefetch target cifar10)
import msrepro.datasets.images  # noqa: F401  datasets: image_folder, image_zip
import msrepro.clustering.baselines  # noqa: F401  clusterers: timestep, snr
import msrepro.clustering.optimal_denoiser  # noqa: F401  clusterers: optimal_denoiser
import msrepro.clustering.gradient  # noqa: F401  clusterers: gradient
import msrepro.evaluation  # noqa: F401  metrics: fid, fd_digits, kid, prc (+ prefetch target inception)
import msrepro.training.densities  # noqa: F401  noise densities: vp_uniform, lognormal, discrete_uniform
import msrepro.training.policies  # noqa: F401  stage policies: stage_uniform, native, per_sample, per_rank
