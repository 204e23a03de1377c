"""The benchmark's model transforms must not change what they time."""

import copy
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import torch
import torch.nn.functional as F

from bench.passes import fold_batchnorm, pad_stem
from preempt.core.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def assert_same_logits_and_input_gradient(model, transformed, y):
    """Both float64 nets compute the same logits and input gradient up to rounding, on random images
    (the transform is exact algebra, so any larger difference is a bug)."""
    x = torch.rand(len(y), 3, 64, 64, dtype=torch.float64)
    grads, logits = [], []
    for net in (model, transformed):
        xa = x.clone().requires_grad_(True)
        out = net(xa)
        logits.append(out.detach())
        grads.append(torch.autograd.grad(F.cross_entropy(out, y), xa)[0])
    assert (logits[0] - logits[1]).abs().max() <= 1e-10 * logits[0].abs().max()
    assert (grads[0] - grads[1]).norm() <= 1e-10 * grads[0].norm()


def test_batchnorm_folding_keeps_logits_and_input_gradient():
    torch.manual_seed(0)
    # float64: the fold is exact algebra, so any difference beyond rounding is a bug (in float32 a
    # deep ReLU net's input gradient moves by about 1% from rounding alone)
    model = build_model("resnet50", 10).eval().double()
    for m in model.modules():  # non-trivial statistics, or the fold would be the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    for p in model.parameters():
        p.requires_grad_(False)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched

    assert_same_logits_and_input_gradient(model, folded, torch.tensor([1, 7]))


def test_padded_stem_keeps_logits_and_input_gradient():
    torch.manual_seed(0)
    model = build_model("resnet50", 10).eval().double()
    for p in model.parameters():
        p.requires_grad_(False)
    padded = pad_stem(copy.deepcopy(model), 8)
    stem = [m for m in padded.modules() if isinstance(m, torch.nn.Conv2d)][0]
    assert stem.in_channels == 8
    assert_same_logits_and_input_gradient(model, padded, torch.tensor([3, 4]))


def test_layer_ceiling_counts_the_whole_pass():
    """bench.layers' bound is about the pass only if its layers carry all the pass's FLOPs."""
    from bench.layers import layer_flops, layer_shapes
    from bench.passes import pass_flops

    model = build_model("resnet50", 1000).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    layers = layer_shapes(model, (3, 64, 64), 2, "cpu")
    assert sum(e["count"] for e in layers.values()) == 54  # 53 convolutions and the classifier
    counted = sum(2 * layer_flops(k, e["out"]) * e["count"] for k, e in layers.items())
    assert counted == 2 * pass_flops(model, (3, 64, 64), "cpu")


def test_epochs_that_fit_scales_the_probe_and_falls_back_to_one_method(tmp_path):
    from pathlib import Path

    card = tmp_path / "probe.json"
    # 5120 training images (6400, a fifth held out) in 5 s: 58000 of them take 56.6 s an epoch.
    card.write_text(json.dumps({"history": [{"seconds": 50.0}, {"seconds": 5.0}]}))

    def fit(budget, methods):
        r = subprocess.run([sys.executable, "-m", "bench.epochs_that_fit", str(card), "6400", "60000", str(budget),
                            "8", str(methods)], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).parents[1])  # this checkout's bench and preempt
        return tuple(int(v) for v in r.stdout.split())

    assert fit(1000, 2) == (8, 2)  # 2 x 8 x 56.6 s = 906 s: both at once
    assert fit(600, 2) == (8, 1)  # not both; the first alone still fits all 8
    assert fit(300, 2) == (5, 1)
    assert fit(300, 1) == (5, 1)
    assert fit(10, 1) == (1, 1)  # at least one epoch


def test_stuck_reruns_picked_images_and_the_continuation_keeps_budget_and_label(tmp_path, adv_model, fmnist_test):
    """``bench.stuck --images`` robustifies exactly the images named; ``anneal`` ends inside B_delta."""
    import json

    from bench import stuck
    from preempt.core.threat import flat_norm

    x = fmnist_test[0][:2]
    with torch.no_grad():
        label = adv_model(x).argmax(1)
    r, passes = stuck.anneal(adv_model, x, label, "linf", 0.1, 0.1)
    assert (flat_norm(r.x_rob - x, "linf") <= 0.1 + 1e-6).all()  # started at 0.15 from x, ends in B_0.1
    assert passes == 2 * 2100 + (len(stuck.ANNEAL) - 2) * stuck.ANNEAL_STAGE * 21  # every stage runs in full
    out = tmp_path / "stuck.json"
    assert stuck.main(["--images", "3,1", "--efforts", "paper-full", "--deltas", "0.1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == [3, 1] and result["n_images"] == 2
    assert {im["index"] for im in result["stuck"]} <= {1, 3}  # the correctly classified ones of those two
    assert [row["run"] for row in result["rows"]] == ["paper-full"] * (len(result["stuck"]) > 0)


@pytest.mark.parametrize("fields", [{"inner_loss": "cw", "samples": 2}, {"inner_loss": "cw", "outer_loss": "cw"}])
def test_margin_variants_keep_budget_and_label(adv_model, fmnist_test, fields):
    from bench import variants
    from preempt.core.threat import ThreatModel

    x, _ = fmnist_test
    r = variants.run(adv_model, x[:16], ThreatModel("linf", 0.1), {"iterations": 6, "steps": 5, **fields})
    assert float(r.linf.max()) <= 0.1 + 1e-6
    with torch.no_grad():
        assert torch.equal(adv_model(r.x_rob).argmax(1), r.label)


def test_margin_outer_loss_raises_the_worst_case_margin(adv_model, fmnist_test):
    """outer_loss="cw" descends the margin at the attack's end point: after robustification the margin a
    fresh PGD finds is lower (more robust) than on the originals, within budget and label."""
    from bench import variants
    from preempt.core.attacks import pgd
    from preempt.core.threat import ThreatModel

    x, _ = fmnist_test
    x = x[:64]
    threat = ThreatModel("linf", 0.1)
    torch.manual_seed(0)
    r = variants.run(adv_model, x, threat, {"iterations": 15, "steps": 7, "outer_loss": "cw", "plateau_window": 0})
    assert float(r.linf.max()) <= 0.1 + 1e-6
    with torch.no_grad():
        assert torch.equal(adv_model(r.x_rob).argmax(1), r.label)

    def worst_margin(z):
        torch.manual_seed(1)
        xa = pgd(adv_model, z, r.label, threat.geometry, 0.1, steps=20, loss_fn=variants.margin_loss)
        with torch.no_grad():
            return variants.margin_loss(adv_model, xa, r.label)

    assert float(worst_margin(r.x_rob).mean()) < float(worst_margin(x).mean()) - 0.5


def test_transforms_bench_writes_its_table(tmp_path):
    """``bench.transforms`` runs the product's pipeline with and without ``survive`` and reports, per variant and
    transform column, accuracy and gap closure for the adaptive and the non-adaptive attack. With ``--chunks`` each
    batch is kept as it ends: a second run takes them instead of running again and gives the same table, a run over
    part of the range takes its chunk, and a run with other settings is refused instead of mixing tables."""
    out, chunks = tmp_path / "t.json", tmp_path / "chunks"
    cmd = [sys.executable, "-m", "bench.transforms", "-n", "6", "--batch", "3", "--attacks", "pgd",
           "--columns", "none,jpeg:75", "--survive", "jpeg:75-95", "--chunks", str(chunks)]
    r = subprocess.run(cmd + ["--json", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    table = json.loads(out.read_text())
    assert [row["variant"] for row in table["rows"]] == ["originals", "defaults", "survive jpeg:75-95"]
    assert table["n"] == 6 and table["images"] == [[0, 6]] and table["complete"]
    assert sorted(p.name for p in chunks.iterdir()) == ["00000-00003.json", "00003-00006.json"]
    for row in table["rows"]:
        for col in ("none", "jpeg:75"):
            both = row[f"{col}:pgd"]
            assert 0 <= both <= min(row[f"{col}:pgd_adaptive"], row[f"{col}:pgd_nonadaptive"]) <= row[f"{col}:clean"]
    for row in table["rows"][1:]:
        assert row["passes_per_image"] > 0 and 0 < row["ssim"] <= 1 and "jpeg:75:gap_closure_pgd" in row
    assert "| survive jpeg:75-95 |" in r.stdout
    again = subprocess.run(cmd + ["--json", str(tmp_path / "again.json")], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("taken from") == 2
    assert json.loads((tmp_path / "again.json").read_text())["rows"] == table["rows"]
    part = subprocess.run(cmd[:4] + ["3", "--start", "3"] + cmd[5:] + ["--json", str(tmp_path / "part.json")],
                          capture_output=True, text=True, timeout=300)
    assert part.returncode == 0 and part.stdout.count("taken from") == 1, part.stderr
    # --from-chunks over a longer range runs nothing: it names the missing batch and builds the table of the folder
    only = subprocess.run(cmd[:4] + ["9"] + cmd[5:] + ["--from-chunks", "--json", str(tmp_path / "only.json")],
                          capture_output=True, text=True, timeout=300)
    assert only.returncode == 0 and only.stdout.count("not run") == 1, only.stderr
    built = json.loads((tmp_path / "only.json").read_text())
    assert built["rows"] == table["rows"] and built["ran"] == 0 and not built["complete"]
    other = subprocess.run(cmd[:-4] + ["--columns", "none", "--chunks", str(chunks)], capture_output=True, text=True,
                           timeout=300)
    assert other.returncode != 0 and "made with other settings" in other.stderr
    # another budget is another table: refused on these chunks; in its own folder every file keeps that budget
    wider = subprocess.run(cmd + ["--delta", "0.15"], capture_output=True, text=True, timeout=300)
    assert wider.returncode != 0 and "made with other settings" in wider.stderr
    small = tmp_path / "small"
    r = subprocess.run(cmd[:4] + ["2", "--batch", "2"] + cmd[7:-1] + [str(small), "--delta", "0.05"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    chunk = json.loads((small / "00000-00002.json").read_text())
    assert chunk["settings"]["threat"] == {"norm": "linf", "epsilon": 0.1, "delta": 0.05}
    for variant in ("defaults", "survive jpeg:75-95"):
        assert all(report["linf"] <= 0.05 + 1e-6 for report in chunk["reports"][variant])


TRANSFORM_TABLES = sorted(p.name for p in (ROOT / "docs" / "bench").glob("transforms_*") if p.is_dir())


@pytest.mark.parametrize("chunks", TRANSFORM_TABLES)
def test_transforms_bench_rebuilds_each_committed_table_from_its_chunks(tmp_path, chunks):
    """Each committed transform table made in parts is what ``bench.transforms`` builds from its folder of chunks:
    its own command again, over the images it covers, runs nothing and gives the same rows. The per-image
    reports behind it keep the budget, every file the check called robust keeps its label, and the protection is
    real: with no transform each protected variant leaves more images robust than the originals under each attack."""
    folder = ROOT / "docs" / "bench" / chunks
    table = json.loads(folder.with_suffix(".json").read_text())
    first, end = table["images"][0][0], table["images"][-1][1]  # a table may cover ranges with gaps between
    args, words = [], shlex.split(table["command"])[3:]
    skip = {"--json", "--markdown", "--chunks", "-n", "--start"}
    for i, w in enumerate(words):
        if w not in skip and (i == 0 or words[i - 1] not in skip):
            args.append(w)
    out = tmp_path / "t.json"
    r = subprocess.run([sys.executable, "-m", "bench.transforms", *args, "-n", str(end - first), "--start", str(first),
                        "--chunks", str(folder), "--from-chunks", "--json", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rebuilt = json.loads(out.read_text())
    assert rebuilt["ran"] == 0 and r.stdout.count("taken from") == len(list(folder.glob("*.json")))
    assert rebuilt["rows"] == table["rows"] and rebuilt["images"] == table["images"]
    for path in folder.glob("*.json"):
        for reports in json.loads(path.read_text())["reports"].values():
            assert all(rep["linf"] <= rep["delta"] + 1e-6 for rep in reports)
            assert all(rep["label_kept"] for rep in reports if rep["verified"]["robust"])
    originals, *protected = table["rows"]
    for row in protected:
        for attack in table["attacks"]:
            assert row[f"none:{attack}"] > originals[f"none:{attack}"]


def test_quality_bench_measures_each_setting_on_real_images_and_photos(tmp_path):
    """bench.quality on 3 real test images and one real photo (matplotlib's public-domain portrait, 48x56):
    a row per setting with the shaped share (0 without texture), the budget kept, and the photo's row; a
    setting it does not know is one line and a non-zero exit."""
    import matplotlib.cbook
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        img.convert("RGB").resize((48, 56), Image.BICUBIC).save(photos / "portrait.png")
    out = tmp_path / "q.json"
    r = subprocess.run([sys.executable, "-m", "bench.quality", "-n", "3", "--strengths", "high,medium+texture",
                        "--attacks", "pgd", "--photos", str(photos), "--photo-strengths", "medium+texture:0.5",
                        "--no-per-pixel", "--json", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [row["strength"] for row in result["rows"]] == ["none (originals)", "high", "medium+texture"]
    high, shaped = result["rows"][1], result["rows"][2]
    assert high["shaped"] == 0 and 0 <= shaped["shaped"] <= 1
    assert all(row["budget_used"] <= 1 + 1e-6 and row["passes"] > 0 for row in (high, shaped))
    assert [p["strength"] for p in result["photos"]] == ["medium+texture:0.5"]
    assert result["photos"][0]["size"] == "48x56" and result["photos"][0]["verified"] in (0.0, 1.0)
    bad = subprocess.run([sys.executable, "-m", "bench.quality", "-n", "1", "--strengths", "invisible"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown setting 'invisible'" in bad.stderr


def test_defaults_bench_counts_every_part_of_both_pipelines(tmp_path):
    """bench.defaults on 4 real test images: the paper's loop costs exactly 100 x 21 passes and its label, the
    defaults' passes are split into robustification, scale and check (which together are the total), accuracies
    never exceed clean, and the speed ratio is the ratio of the two rates."""
    out = tmp_path / "d.json"
    cmd = [sys.executable, "-m", "bench.defaults", "-n", "4", "--attacks", "pgd", "--keep", str(tmp_path / "kept")]
    r = subprocess.run(cmd + ["--json", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["row"]: row for row in json.loads(out.read_text())["rows"]}
    # each made row's kept evaluation says which files each attack left robust: as many as its accuracy counts
    for name in ("paper-loop", "defaults"):
        per_file = json.loads((tmp_path / "kept" / f"{name}.eval.json").read_text())["robust_per_file"]
        assert len(per_file["pgd"]) == 4 and per_file["pgd"].count("1") == round(rows[name]["greybox_pgd"] * 4)
    # a second run with the same --keep evaluates the kept files and timing instead of making them again
    again = subprocess.run(cmd + ["--json", str(tmp_path / "again.json")], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("files and timing from") == 2 and again.stdout.count("evaluation from") == 2
    assert json.loads((tmp_path / "again.json").read_text())["rows"] == list(rows.values())
    # --retime makes and times both rows again; the seeded runs write the same files, whose evaluation is kept
    retimed = subprocess.run(cmd + ["--retime", "--json", str(tmp_path / "retimed.json")], capture_output=True,
                             text=True, timeout=900)
    assert retimed.returncode == 0, retimed.stderr[-2000:]
    assert "files and timing from" not in retimed.stdout and retimed.stdout.count("evaluation from") == 2
    for old, new in zip(rows.values(), json.loads((tmp_path / "retimed.json").read_text())["rows"]):
        assert {k: v for k, v in old.items() if "per_s" not in k and k != "vs_paper_loop"} == \
            {k: v for k, v in new.items() if "per_s" not in k and k != "vs_paper_loop"}
    # bench.check studies exactly those files: its count of files the report called robust is the run's
    study = tmp_path / "c.json"
    c = subprocess.run([sys.executable, "-m", "bench.check", "--files", str(tmp_path / "kept" / "defaults.pt"), "-n", "4",
                        "--iters", "5", "--batch", "4", "--json", str(study)], capture_output=True, text=True, timeout=900)
    assert c.returncode == 0, c.stderr[-2000:]
    checked = json.loads(study.read_text())
    assert checked["n"] == 4 and checked["current_verified"] == round(rows["defaults"]["verified"] * 4)
    # ... and explains its errors on the files the report called robust: AutoAttack again from another seed (on those
    # files only), each AutoAttack component alone on each error, and the check's parts with a margin
    files = str(tmp_path / "kept" / "defaults.pt")
    for mode in (["--aa-again", str(study), "--aa-seed", "1"], ["--explain", str(study)], ["--margins", str(study)]):
        m = subprocess.run([sys.executable, "-m", "bench.check", "--files", files, "--batch", "4"] + mode,
                           capture_output=True, text=True, timeout=900)
        assert m.returncode == 0, (mode, m.stderr[-2000:])
    checked = json.loads(study.read_text())
    verdicts = {k: [c == "1" for c in v] for k, v in checked["per_file"].items()}
    called = [bool(v) for v in torch.load(files, weights_only=False)["verified"].tolist()]
    assert len(called) == len(verdicts["aa"]) == len(verdicts["aa_seed1"]) == 4  # all 4 keep their label
    assert not any(b and not c for b, c in zip(verdicts["aa_seed1"], called))  # only called-robust files attacked
    errors = [i for i in range(4) if called[i] and verdicts["aa"][i]]
    assert [e["file"] for e in checked["errors"]] == errors
    assert all(set(e["components"]) == {"apgd-ce", "apgd-t", "fab-t", "square"} for e in checked["errors"])
    margin_rows = checked["margin_rows"]
    assert margin_rows[-1]["check"] == "the pipeline's own verdicts" and margin_rows[-1]["verified"] == sum(called) / 4
    shares = [row["verified"] for row in margin_rows[:-1]]
    assert shares == sorted(shares, reverse=True)  # a larger margin asked, never more files called robust
    assert len(checked["margins"]["worst"]) == 4
    no_files = subprocess.run([sys.executable, "-m", "bench.check", "--explain", str(study)], capture_output=True,
                              text=True, timeout=300)
    assert no_files.returncode != 0 and "--explain needs --files" in no_files.stderr
    too_many = subprocess.run([sys.executable, "-m", "bench.check", "--files", str(tmp_path / "kept" / "defaults.pt"),
                               "-n", "5"], capture_output=True, text=True, timeout=300)
    assert too_many.returncode != 0 and "holds 4 files" in too_many.stderr
    # bench.recheck runs the check again on the files called robust and scores recheck rules against the row's own
    # verdicts: a higher floor never keeps more, all runs clearing it keeps no more than the recheck rule, which keeps
    # no more than the first run passes
    rc = subprocess.run([sys.executable, "-m", "bench.recheck", "--keep", str(tmp_path / "kept"), "--against", "pgd",
                         "--taus", "0,0.02,1", "--json", str(tmp_path / "r.json")], capture_output=True, text=True,
                        timeout=900)
    assert rc.returncode == 0, rc.stderr[-2000:]
    rules = {row["rule"]: row["verified"] for row in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert rules["the reports' verdicts"] == sum(called)
    floors = [rules[f"run 0 > {t}"] for t in (0.0, 0.02, 1.0)]
    assert floors == sorted(floors, reverse=True) and floors[0] <= sum(called)
    for t in (0.0, 0.02, 1.0):
        assert rules[f"every run > {t}"] <= rules[f"run 0 > {t}, or run 0 > 0 and run 1 > {t}"] <= floors[0]
    no_aa = subprocess.run([sys.executable, "-m", "bench.recheck", "--keep", str(tmp_path / "kept")],
                           capture_output=True, text=True, timeout=300)
    assert no_aa.returncode != 0 and "no per-file verdicts of 'aa'" in no_aa.stderr
    # bench.decide builds checks from parts run on every file: a margin floor of 0 decides every file the screen
    # passes (the screen's verdicts and passes), an unreachable floor runs the 100-iteration stage on all of them
    # (no more files called robust, more passes), and the recheck only takes verdicts away
    dc = subprocess.run([sys.executable, "-m", "bench.decide", "--keep", str(tmp_path / "kept"), "--against", "pgd",
                         "--floors", "0,1e9", "--batch", "4", "--json", str(tmp_path / "dc.json")],
                        capture_output=True, text=True, timeout=900)
    assert dc.returncode == 0, dc.stderr[-2000:]
    decided = {row["check"]: row for row in json.loads((tmp_path / "dc.json").read_text())["rows"]}
    screen, none_decided = "screen only (apgd-t @25 toward all nine)", "screen, then @100 toward ranks 1-3 below margin"
    for run in ("one run", "with the recheck of close calls"):
        assert decided[f"{none_decided} 0, {run}"]["verified"] == decided[f"{screen}, {run}"]["verified"]
        assert decided[f"{none_decided} 0, {run}"]["passes"] == decided[f"{screen}, {run}"]["passes"]
        assert decided[f"{none_decided} 1e+09, {run}"]["verified"] <= decided[f"{screen}, {run}"]["verified"]
        assert decided[f"{none_decided} 1e+09, {run}"]["passes"] >= decided[f"{screen}, {run}"]["passes"]
    for name in ("current", screen, f"{none_decided} 1e+09"):
        assert decided[f"{name}, with the recheck of close calls"]["verified"] <= decided[f"{name}, one run"]["verified"]
        assert decided[f"{name}, one run"]["passes"] > 0
    assert decided["the row's reports (the product's own run)"]["verified"] == sum(called)
    # --product runs the product's own check with each floor on the row's files: deciding every file the screen
    # passes (floor 0) never costs more than the tiered check on every file
    pc = subprocess.run([sys.executable, "-m", "bench.decide", "--keep", str(tmp_path / "kept"), "--against", "pgd",
                         "--product", "0,inf", "--batch", "4", "--json", str(tmp_path / "pc.json")],
                        capture_output=True, text=True, timeout=900)
    assert pc.returncode == 0, pc.stderr[-2000:]
    product = {row["check"]: row for row in json.loads((tmp_path / "pc.json").read_text())["rows"]}
    assert 0 < product["product: decided above margin 0"]["passes"] <= product["product: the tiered check on every file"]["passes"]
    # --recheck-below changes the product's check for the defaults row only: it is made and evaluated anew
    rechecked = subprocess.run(cmd + ["--recheck-below", "0.5", "--json", str(tmp_path / "rb.json")],
                               capture_output=True, text=True, timeout=900)
    assert rechecked.returncode == 0, rechecked.stderr[-2000:]
    assert rechecked.stdout.count("files and timing from") == 1
    assert json.loads((tmp_path / "rb.json").read_text())["recheck_below"] == 0.5
    # --set changes the defaults row's request: the paper loop's kept files and evaluation are taken as they are,
    # the defaults row is made and evaluated anew (1 outer iteration instead of the preset's 100: fewer passes)
    changed = subprocess.run(cmd + ["--set", "iterations=1", "--json", str(tmp_path / "set.json")],
                             capture_output=True, text=True, timeout=900)
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert changed.stdout.count("files and timing from") == 1 and changed.stdout.count("evaluation from") == 1
    result_set = json.loads((tmp_path / "set.json").read_text())
    set_rows = {row["row"]: row for row in result_set["rows"]}
    assert result_set["set"] == {"iterations": "1"}
    kept_rows = {row["row"]: row for row in json.loads((tmp_path / "retimed.json").read_text())["rows"]}
    assert set_rows["paper-loop"] == kept_rows["paper-loop"] and set_rows["originals"] == kept_rows["originals"]
    assert set_rows["defaults"]["passes_robustify"] < rows["defaults"]["passes_robustify"]
    bad_set = subprocess.run(cmd + ["--set", "stop_loss=-1"], capture_output=True, text=True, timeout=300)
    assert bad_set.returncode != 0 and "stop_loss" in bad_set.stderr
    assert list(rows) == ["originals", "paper-loop", "defaults"]
    paper, ours = rows["paper-loop"], rows["defaults"]
    assert paper["passes"] == paper["passes_robustify"] == 2101.0 and paper["vs_paper_loop"] == 1.0
    parts = ours["passes_robustify"] + ours.get("passes_scale", 0) + ours["passes_check"]
    assert abs(ours["passes"] - parts) < 0.5 and ours["passes_check"] > 0
    assert abs(ours["vs_paper_loop"] - ours["images_per_s"] / paper["images_per_s"]) < 0.01
    for row in rows.values():
        assert 0 <= row["greybox_pgd"] <= row["clean"] <= 1
    assert 0 <= ours["verified"] <= 1
    bad = subprocess.run([sys.executable, "-m", "bench.defaults", "-n", "1", "--rows", "fastest"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown rows" in bad.stderr


def test_check_bench_scores_each_candidate_check_against_full_autoattack(tmp_path):
    """bench.check on 6 real test images at 5 APGD iterations: every candidate's robust share, its errors (robust
    by the check, broken by AutoAttack) and misses add up with AutoAttack's count of robust files."""
    out = tmp_path / "c.json"
    r = subprocess.run([sys.executable, "-m", "bench.check", "-n", "6", "--iters", "5", "--batch", "6",
                        "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["rows"] and all(len(v) == result["kept"] for v in result["per_file"].values())
    for row in result["rows"]:
        called = round(row["verified"] * result["n"])
        # robust by the check = robust by AutoAttack - missed + broken_by_aa
        assert called == result["aa_robust"] - row["missed"] + row["broken_by_aa"]
        assert row["passes"] > 0


@pytest.mark.parametrize("study", ["check_linf_ours12_n1000.json", "check_linf_ours12_pipeline_n1000.json"])
def test_check_bench_rescores_the_committed_study_to_the_same_table(tmp_path, study):
    """bench.check --rescore, run on each committed 1000-file study, reproduces its table from the per-file verdicts
    and marks the product's own check, which costs less than AutoAttack's gradient half, errs no more, and keeps
    the trust goal (at most 0.5% of the files it calls robust broken by full AutoAttack)."""
    study = ROOT / "docs" / "bench" / study
    out = tmp_path / "c.json"
    r = subprocess.run([sys.executable, "-m", "bench.check", "--rescore", str(study), "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["check"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows == {row["check"]: row for row in json.loads(study.read_text())["rows"]}
    (current,) = [row for name, row in rows.items() if name.endswith("(current)")]
    before = rows["pgd-20x5, apgd-ce, apgd-t x9 @100 (the check before)"]
    assert current["passes"] < before["passes"] and current["error"] <= before["error"] <= 0.005


def test_check_bench_rescores_the_l2_study_and_its_second_opinions_never_add_files(tmp_path):
    """The committed study of the other l2 model's pipeline files: --rescore reproduces its table; the report's own
    verdicts are the run's (900 of 1000); a second run of the check on close calls only takes files away, each
    AutoAttack run's breaks among those files are counted in the union, and every explained error is a file the
    report called robust."""
    study = ROOT / "docs" / "bench" / "check_l2adv8_pipeline_n1000.json"
    out = tmp_path / "c.json"
    r = subprocess.run([sys.executable, "-m", "bench.check", "--rescore", str(study), "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(study.read_text())
    assert json.loads(out.read_text())["rows"] == result["rows"]
    rows = {row["check"]: row for row in result["margin_rows"]}
    own = rows["the pipeline's own verdicts"]
    assert round(own["verified"] * result["n"]) == result["current_verified"] == 900
    second = [row for name, row in rows.items() if "once more" in name]
    assert len(second) == 3
    for row in second:
        assert row["verified"] <= own["verified"] and row["true_label"] <= own["true_label"]
        assert row["broken_by_aa"] <= row["broken_by_any_aa"] <= own["broken_by_any_aa"] and row["passes"] > 0
    seed1 = [c == "1" for c in result["per_file"]["aa_seed1"]]  # seed 1 attacked only files called robust
    assert sum(seed1) == 6 and len(result["errors"]) == own["broken_by_aa"] == 8


def test_initializer_bench_keeps_every_start_inside_the_budget(tmp_path):
    """bench.initializer on 6 real test images with a network trained for one epoch on 64 training images: the
    network's change stays inside the delta ball (and [0, 1]), every row's accuracies never exceed clean, and the
    robustifier from each start costs at least its minimum (3 calm iterations and the confirming attack)."""
    from bench.initializer import Initializer
    from preempt.core.threat import ThreatModel

    for norm, delta in (("linf", 0.1), ("l2", 1.5)):
        net = Initializer(ThreatModel(norm, delta, delta))
        x = torch.rand(5, 1, 28, 28)
        with torch.no_grad():
            for p in net.decode[-1].parameters():
                p.mul_(100)  # drive the raw change far outside the ball: the budget must still hold
            change = net(x) - x
        assert (x + change).min() >= 0 and (x + change).max() <= 1
        size = change.abs().flatten(1).amax(1) if norm == "linf" else change.flatten(1).norm(dim=1)
        assert (size <= delta + 1e-5).all()
    out = tmp_path / "i.json"
    r = subprocess.run([sys.executable, "-m", "bench.initializer", "-n", "6", "--train-images", "64", "--epochs", "1",
                        "--steps", "2", "--batch", "6", "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {row["row"]: row for row in result["rows"]}
    assert list(rows)[:2] == ["originals", "initializer alone"] and len(rows) == 5
    for row in rows.values():
        assert 0 <= row["greybox_pgd"] <= row["clean"] <= 1
    for name in rows:
        if name.startswith("robustify"):
            assert rows[name]["passes"] >= 4 * 21
    assert result["training"]["passes_per_image"] == 3 and result["training"]["seconds"] > 0


def test_survive_bench_keeps_the_budget_and_counts_jpeg_robustness_within_clean(tmp_path):
    """bench.survive on 3 real test images, robustified through JPEG 75 (survive) and without at a budget below
    the card's (``--delta 0.08``): every file inside that budget and the whole change written at high strength,
    the attack at the card's epsilon, each accuracy at most clean, robust at JPEG 75 only where the JPEG-75 clean
    label holds, and an unknown variant refused."""
    out = tmp_path / "s.jsonl"
    r = subprocess.run([sys.executable, "-m", "bench.survive", "-n", "3", "--start", "7", "--delta", "0.08",
                        "--variants", "originals,s75-high,defaults", "--jsonl", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["variant"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert list(rows) == ["originals", "s75-high", "defaults"]
    for row in rows.values():
        assert row["n"] == 3 and len(row["j75_aa_mask"]) == 3
        assert row["j75_aa"] <= min(row["j75_aa_adaptive"], row["j75_aa_nonadaptive"]) <= row["j75_clean"]
        assert sum(row["j75_aa_mask"]) == round(row["j75_aa"] * 3)
    for row in rows.values():
        assert row["epsilon"] == 0.1
    assert rows["originals"]["delta"] is None
    for name in ("s75-high", "defaults"):
        assert rows[name]["delta"] == 0.08 and rows[name]["passes"] > 0
        assert rows[name]["linf_max"] <= 0.08 + 1e-6
    assert rows["s75-high"]["linf_max"] > 0.08 - 2 / 255  # the whole change, at the budget asked for
    assert rows["s75-high"]["scale"] == 1.0 and 0 <= rows["defaults"]["scale"] <= 1.0
    bad = subprocess.run([sys.executable, "-m", "bench.survive", "-n", "1", "--variants", "fastest"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown variants" in bad.stderr
