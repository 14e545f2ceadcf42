"""The reproduction grid (SPEC 2): table YAML -> job graph -> submitit jobs -> tables.

- :mod:`msrepro.launch.plan`: rows of the paper's tables (:mod:`msrepro.paper_tables`) -> cells -> deduplicated steps;
- :mod:`msrepro.launch.run_folder`: the run folder, its files, and where each step stands;
- :mod:`msrepro.launch.execution`: what a step runs, and ``submit`` through submitit (debug, local, slurm);
- :mod:`msrepro.launch.results`: tables, ``results/<run>/``, the compute estimate and the dry run.
"""
