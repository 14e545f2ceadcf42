"""The outside plugin fixture (tests/example_plugin), installed as a real package, seen by msrepro unedited.

The README's test command installs it into the environment (``pip install -e ".[test]" ./tests/example_plugin``);
msrepro then finds it through its entry point in this very process. Where it is not installed, the test installs
it with pip into a temporary folder (no network) and runs msrepro in a subprocess with that folder on PYTHONPATH.
"""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from msrepro.schedules import VPLinearSchedule

PLUGIN = Path(__file__).resolve().parent / "example_plugin"
DIST = "msrepro-example-plugin"


def _installed() -> bool:
    try:
        metadata.distribution(DIST)
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def run_msrepro(tmp_path_factory):
    """``run(*args) -> (returncode, stdout, stderr)`` of the msrepro CLI with the plugin installed."""
    if _installed():
        from msrepro.cli import main

        def in_process(*args):
            import contextlib
            import io

            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(list(args))
            return rc, out.getvalue(), err.getvalue()

        return in_process
    target = tmp_path_factory.mktemp("plugin-site")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                          "--no-build-isolation", "--target", str(target), str(PLUGIN)],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        why = next((ln.strip() for ln in res.stderr.splitlines() if "error: " in ln), "pip failed")
        pytest.skip(f"example plugin not installed and this environment cannot build it offline ({why}); "
                    f"install it: pip install --no-deps -e tests/example_plugin")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}

    def in_subprocess(*args):
        r = subprocess.run([sys.executable, "-m", "msrepro", *args], capture_output=True, text=True, env=env,
                           timeout=300)
        return r.returncode, r.stdout, r.stderr

    return in_subprocess


def test_plugin_clusterer_is_listed_with_description_and_origin(run_msrepro):
    rc, out, err = run_msrepro("list", "clusterers", "--json")
    assert rc == 0, err
    rows = {r["name"]: r for r in json.loads(out)["clusterers"]}
    assert rows["log_snr_uniform"]["origin"] == "plugin:msrepro_example_plugin.clusterers"
    assert rows["log_snr_uniform"]["description"].startswith("Equal spacing in log-SNR")
    assert {"timestep", "snr", "gradient", "optimal_denoiser"} <= set(rows)


def test_plugin_clusterer_runs_through_msrepro_cluster(run_msrepro, tmp_path):
    rc, out, err = run_msrepro("cluster", "log_snr_uniform", "--json", "--out", str(tmp_path))
    assert rc == 0, err
    d = json.loads(out)
    vp = VPLinearSchedule()  # equal steps in log-SNR between t = 1e-3 and t = 1 of vp_linear
    lam = [vp.log_snr(1e-3), vp.log_snr(1.0)]
    want = [lam[0] + (lam[1] - lam[0]) * j / 3 for j in (1, 2)]
    assert d["log_snr"] == pytest.approx(want, abs=1e-9)
    assert [vp.log_snr(c) for c in d["boundaries"]] == pytest.approx(want, abs=1e-9)
    assert (tmp_path / "curves.png").is_file() and d["stage_boundaries"]["cuts"] == d["boundaries"]
