"""``preempt reproduce``'s pipeline on a few real Fashion-MNIST test images (small settings)."""

import json
import math
import re
import subprocess
import sys

import pytest

from preempt.registry import DEFAULT_MODEL, model_card
from preempt.core.reproduce import SETTINGS, ReproduceConfig, markdown, run_setting, train_command, write_report
from preempt.core.robustify import RobustifyConfig

SMALL = RobustifyConfig(iterations=3, steps=3)


def test_linf_report_has_the_issue_layout_and_resumes_from_cache(tmp_path):
    logs = []
    cfg = ReproduceConfig(n=6, chunk=3, attacks=("pgd",), robustify=SMALL)
    report = run_setting("linf", cfg, tmp_path / "work", log=logs.append)
    assert report["n_images"] == 6 and report["epsilon"] == 0.1 and report["delta"] == 0.1
    assert [(r["model"], r["preempt"]) for r in report["rows"]] == [
        ("adv", "none"), ("adv", "ours"), ("ours", "none"), ("ours", "ours")]
    for r in report["rows"]:
        for c in ("clean", "greybox_pgd", "whitebox_pgd"):
            assert 0.0 <= r[c] <= 1.0
            assert r[c] <= r["clean"] + 1e-9  # an attack can only lower accuracy
        if r["preempt"] == "ours":
            none = next(o for o in report["rows"] if o["model"] == r["model"] and o["preempt"] == "none")
            assert r["clean"] == pytest.approx(none["clean"])  # robustification keeps the model's label
            assert r["linf"] <= 0.1 + 1e-6  # the 8-bit image stays inside delta
            assert set(r["whitebox_pgd_by_eps"]) == {"0.025", "0.05", "0.075", "0.1"}
            assert r["whitebox_pgd"] == pytest.approx(min(r["whitebox_pgd_by_eps"].values()))
    assert len([m for m in logs if "cached" not in m]) == 4  # 2 models x 2 chunks computed

    logs.clear()
    again = run_setting("linf", cfg, tmp_path / "work", log=logs.append)
    assert all("cached" in m for m in logs) and len(logs) == 4
    assert again["rows"] == report["rows"]
    # Chunks of another size are reused (a CPU run resuming a GPU run's chunks); more images only
    # add chunks after them; another model in one role leaves the other role's chunks valid.
    logs.clear()
    more = run_setting("linf", ReproduceConfig(n=8, chunk=2, attacks=("pgd",), robustify=SMALL),
                       tmp_path / "work", log=logs.append, models={"ours": "fmnist-l2-ours-8ep"})
    adv = SETTINGS["linf"].models["adv"]
    assert [m.split(": ")[0] for m in logs if "cached" in m] == [
        f"linf {adv} images 0-3", f"linf {adv} images 3-6"]
    assert len([m for m in logs if "cached" not in m]) == 1 + 4  # adv 6-8; the other ours 0-2, ..., 6-8
    assert more["n_images"] == 8 and more["rows"][0]["model_name"] == adv

    paths = write_report(report, tmp_path / "reports")
    assert {p.name for p in paths} == {"linf.json", "linf.md", "linf_whitebox.png"}
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every accuracy in the markdown table is the JSON's, in percent.
    md = markdown(json.loads(paths[0].read_text()))
    table = [line for line in md.splitlines() if line.startswith("| ADV |") or line.startswith("| Ours |")][:4]
    for line, r in zip(table, report["rows"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[2]) == pytest.approx(100 * r["clean"], abs=0.006)
        assert float(cells[3]) == pytest.approx(100 * r["greybox_pgd"], abs=0.006)


def test_smoothing_report_has_certified_and_pgd10_columns(tmp_path):
    cfg = ReproduceConfig(n=2, chunk=2, robustify=RobustifyConfig(iterations=2, steps=2), noise_samples=2,
                          predict_samples=8, certify_n0=10, certify_n=100)
    report = run_setting("smoothing", cfg, tmp_path / "work", log=lambda m: None)
    assert report["sigma"] == 0.25 and report["epsilon"] == 0.5
    assert [(r["model"], r["preempt"]) for r in report["rows"]] == [("gaussian", "none"), ("gaussian", "ours")]
    for r in report["rows"]:
        for c in ("clean", "greybox_pgd", "greybox_pgd10", "whitebox_pgd", "whitebox_pgd10", "certified"):
            assert 0.0 <= r[c] <= 1.0
        assert r["greybox_pgd10"] <= r["clean"]


def test_cli_refuses_datasets_it_cannot_have(tmp_path):
    r = subprocess.run([sys.executable, "-m", "preempt.cli", "reproduce", "--dataset", "cifar10"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and re.search(r"fashion-mnist", r.stderr) and "Traceback" not in r.stderr


def test_models_option_replaces_a_role_and_refuses_unknown_ones(tmp_path):
    cfg = ReproduceConfig(n=2, chunk=2, attacks=("pgd",), whitebox=False, robustify=RobustifyConfig(iterations=2, steps=2))
    report = run_setting("linf", cfg, tmp_path / "work", log=lambda m: None, models={"adv": "fmnist-l2-adv-8ep"})
    names = {(r["model"], r["model_name"]) for r in report["rows"]}
    assert names == {("adv", "fmnist-l2-adv-8ep"), ("ours", SETTINGS["linf"].models["ours"])}
    assert "fmnist-l2-adv-8ep" in report["wall"]
    with pytest.raises(ValueError, match="gaussian"):
        run_setting("linf", cfg, tmp_path / "work", log=lambda m: None, models={"gaussian": "fmnist-gaussian-0.25"})
    r = subprocess.run([sys.executable, "-m", "preempt.cli", "reproduce", "--norm", "all", "--models", "adv=x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--models" in r.stderr and "Traceback" not in r.stderr


def test_roles_split_a_setting_across_runs_that_share_the_work_folder(tmp_path):
    cfg = ReproduceConfig(n=2, chunk=2, attacks=("pgd",), whitebox=False, robustify=RobustifyConfig(iterations=2, steps=2))
    logs = []
    ours = run_setting("linf", cfg, tmp_path / "work", log=logs.append, roles=["ours"])
    assert [(r["model"], r["preempt"]) for r in ours["rows"]] == [("ours", "none"), ("ours", "ours")]
    assert list(ours["wall"]) == [SETTINGS["linf"].models["ours"]] and len(logs) == 1
    logs.clear()
    full = run_setting("linf", cfg, tmp_path / "work", log=logs.append)
    assert ["cached" in m for m in logs] == [False, True]  # adv computed; ours from the run above
    assert [r for r in full["rows"] if r["model"] == "ours"] == ours["rows"]
    for bad in (["gaussian"], []):
        with pytest.raises(ValueError, match="gaussian|role"):
            run_setting("linf", cfg, tmp_path / "work", log=lambda m: None, roles=bad)
    r = subprocess.run([sys.executable, "-m", "preempt.cli", "reproduce", "--norm", "all", "--roles", "ours"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--roles" in r.stderr and "Traceback" not in r.stderr


def test_every_report_model_is_shipped_with_the_command_that_trained_it_and_the_default_is_robust():
    """`--train` would rerun exactly the options in each model card (a shipped model's, or for a model
    that is no longer shipped its card in docs/models/cards); the service's default model is the
    preemptively robust linf model of the linf report."""
    from pathlib import Path

    from preempt.core.reproduce import TRAIN_RECIPES
    from preempt.registry import registered_models

    cards = Path(__file__).resolve().parents[2] / "docs" / "models" / "cards"
    report_models = {name for setting in SETTINGS.values() for name in setting.models.values()}
    assert report_models | {DEFAULT_MODEL} == set(registered_models())  # nothing else ships
    for name in TRAIN_RECIPES:
        card = model_card(name) if name in registered_models() else json.loads((cards / f"{name}.json").read_text())
        recorded, ours = (c.split(" -o ")[0].split()[2:] for c in (card["command"], train_command(name)))
        assert dict(zip(recorded[::2], recorded[1::2])) == dict(zip(ours[::2], ours[1::2])), name
        if name in report_models:
            assert card["wall_seconds"] < 3600  # each within the 60 minutes of the 2-core machine
    assert DEFAULT_MODEL == SETTINGS["linf"].models["ours"]
    assert model_card(DEFAULT_MODEL)["method"] == "preemptive"


@pytest.mark.parametrize("setting", ["linf", "l2"])
def test_shipped_report_is_its_committed_chunks_combined(tmp_path, setting):
    """reports/fashion-mnist/{linf,l2}.json are exactly what `preempt reproduce` builds from the
    committed chunks, with nothing left to compute (the report can be checked and extended from them)."""
    import shutil
    from pathlib import Path

    reports = Path(__file__).resolve().parents[2] / "reports" / "fashion-mnist"
    shutil.copytree(reports / "chunks", tmp_path / "work")
    logs = []
    # both at the defaults: the setting's models and stopping rule (ln 2 for linf, 0.1 for l2)
    rebuilt = run_setting(setting, ReproduceConfig(n=1000), tmp_path / "work", log=logs.append)
    assert logs and all("cached" in m for m in logs)
    shipped = json.loads((reports / f"{setting}.json").read_text())
    assert shipped["n_images"] == 1000 and len(shipped["rows"]) == len(rebuilt["rows"]) == 4
    for a, b in zip(rebuilt["rows"], shipped["rows"]):
        assert (a["model"], a["preempt"], a["model_name"]) == (b["model"], b["preempt"], b["model_name"])
        for c in ("clean", "greybox_pgd", "greybox_aa", "whitebox_pgd", "whitebox_aa", "passes"):
            assert a[c] == pytest.approx(b[c], abs=1e-9)


def test_chunk_identity_follows_the_stop_threshold_that_runs():
    """A chunk cached under one early-stopping threshold is never reused for another: l2's default
    (0.1) gets its own key, and ln 2 keeps the key it had when it was every norm's default."""
    from preempt.core.reproduce.cache import key as _key
    from preempt.core.reproduce.cache import robustify_identity as _robustify_identity
    from preempt.core.threat import ThreatModel

    def key(setting, rcfg):
        s = SETTINGS[setting]
        return _key(_robustify_identity(rcfg, s, ThreatModel(s.norm, s.epsilon, s.delta)))

    ln2 = RobustifyConfig(stop_loss=math.log(2))
    assert key("l2", RobustifyConfig()) != key("l2", ln2)
    assert key("l2", RobustifyConfig()) == key("l2", RobustifyConfig(stop_loss=0.1))
    assert _robustify_identity(ln2, SETTINGS["l2"], ThreatModel("l2", 1.5, 1.5))["stop_loss"] is None
    assert key("linf", RobustifyConfig()) == key("linf", ln2)  # linf keeps ln 2: its cached chunks stay valid
    assert key("smoothing", RobustifyConfig()) == key("smoothing", ln2)  # smoothed l2 keeps ln 2 too
    # a field added later leaves the cached chunks' keys as they were at its default, and is keyed when set
    assert "texture_floor" not in _robustify_identity(RobustifyConfig(), SETTINGS["linf"], ThreatModel("linf", 0.1))
    assert key("linf", RobustifyConfig(texture_floor=0.25)) != key("linf", RobustifyConfig())
