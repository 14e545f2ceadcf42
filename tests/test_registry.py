"""The registry mechanism: registration, duplicates, lookups that name valid options, build, listing."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from msrepro.registry import Registry, RegistryError, get_registry, registries


def fresh() -> Registry:
    return Registry("widgets", entry_point_group="msrepro.test_widgets")


def test_decorator_and_call_registration():
    reg = fresh()

    @reg.register()
    class Alpha:
        """Alpha widget."""

    @reg.register("beta", description="the second")
    def make_beta(x=1):
        return ("beta", x)

    reg.register("gamma", dict)
    assert reg.list() == ["Alpha", "beta", "gamma"]
    assert reg.get("Alpha") is Alpha
    assert reg.entry("Alpha").description == "Alpha widget."
    assert reg.entry("beta").description == "the second"
    assert reg.list("*a") == ["Alpha", "beta", "gamma"] and reg.list("g*") == ["gamma"]


def test_duplicate_name_raises_unless_forced():
    reg = fresh()
    reg.register("a", int)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("a", float)
    reg.register("a", float, force=True)
    assert reg.get("a") is float


def test_unknown_name_lists_valid_names_and_closest_match():
    reg = fresh()
    for n in ["timestep", "snr", "gradient"]:
        reg.register(n, object)
    with pytest.raises(RegistryError) as exc:
        reg.get("timestpe")
    msg = str(exc.value)
    assert "unknown widgets 'timestpe'" in msg
    assert "gradient, snr, timestep" in msg
    assert "Did you mean 'timestep'?" in msg


def test_build_from_config_node():
    from omegaconf import OmegaConf

    reg = fresh()

    @reg.register("pair")
    def pair(a, b=2):
        return (a, b)

    assert reg.build({"type": "pair", "a": 1}) == (1, 2)
    assert reg.build(OmegaConf.create({"name": "pair", "a": 3, "b": 4})) == (3, 4)
    with pytest.raises(RegistryError, match="no 'type'"):
        reg.build({"a": 1})


def test_deprecated_alias_warns_and_resolves():
    reg = fresh()
    reg.register("new_name", int)
    reg.register_deprecation("old_name", "new_name")
    with pytest.warns(DeprecationWarning, match="use 'new_name'"):
        assert reg.get("old_name") is int


def test_named_registries_exist():
    kinds = set(registries())
    assert {"backbones", "clusterers", "datasets", "samplers", "metrics", "stage_policies", "schedules"} <= kinds
    with pytest.raises(RegistryError, match="Valid registries"):
        get_registry("clusterer")


def _fake_distribution(tmp_path, name, group, entry, module_src=None):
    """A real (if minimal) installed distribution: a .dist-info folder that importlib.metadata discovers."""
    dist = tmp_path / f"{name}-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")
    if module_src is not None:
        mod, src = module_src
        (tmp_path / f"{mod}.py").write_text(textwrap.dedent(src))


def _run_list(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "msrepro", "list", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_broken_plugin_is_reported_with_its_error(tmp_path):
    _fake_distribution(tmp_path, "broken_plugin", "msrepro.schedules", "broken = broken_mod",
                       ("broken_mod", "raise RuntimeError('this plugin is broken on purpose')\n"))
    res = _run_list(tmp_path, "schedules")
    assert res.returncode == 1
    assert "broken_mod" in res.stdout and "this plugin is broken on purpose" in res.stdout
    assert "vp_linear" in res.stdout, "a broken plugin must not hide the built-ins"


def test_plugin_from_distribution_registers_without_editing_msrepro(tmp_path):
    src = '''
        from msrepro.registry import SCHEDULES
        from msrepro.schedules import VPLinearSchedule

        @SCHEDULES.register("vp_steep")
        class VPSteep(VPLinearSchedule):
            """A steeper VP schedule from an outside package."""
            name = "vp_steep"
            def __init__(self, beta_min=0.1, beta_max=40.0, eps=1e-5):
                super().__init__(beta_min, beta_max, eps)
    '''
    _fake_distribution(tmp_path, "steep_plugin", "msrepro.schedules", "vp_steep = steep_mod", ("steep_mod", src))
    res = _run_list(tmp_path, "schedules", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)["schedules"]}
    assert rows["vp_steep"]["origin"] == "plugin:steep_mod"
    assert rows["vp_steep"]["description"] == "A steeper VP schedule from an outside package."
