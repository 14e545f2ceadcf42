"""msrepro's built-in backbone plugins (installed as ``msrepro.backbones``): dpm_solver, edm, ldm.

Each sub-package registers itself through an entry point in ``pyproject.toml``, exactly as an outside plugin
does, so it doubles as the worked example for users.
"""
