"""timm's own model tests (tests/test_models.py of the installed timm's sdist) run against pixelvit's models.

tests/test_timm_contract.py checks the contract as pixelvit reads it; this runs the checks timm runs on its
own models, so what timm's maintainers add to them reaches pixelvit too. How:

* The sdist of the installed timm version is fetched with pip (`pip download --no-binary :all:`) into
  $PIXELVIT_CACHE/timm-tests (default ~/.cache/pixelvit); no network and no cached copy: the test is skipped
  and says why.
* test_models.py parametrizes over `timm.list_models(...)` when it is imported, so a conftest.py beside it
  imports pixelvit first (registering pixelvit's names) and keeps only pixelvit's names (pytest's
  collection hook; `-k` cannot tell adventurer_tiny from adventurer_tiny_patch1).
* Two of timm's own lists get pixelvit's names, as timm does for its models of the same kind:
  NON_STD_FILTERS ("transformer / hybrid models": features are (B, tokens, D), not a (B, C, H, W) map, like
  timm's vit_*) and EXCLUDE_JIT_FILTERS (not TorchScript-scriptable; torch.fx tracing is tested).
* Sizes a CPU affords: the real-tensor tests (forward, backward, torch.fx) take models up to ~1.5e9
  tokens x width^2 x depth (every model at patch 16 up to Base, nano and micro); the config tests, which run
  on torch's meta device, every name and release tag up to 4,097 tokens (patch 1 at 64 px). What is left
  out (patch 1 at 128 and 224 px, Large, Base at patch 8) takes minutes there, not seconds.
* timm's test_model_load_pretrained* download the released weights from the hub: left out (the suite runs
  offline; tests/test_pretrained.py covers pixelvit's loader on files the tests write).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_TENSOR_BUDGET = 1.5e9  # tokens x embed_dim^2 x depth: ~ the FLOPs of one forward, per image
META_MAX_TOKENS = 4097

CONFTEST = '''
import os

import pixelvit  # noqa: F401  registers pixelvit's models with timm before test_models.py lists them

REAL = set(os.environ["PIXELVIT_TIMM_REAL"].split(","))
META = set(os.environ["PIXELVIT_TIMM_META"].split(","))


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("model_name") if callspec else None
        allowed = META if item.originalname.startswith("test_model_default_cfgs") else REAL
        if item.originalname.startswith("test_model_load_pretrained"):  # downloads the released weights
            allowed = ()
        (keep if name in allowed else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
'''

# timm's lists of model-name patterns that pixelvit's names join (see the module docstring)
PIXELVIT_PATTERNS = "'adventurer_*', 'pixelvit_vit_*', 'vit_nano*', 'vit_micro*', "
LISTS = ("NON_STD_FILTERS = [", "EXCLUDE_JIT_FILTERS = [")


def cache_dir() -> Path:
    return Path(os.environ.get("PIXELVIT_CACHE", Path.home() / ".cache" / "pixelvit")) / "timm-tests"


def timm_test_file(version: str) -> Path:
    """tests/test_models.py of timm `version`'s sdist, fetched once with pip (skip when pip cannot)."""
    import tarfile

    folder = cache_dir() / version
    target = folder / "test_models.py"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                  f"timm=={version}", "-d", str(folder), "-q"],
                                 capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"pip could not fetch timm {version}'s sdist: {error}")
    archives = sorted(folder.glob(f"timm-{version}.tar.gz"))
    if fetched.returncode != 0 or not archives:
        reason = (fetched.stderr.strip().splitlines() or ["no archive"])[-1]
        pytest.skip(f"pip could not fetch timm {version}'s sdist (offline?): {reason}")
    with tarfile.open(archives[0]) as archive:
        member = archive.extractfile(f"timm-{version}/tests/test_models.py")
        text = member.read().decode()
    for line in LISTS:
        if text.count(line) != 1:
            pytest.fail(f"timm {version}'s test_models.py no longer defines {line[:-4]} once: update this test")
        text = text.replace(line, line + PIXELVIT_PATTERNS)
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "pytest.ini").write_text("[pytest]\n")  # this folder is the rootdir, not the repository
    target.write_text(text)
    return target


def affordable_names() -> tuple[list[str], list[str]]:
    """(names for the real-tensor tests, names and tags for the meta-device config tests)."""
    import timm

    import pixelvit  # noqa: F401
    from pixelvit.models.registry import MODELS, TIMM_NAMES, get_config
    from pixelvit.patching import as_hw

    def cost(name: str, img_size=None) -> tuple[int, float]:
        config = get_config(name)
        h, w = as_hw(img_size or config.img_size)
        tokens = (h // config.patch_size) * (w // config.patch_size) + 1
        return tokens, tokens * config.embed_dim**2 * config.depth

    real = sorted(TIMM_NAMES[n] for n in MODELS if cost(n)[1] <= REAL_TENSOR_BUDGET)
    by_timm_name = {TIMM_NAMES[n]: n for n in MODELS}
    meta = []
    for tagged in timm.list_models([*by_timm_name], include_tags=True):
        base = tagged.split(".")[0]
        size = timm.models.get_pretrained_cfg(tagged).input_size[-2:] if "." in tagged else None
        if base in by_timm_name and cost(by_timm_name[base], tuple(size) if size else None)[0] <= META_MAX_TOKENS:
            meta.append(tagged)
    return real, sorted(meta)


@pytest.mark.slow
def test_timms_own_model_tests_pass_on_pixelvits_models(tmp_path):
    import timm

    test_file = timm_test_file(timm.__version__)
    real, meta = affordable_names()
    assert "adventurer_nano" in real and "adventurer_base_patch16" in real
    assert "adventurer_tiny_patch1.in1k_64" in meta
    report = tmp_path / "junit.xml"
    env = dict(os.environ, PIXELVIT_TIMM_REAL=",".join(real), PIXELVIT_TIMM_META=",".join(meta),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_WAIT_POLICY="PASSIVE")
    run = subprocess.run([sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider",
                          "-W", "ignore::pytest.PytestUnknownMarkWarning", f"--junitxml={report}",
                          "--rootdir", str(test_file.parent)],
                         cwd=test_file.parent, env=env, capture_output=True, text=True, timeout=1500)
    cases = ET.parse(report).getroot().iter("testcase")
    outcome = {}
    for case in cases:
        status = "failed" if case.find("failure") is not None or case.find("error") is not None else \
            "skipped" if case.find("skipped") is not None else "passed"
        outcome[case.get("name")] = status
    failed = sorted(name for name, status in outcome.items() if status == "failed")
    assert failed == [], run.stdout[-6000:]
    def names(*statuses):
        return {name.split("-", 1)[1].rstrip("]") for name, status in outcome.items() if status in statuses}

    # every chosen name went through timm's tests; timm itself skips a few (e.g. "Fixed input size model >
    # limit" for the 448 px releases), and no chosen name is only skipped but those
    assert set(real) | set(meta) <= names("passed", "skipped")
    only_skipped = names("skipped") - names("passed")
    assert all(name.endswith(("in1k_384", "in1k_448")) or name == "adventurer_base_patch16" for name in only_skipped)
    assert run.returncode == 0, run.stdout[-3000:]
    print(f"timm {timm.__version__} tests/test_models.py on {len(set(real) | set(meta))} pixelvit names: "
          f"{sum(s == 'passed' for s in outcome.values())} passed, {sum(s == 'skipped' for s in outcome.values())} "
          f"skipped by timm, 0 failed")
