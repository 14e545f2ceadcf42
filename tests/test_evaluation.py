"""Evaluation: torch-fidelity metrics through msrepro's plumbing, checked against independent computations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.utils.data import Dataset

import msrepro._builtins  # noqa: F401
from msrepro.checkpoint import save_checkpoint
from msrepro.config import ConfigError
from msrepro.evaluation import digits_classifier as dc
from msrepro.evaluation import scoring as ev
from msrepro.evaluation import reference as rs
from msrepro.evaluation.metrics import Extractor, build_metrics, EvalParams
from samplers_tiny_model import tiny_checkpoint

TESTS = Path(__file__).parent


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """A private msrepro cache for this module (the digits classifier is trained once into it)."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSREPRO_CACHE", str(root))
        mp.setenv("TORCH_HOME", str(root / "torch"))
        mp.delenv("MSREPRO_INCEPTION_WEIGHTS", raising=False)
        yield root


# -- a test-only feature extractor: the identity on float vectors (FD/KID/PRC of known distributions) ---------
class Identity(dc.FeatureExtractorBase):
    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)

    def forward(self, x):
        return (x.flatten(1).double().float(),)

    @staticmethod
    def get_provided_features_list():
        return ("x",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "x"

    @staticmethod
    def can_be_compiled():
        return False


if "test-identity" not in dc.FEATURE_EXTRACTORS_REGISTRY:
    dc.register_feature_extractor("test-identity", Identity)


class Vectors(Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def identity_extractor(tmp_path: Path) -> Extractor:
    tmp_path.mkdir(parents=True, exist_ok=True)
    weights = tmp_path / "none.bin"
    weights.write_bytes(b"")
    return Extractor("identity", "test-identity", weights, "0", "identity")


def reference(tmp_path: Path, x: torch.Tensor) -> tuple[Extractor, Path]:
    ext = identity_extractor(tmp_path)
    return ext, rs.build_reference(Vectors(x), tmp_path / "ref", ext, {"what": "test"})


def evaluate_vectors(tmp_path, x_gen, x_ref, names, params=None):
    ext, ref = reference(tmp_path, x_ref)
    metrics = build_metrics(names)
    return ev.compute(Vectors(x_gen), metrics, [(ext, list(metrics))], [ref], params=params or EvalParams(),
                      batch_size=500)


def gaussian(n, mean, cov, seed):
    g = np.random.default_rng(seed)
    return torch.from_numpy(g.multivariate_normal(mean, cov, size=n)).float()


def closed_form_fd(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# -- FD ---------------------------------------------------------------------------------------------------------
def test_fd_of_gaussians_matches_closed_form(tmp_path):
    d = 4
    a = np.random.default_rng(0).normal(size=(d, d))
    mu1, s1 = np.zeros(d), np.eye(d)
    mu2, s2 = np.array([1.0, -0.5, 0.0, 2.0]), a @ a.T / d + 0.5 * np.eye(d)
    x1, x2 = gaussian(40000, mu1, s1, 1), gaussian(40000, mu2, s2, 2)
    fd = evaluate_vectors(tmp_path, x1, x2, "fd_digits")["fd_digits"]
    # the empirical statistics: exact agreement; the population closed form: within sampling error
    e1, e2 = x1.double().numpy(), x2.double().numpy()
    empirical = closed_form_fd(e1.mean(0), np.cov(e1, rowvar=False), e2.mean(0), np.cov(e2, rowvar=False))
    assert fd == pytest.approx(empirical, rel=1e-4)
    assert fd == pytest.approx(closed_form_fd(mu1, s1, mu2, s2), rel=0.03)


def test_fd_of_a_set_against_its_own_reference_is_zero(tmp_path):
    x = gaussian(3000, np.zeros(8), np.diag(np.arange(1.0, 9.0)), 3)
    assert abs(evaluate_vectors(tmp_path, x, x, "fd_digits")["fd_digits"]) < 1e-6


def test_digits_train_split_against_its_refstats_is_zero_and_test_split_is_close():
    from msrepro.config import DatasetConfig
    from msrepro.datasets.base import build_dataset

    cfg = DatasetConfig(name="digits", resolution=8)
    ext = ev.resolve_extractor("digits", cfg)
    ref = rs.refstats(cfg, ext)
    metrics = build_metrics("fd_digits")
    groups = [(ext, ["fd_digits"])]
    train = rs.UInt8Images(build_dataset(cfg).images)
    test = rs.UInt8Images(build_dataset(DatasetConfig(name="digits", resolution=8, split="test")).images)
    noise = rs.UInt8Images(torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    fd = {k: ev.compute(v, metrics, groups, [ref], params=EvalParams())["fd_digits"]
          for k, v in [("train", train), ("test", test), ("noise", noise)]}
    assert abs(fd["train"]) < 1e-6 * fd["noise"]
    assert 0 < fd["test"] < 0.05 * fd["noise"]


# -- KID, precision / recall ------------------------------------------------------------------------------------
def unbiased_mmd2_poly(a: np.ndarray, b: np.ndarray) -> float:
    """Independent KID of full sets: unbiased MMD^2 with the kernel (x.y / d + 1)^3."""
    k = lambda u, v: (u @ v.T / u.shape[1] + 1.0) ** 3  # noqa: E731
    m = len(a)
    kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def test_kid_near_zero_for_identical_and_positive_for_separated(tmp_path):
    n = 600
    x = gaussian(n, np.zeros(8), np.eye(8), 4)
    params = EvalParams(kid_subsets=2, kid_subset_size=n)  # a subset is the whole set: KID is exact, not sampled
    pairs = {"same": (x, x), "shifted": (x + 1.0, x), "other_draw": (gaussian(n, np.zeros(8), np.eye(8), 5), x)}
    kid = {k: evaluate_vectors(tmp_path / k, a, b, "kid", params)["kid"] for k, (a, b) in pairs.items()}
    for k, (a, b) in pairs.items():
        assert kid[k] == pytest.approx(unbiased_mmd2_poly(a.double().numpy(), b.double().numpy()), rel=1e-3, abs=1e-5)
    assert kid["shifted"] > 0.5
    assert abs(kid["same"]) < 0.01 * kid["shifted"] and abs(kid["other_draw"]) < 0.01 * kid["shifted"]


def test_precision_recall_one_for_identical_zero_for_disjoint(tmp_path):
    x = gaussian(500, np.zeros(4), np.eye(4), 6)
    same = evaluate_vectors(tmp_path / "a", x, x, "prc")
    far = evaluate_vectors(tmp_path / "b", x + 100.0, x, "prc")
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    assert far["precision"] == 0.0 and far["recall"] == 0.0


# -- the digits classifier --------------------------------------------------------------------------------------
def test_digits_classifier_accuracy_on_held_out_split():
    from msrepro.datasets.digits import Digits

    model, info = dc.load_classifier(dc.ensure_classifier(8))
    ds = Digits({"name": "digits", "resolution": 8, "split": "test"})
    acc = float((model(ds.tensor()).argmax(1) == ds.labels()).float().mean())
    assert acc > 0.9
    assert acc == pytest.approx(info["test_accuracy"])


# -- reference statistics cache ---------------------------------------------------------------------------------
def test_refstats_reused_and_invalidated_by_checksum(monkeypatch):
    from msrepro.config import DatasetConfig

    calls = []
    real = rs.build_reference
    monkeypatch.setattr(rs, "build_reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = DatasetConfig(name="digits", resolution=8, limit=200)
    first = rs.refstats(cfg, "digits")
    again = rs.refstats(cfg, "digits")
    assert first == again and len(calls) == 1
    prov = rs.provenance(first)
    assert prov["count"] == 200 and prov["extractor"] == dc.EXTRACTOR_NAME and prov["checksum"] in first.name
    other = rs.refstats(DatasetConfig(name="digits", resolution=8, limit=200, params={"split_seed": 1}), "digits")
    assert len(calls) == 2 and other != first
    assert rs.provenance(other)["checksum"] != prov["checksum"]


# -- from a checkpoint ------------------------------------------------------------------------------------------
SAMPLE = {"sampler": "dpm_solver", "params": {"nfe": 4}, "batch_size": 16}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "run" / "checkpoints" / "ckpt-00000000.pt",
                           "dataset.name=digits")


def test_streaming_equals_png_folder_and_counts_exactly(ckpt, tmp_path, monkeypatch):
    import torch_fidelity

    from msrepro.evaluation import stream

    asked = []
    real_forward = stream.SampleStream.forward
    monkeypatch.setattr(stream.SampleStream, "forward",
                        lambda self, noise: asked.append(noise.shape[0]) or real_forward(self, noise))
    r = ev.evaluate_checkpoint(ckpt, metrics="fd_digits", num=40, batch=16, sample=SAMPLE, progress=False,
                               png_dir=tmp_path / "png", repeats=2)
    assert sum(asked) == 80 and r["num_samples"] == 40 and r["nfe"] == 4
    assert len(list((tmp_path / "png" / "repeat1").glob("*.png"))) == 40
    assert r["labels"] == {"fd_digits": "FD-digits"} and "FID" not in r["protocol"].replace("FD-digits", "")
    ext, ref = dc.EXTRACTOR_NAME, Path(r["references"][0])
    out = torch_fidelity.calculate_metrics(  # the same samples read back from PNG files: the same FD
        input1=str(tmp_path / "png" / "repeat0"), input2=rs.CachedReference(ref), input2_cache_name=rs.REF,
        cache_root=str(ref), fid=True, cuda=False, verbose=False, save_cpu_ram=True, feature_extractor=ext,
        feature_extractor_weights_path=str(dc.classifier_path(8)))
    assert r["repeats"][0]["fd_digits"] == pytest.approx(out[torch_fidelity.KEY_METRIC_FID], rel=1e-9)
    assert r["repeats"][0]["fd_digits"] != r["repeats"][1]["fd_digits"]  # disjoint seed blocks
    assert r["metrics_std"]["fd_digits"] == pytest.approx(np.std([x["fd_digits"] for x in r["repeats"]], ddof=1))


def test_fd_digits_needs_the_digits_dataset(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "c.pt", "dataset.name=cifar10")
    with pytest.raises(ConfigError, match="dataset.name=digits"):
        ev.evaluate_checkpoint(ckpt, metrics="fd_digits", num=4)


def test_offline_fid_fails_before_sampling(ckpt, monkeypatch, tmp_path):
    from msrepro.evaluation.inception import FILENAME, InceptionWeightsMissing

    def boom(*a, **k):
        raise AssertionError("sampling started")

    monkeypatch.setattr("msrepro.checkpoint.load_model", boom)
    monkeypatch.setattr("msrepro.generation.generate", boom)
    with pytest.raises(InceptionWeightsMissing) as err:
        ev.evaluate_checkpoint(ckpt, metrics="fd_digits,fid", num=10)
    msg = str(err.value)
    assert FILENAME in msg and "msrepro prefetch inception" in msg and str(tmp_path.parent) not in msg[:0]
    # the command line: exit status 2 and the same message, no traceback
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.run([sys.executable, "-m", "msrepro", "evaluate", str(ckpt), "--metrics", "fid"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and FILENAME in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_run_and_plot(tmp_path, monkeypatch):
    from PIL import Image

    from msrepro.evaluation import evaluate_run, plot_metric_vs_iterations

    runs = {}
    for name in ("a", "b"):
        for step in (0, 10):
            path = tiny_checkpoint(tmp_path / name / "checkpoints" / f"ckpt-{step:08d}.pt", "dataset.name=digits")
            state = torch.load(path, weights_only=True)
            save_checkpoint(path, {**state, "step": step})
        runs[name] = tmp_path / name
    calls = []
    real = ev.evaluate_checkpoint
    monkeypatch.setattr("msrepro.evaluation.runs.evaluate_checkpoint", lambda *a, **k: calls.append(a) or real(*a, **k))
    kw = {"metrics": "fd_digits", "num": 12, "sample": SAMPLE, "progress": False}
    recs = evaluate_run(runs["a"], **kw)
    assert [r["step"] for r in recs] == [0, 10] and len(calls) == 2
    assert evaluate_run(runs["a"], **kw) == recs and len(calls) == 2  # resumed: nothing re-evaluated
    evaluate_run(runs["b"], **kw)
    png = plot_metric_vs_iterations(runs, tmp_path / "fig.png")
    assert Image.open(png).size[0] > 100
    with pytest.raises(ValueError, match="allowed"):
        plot_metric_vs_iterations(runs, tmp_path / "x.png", x="epochs")


@pytest.mark.slow
def test_inception_v3_compat_path_from_a_weights_file(tmp_path, monkeypatch):
    """The real inception-v3-compat extractor, loaded from a file (random weights saved by this test), never
    downloading; KID of 10 samples vs 10 references equals the full-set MMD^2 of features computed here."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from msrepro.checkpoint import load_model
    from msrepro.generation import generate, quantize

    empty = tmp_path / "empty.pt"
    torch.save({}, empty)
    torch.manual_seed(0)
    with monkeypatch.context() as mp:
        mp.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        random_net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)
    weights = tmp_path / "random-inception.pth"
    torch.save(random_net.state_dict(), weights)
    monkeypatch.setattr("torch.hub.load_state_dict_from_url", lambda *a, **k: pytest.fail("download attempted"))
    ckpt = tiny_checkpoint(tmp_path / "c.pt", "dataset.name=digits", "dataset.limit=10",
                           "eval.params.feature_extractor=inception", f"eval.params.inception_weights={weights}")
    r = ev.evaluate_checkpoint(ckpt, metrics="kid", num=10, sample=SAMPLE, progress=False)
    assert "inception-v3-compat" in r["protocol"]

    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    model, cfg = load_model(ckpt)
    fake = quantize(next(iter(generate(model, SAMPLE, (1, 8, 8), list(range(10)), "cpu", progress=False))))
    real = rs.UInt8Images(rs.reference_dataset(cfg.dataset).images).images
    with torch.no_grad():
        f_fake, f_real = (net(x.expand(-1, 3, -1, -1).contiguous())[0].double().numpy() for x in (fake, real))
    assert r["metrics"]["kid"] == pytest.approx(unbiased_mmd2_poly(f_fake, f_real), rel=1e-3)


def metric_lines(out: str) -> dict[str, str]:
    """{label: value text} from the metric table that ``msrepro evaluate`` prints (rows after the ---- rule)."""
    lines = out.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("----"))
    rows = {}
    for line in lines[rule + 1:]:
        if line.startswith("protocol:"):
            break
        label, value = line.rsplit(None, 1) if " ± " not in line else line.split(None, 1)
        rows[label.strip()] = value.strip()
    return rows


def test_metric_table_keeps_the_formatted_strings():
    """tabulate must not re-parse '3.779e+05' as a number and print 377900 (issue 11): fixed values, any machine."""
    from msrepro.cli.evaluate_cmd import format_result

    result = {"metrics": {"fd_digits": 377900.0, "kid": 1.234e-05, "precision": 0.5},
              "metrics_std": {"fd_digits": 1234.0, "kid": 0.0, "precision": 0.01},
              "labels": {"fd_digits": "FD-digits", "kid": "KID", "precision": "precision"}, "num_repeats": 1,
              "checkpoint": "c.pt", "step": 7, "num_samples": 12, "protocol": "p", "images_per_s": 1.0, "wall_s": 1.0}
    assert metric_lines(format_result(result)) == {"FD-digits": "3.779e+05", "KID": "1.234e-05", "precision": "0.5"}
    result["num_repeats"] = 3
    assert metric_lines(format_result(result))["FD-digits"] == "3.779e+05 ± 1.2e+03"


def test_cli_evaluate_prints_fd_digits_kid_prc_and_refstats(ckpt, tmp_path, capsys):
    import json

    from msrepro.cli import main

    rc = main(["evaluate", str(ckpt), "--num", "12", "--metrics", "fd_digits,kid,prc", "--batch", "12", "nfe=4",
               "--no-progress", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0
    saved = json.loads((tmp_path / "r.json").read_text())
    printed = metric_lines(out)
    for label, key in [("FD-digits", "fd_digits"), ("KID", "kid"), ("precision", "precision"), ("recall", "recall")]:
        # whatever the value on this machine (BLAS, threads), the table shows the JSON's number to 4 digits
        assert printed[label] == f"{saved['metrics'][key]:.4g}"
        assert float(printed[label]) == pytest.approx(saved["metrics"][key], rel=5e-4, abs=1e-300)
    assert "FID" not in out and saved["nfe"] == 4 and saved["num_samples"] == 12
    assert main(["evaluate", str(ckpt), "--metrics", "fdd"]) == 2
    assert "fd_digits" in capsys.readouterr().err  # unknown metric: the valid names are listed
    assert main(["refstats", "digits", "--resolution", "8", "--limit", "50"]) == 0
    assert '"count": 50' in capsys.readouterr().out


def test_run_config_validation_checks_eval_section():
    from msrepro.runconfig import load_config

    with pytest.raises(ConfigError, match="Valid names: fd_digits, fid, kid, prc"):
        load_config([], ["eval.metrics=[fid,fdd]"])
    with pytest.raises(ConfigError, match="kid_subsets"):
        load_config([], ["eval.params.kid_subset=3"])
    assert list(load_config([], ["eval.metrics=[kid,prc]"]).eval.metrics) == ["kid", "prc"]


def test_prefetch_inception_writes_where_the_lookup_finds_it(monkeypatch, cache):
    from msrepro.evaluation import inception
    from msrepro.prefetch import prefetch

    def fake_download(url, dst, **kw):
        assert url.endswith(inception.FILENAME)
        Path(dst).write_bytes(b"weights")

    monkeypatch.setattr("torch.hub.download_url_to_file", fake_download)
    with pytest.raises(inception.InceptionWeightsMissing):
        inception.require_weights()
    path = prefetch("inception")
    assert path == inception.hub_path() and str(cache / "torch") in str(path)
    assert inception.require_weights() == path
    monkeypatch.setenv(inception.ENV, str(cache / "elsewhere.pth"))
    with pytest.raises(inception.InceptionWeightsMissing, match="elsewhere.pth"):
        inception.require_weights()
    path.unlink()


def test_digits_classifier_training_is_deterministic_across_thread_counts():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a, _ = dc.train_classifier(8, epochs=1)
        torch.set_num_threads(1)
        b, _ = dc.train_classifier(8, epochs=1)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_loading_the_registries_leaves_torch_fidelity_unimported():
    """Every msrepro command loads the registries; torch-fidelity (and torchvision with it) is imported only by
    commands that evaluate, so that e.g. a bad `msrepro cluster` k is rejected in a few seconds (issue 11)."""
    code = ("import sys; from msrepro.registry import METRICS, ensure_loaded; ensure_loaded(); "
            "print({'fd_digits', 'fid', 'kid', 'prc'} <= set(METRICS.list()), "
            "sorted(m for m in ('torch_fidelity', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "True []"
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    from msrepro.evaluation import inception

    assert inception.FILENAME == URL_INCEPTION_V3.rsplit("/", 1)[-1] and inception.weights_url() == URL_INCEPTION_V3
