"""`preempt robustify` on a folder of real files, as a person would use it: nested folders, files that
are not images, a truncated PNG, outputs that would clobber inputs, Ctrl-C and the resume."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from preempt.cli import build_parser
from preempt.core.images import decode
from preempt.core.threat import flat_norm

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "fashion-mnist"
FAST = ["--iterations", "3", "--steps", "3", "--verify", "pgd"]


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "preempt.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder of real images with a nested sub-folder, a text file and a truncated PNG."""
    d = tmp_path / "photos"
    (d / "trip" / "day2").mkdir(parents=True)
    examples = sorted(EXAMPLES.glob("*.png"))
    for src in examples[:3]:
        shutil.copy(src, d / src.name)
    shutil.copy(examples[3], d / "trip" / examples[3].name)
    Image.open(examples[4]).convert("RGB").save(d / "trip" / "day2" / "shirt.jpg", quality=90)
    (d / "notes.txt").write_text("not a picture\n")
    (d / "cut.png").write_bytes(examples[5].read_bytes()[:150])
    (d / ".hidden.png").write_bytes(examples[6].read_bytes())
    return d


def test_every_option_has_help_and_version_prints():
    parser = build_parser()
    for sub in parser._subparsers._group_actions[0].choices.values():
        for action in sub._actions:
            assert action.help, (sub.prog, action.option_strings or action.dest)
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("preempt ")


def test_recursive_keeps_the_structure_and_names_every_unreadable_input(photos, tmp_path):
    out = tmp_path / "out"
    r = run("robustify", str(photos), "-o", str(out), "-r", "--compare", *FAST)
    assert r.returncode == 1, r.stderr  # some inputs could not be read
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png") if "compare" not in p.parts)
    assert written == ["00-ankle-boot.png", "01-pullover.png", "02-trouser.png", "trip/03-trouser.png",
                       "trip/day2/shirt.png"]
    report = json.loads((out / "report.json").read_text())
    failed = {Path(f["input"]).name: f["error"] for f in report["failed"]}
    assert set(failed) == {"notes.txt", "cut.png"} and "not an image" in failed["notes.txt"]
    assert "truncated" in failed["cut.png"]
    for name in failed:
        assert name in r.stderr
    for entry in report["images"]:
        src, dst = decode(Path(entry["input"]).read_bytes()).pixels, decode(Path(entry["output"]).read_bytes()).pixels
        assert dst.shape == src.shape and float(flat_norm((dst - src)[None], "linf")[0]) <= 0.1 + 1e-6
        picture = Image.open(entry["compare"])
        assert picture.width > 3 * Image.open(entry["output"]).width  # original | protected | difference
    assert "verified robust" in r.stderr.splitlines()[-1]


def test_without_recursive_sub_folders_are_named_and_skipped(photos, tmp_path):
    out = tmp_path / "out"
    r = run("robustify", str(photos), "-o", str(out), "--no-verify", *FAST[:4])
    assert r.returncode == 1
    assert "trip: skipped" in r.stderr and not (out / "trip").exists()
    assert "(not verified)" in r.stderr.splitlines()[-1] and "verified robust" not in r.stderr.splitlines()[-1]
    assert json.loads((out / "report.json").read_text())["skipped"][0]["input"].endswith("trip")


@pytest.mark.parametrize("where", ["same", "inside", "file"])
def test_an_output_that_would_clobber_inputs_is_refused_before_any_work(photos, where):
    before = sorted(p.name for p in photos.rglob("*"))
    target = {"same": photos, "inside": photos / "protected", "file": photos / "notes.txt"}[where]
    r = run("robustify", str(photos), "-o", str(target), *FAST)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in photos.rglob("*")) == before


def test_interrupted_run_leaves_a_valid_report_and_the_rerun_resumes(photos, tmp_path):
    """SIGINT once the first image is written; the report then holds it; the rerun keeps it and does the rest."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "preempt.cli", "robustify", str(photos), "-o", str(out), "-r", "--batch-size", "1",
            "--iterations", "40", "--steps", "5", "--stop-patience", "0", "--plateau-window", "0", "--verify", "pgd"]
    # A shell without job control starts background commands with SIGINT ignored, and the child would inherit
    # that (Python then never raises KeyboardInterrupt): give the CLI the default disposition, as a terminal does.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    report = out / "report.json"
    while time.monotonic() < deadline:
        try:
            if json.loads(report.read_text())["images"]:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    first = json.loads(report.read_text())  # valid JSON after the interrupt
    done = {e["input"]: e["output_sha256"] for e in first["images"]}
    assert 1 <= len(done) < 5 and "run the same command again" in err
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr  # the unreadable inputs
    final = json.loads(report.read_text())
    assert len(final["images"]) == 5 and f"{len(done)} already done" in r.stderr
    for entry in final["images"]:
        if entry["input"] in done:
            assert entry["output_sha256"] == done[entry["input"]]  # kept, not redone
    r = run("robustify", str(photos), "-o", str(out), "-r", "--batch-size", "1", "--iterations", "3", "--steps", "3",
            "--verify", "pgd")
    assert "already done" not in r.stderr  # other settings: every image is redone
    r = run("robustify", str(photos), "-o", str(out), "-r", "--batch-size", "1", "--iterations", "3", "--steps", "3",
            "--verify", "pgd", "--force")
    assert "already done" not in r.stderr and len(json.loads(report.read_text())["images"]) == 5
