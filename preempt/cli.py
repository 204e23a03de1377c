"""The ``preempt`` command line: robustify, evaluate, train, certify.

Every user error (bad argument, unreadable file, unknown model) ends in one line on stderr and
exit status 2; long work shows a progress bar on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

from preempt.registry import DEFAULT_MODEL, card_for
from preempt.request import PRESETS, RequestError, RobustifyRequest


class UsageError(Exception):
    """A problem the user can fix; printed as one line."""


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{s!r} must be a positive finite number")
    return v


def _int_at_least(s: str, low: int) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"{s!r} must be at least {low}")
    return v


def _comma_list(text: str) -> tuple:
    """The non-empty items of a comma-separated option, stripped: ``"pgd, aa,"`` -> ``("pgd", "aa")``."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _positive_int(s: str) -> int:
    return _int_at_least(s, 1)


def _bar(total: int, desc: str, unit: str = "it"):
    from tqdm import tqdm

    # Logs (non-terminals) get a line every 30 s instead of a live bar.
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                mininterval=1.0 if sys.stderr.isatty() else 30.0)


def _device(name: str) -> str:
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    return name


def _load(args):
    from preempt.core.models import load_classifier

    try:
        return load_classifier(args.model, arch=getattr(args, "arch", None), device=args.device)
    except ValueError as e:
        raise UsageError(str(e)) from None


# ---------------------------------------------------------------- robustify
# The options every command that robustifies passes to RobustifyRequest.resolve (None: the default).
REQUEST_OPTIONS = ("norm", "epsilon", "delta", "preset", "iterations", "steps", "samples", "stop_patience",
                   "stop_loss", "plateau_window", "verify", "retry", "strength", "smooth", "texture", "survive",
                   "format", "quality")


def _request(args, card: Optional[dict] = None) -> RobustifyRequest:
    """The request the options describe, with the model card's defaults (the same rule as the API's);
    ``card`` is the card of a model the command line cannot read itself (a service's)."""
    options = {k: getattr(args, k, None) for k in REQUEST_OPTIONS}
    if getattr(args, "no_verify", False):
        options["verify"] = "off"
    try:
        return RobustifyRequest.resolve(card if card is not None else card_for(args.model), args.model, **options)
    except (RequestError, ValueError) as e:
        raise UsageError(str(e)) from None


# The options a Preempt service takes; the others run only on this machine.
SERVICE_OPTIONS = ("model", "preset", "norm", "epsilon", "delta", "iterations", "verify", "no_verify", "retry",
                   "strength", "smooth", "texture", "survive", "format", "quality")


def _remote(args):
    """``(client, runner card)`` for ``--server``: the model's card as the service has it."""
    import httpx

    from preempt.client import ApiError, Client

    local_only = [k for k in REQUEST_OPTIONS + ("precision", "arch") if k not in SERVICE_OPTIONS
                  and getattr(args, k, None) not in (None, "fp32")]
    if local_only:
        raise UsageError(f"--{local_only[0].replace('_', '-')} runs only on this machine; drop it or --server")
    client = Client(args.server, api_key=args.api_key)
    try:
        models = client.models().models
    except (ApiError, httpx.HTTPError) as e:
        raise UsageError(f"{args.server}: {e}") from None
    card = next((m.model_dump() for m in models if m.name == args.model), None)
    if card is None:
        raise UsageError(f"the service has no model {args.model!r}; it has {', '.join(m.name for m in models)}")
    return client, card


def cmd_robustify(args) -> int:
    import torch

    from preempt.files import PlanError, Report, local_runner, plan, protect_files, remote_runner

    if args.server:
        client, card = _remote(args)
        request = _request(args, card)
        run = remote_runner(client, request, concurrency=args.concurrency)
    else:
        request = _request(args)
    try:
        work = plan(args.inputs, Path(args.output), recursive=args.recursive,
                    suffix=".jpg" if request.format == "jpeg" else ".png")
    except PlanError as e:
        raise UsageError(str(e)) from None
    for path, reason in work.skipped:
        print(f"preempt: {path}: skipped: {reason}", file=sys.stderr)
    for path, reason in work.unreadable:
        print(f"preempt: {path}: {reason}", file=sys.stderr)
    if not args.server:
        from preempt.pipeline import load_protector

        try:
            protector = load_protector(args.model, args.device, args.precision, args.arch)
        except ValueError as e:
            raise UsageError(str(e)) from None
        torch.manual_seed(args.seed)
        run = local_runner(request, protector)
    report = Report(Path(args.report) if args.report else Path(args.output) / "report.json", request, args.seed)
    bars = []

    def progress(done: int, total: int, iteration: int, iterations: int) -> None:
        if not bars:
            bars.append(_bar(total, "robustify", "img"))
        bars[0].update(done - bars[0].n)
        bars[0].set_postfix_str(f"iteration {iteration}/{iterations}", refresh=False)

    try:
        outcome = protect_files(request, run, work, report, batch_size=args.batch_size, force=args.force,
                                compare=args.compare, progress=progress)
    except KeyboardInterrupt:
        for bar in bars:
            bar.close()
        print(f"preempt: interrupted; {len(report.images)} image(s) protected so far are in {report.path}; "
              "run the same command again to go on", file=sys.stderr)
        return 130
    for bar in bars:
        bar.close()
    s = report.summary()
    checked = (f"{s['verified_robust']} verified robust, {s['not_robust']} not" if s["verified"] else "not verified")
    print(f"protected {s['images']} image(s) in {args.output} ({checked})"
          + (f"; {outcome.reused} already done, kept (--force redoes them)" if outcome.reused else "")
          + (f"; {outcome.failed} input(s) could not be read" if outcome.failed else "")
          + f"; report {report.path}", file=sys.stderr)
    return 1 if outcome.failed else 0


# ---------------------------------------------------------------- train
TRAIN_OPTIONS = ("method", "arch", "norm", "epsilon", "delta", "epochs", "batch_size", "lr", "lr_schedule",
                 "attack_steps", "attack_step", "descent_steps", "descent_step", "original_fraction", "sigma",
                 "limit", "val_size", "test_size", "seed", "device")


def cmd_train(args) -> int:
    from preempt.core.train import train_fashion_mnist

    if args.dataset != "fashion-mnist":
        raise UsageError("only --dataset fashion-mnist is available on this machine")
    bars = []  # made at the first batch, once the options have been checked

    def progress(step: int, total: int, info: dict) -> None:
        if not bars:
            bars.append(_bar(total, f"train {args.method}", "batch"))
        bars[0].update(1)
        bars[0].set_postfix(loss=f"{info['loss']:.3f}")

    try:
        card = train_fashion_mnist(Path(args.output), **{k: getattr(args, k) for k in TRAIN_OPTIONS},
                                   command="preempt " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                                   progress=progress)
    except ValueError as e:
        raise UsageError(str(e)) from None
    finally:
        for bar in bars:
            bar.close()
    print(f"saved {args.output} (test clean accuracy {card['test_clean_accuracy']:.4f}, {card['wall_seconds']:.0f} s)",
          file=sys.stderr)
    return 0


# ---------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    import torch

    from preempt.core.data import fashion_mnist
    from preempt.core.evaluate import EvalConfig, evaluate, format_table
    from preempt.core.robustify import RobustifyConfig
    from preempt.core.threat import ThreatModel

    from preempt.core.transforms import Transform, enlarge
    from preempt.transformspec import SpecError

    request = _request(args)
    try:
        transforms = tuple(Transform(spec) for spec in args.transform)
    except SpecError as e:
        raise UsageError(f"--transform {e}") from None
    torch.manual_seed(args.seed)
    threat = ThreatModel(**request.threat_fields())
    clf = _load(args)
    x, y = fashion_mnist("test", limit=args.n)
    x = enlarge(x, args.upscale)
    size = clf.spec.input_size
    smooth = tuple(size) if request.smooth and size else None
    cfg = EvalConfig(attacks=_comma_list(args.attacks), whitebox=args.whitebox, batch_size=args.batch_size,
                     robustify=RobustifyConfig(**request.config_fields(), smooth_size=smooth),
                     transforms=transforms, survive=Transform(request.survive) if request.survive else None,
                     quantize=bool(transforms) or request.survive is not None)
    bar = _bar(len(x), "evaluate", "img")
    rows = evaluate(clf.model, x, y, threat, cfg, model_name=clf.name, device=args.device,
                    progress=lambda k: bar.update(k))
    bar.close()
    table = {"n_images": len(x), "norm": threat.norm, "epsilon": threat.epsilon, "delta": threat.delta, "rows": rows}
    text = format_table(table)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


# ---------------------------------------------------------------- certify
def cmd_certify(args) -> int:
    import torch

    from preempt.core.data import fashion_mnist
    from preempt.core.smoothing import ABSTAIN, Smooth

    torch.manual_seed(args.seed)
    clf = _load(args)
    x, y = fashion_mnist("test", limit=args.n)
    smooth = Smooth(clf.model, 10, args.sigma)
    rows = []
    bar = _bar(len(x), "certify", "img")
    for i in range(len(x)):
        c, r = smooth.certify(x[i].to(args.device), args.n0, args.samples, args.alpha, batch_size=args.batch_size)
        rows.append({"index": i, "label": int(y[i]), "predict": c, "radius": r, "correct": c == int(y[i])})
        bar.update(1)
    bar.close()
    certified = sum(1 for r in rows if r["correct"] and r["radius"] >= args.radius) / len(rows)
    abstained = sum(1 for r in rows if r["predict"] == ABSTAIN) / len(rows)
    out = {"sigma": args.sigma, "n0": args.n0, "n": args.samples, "alpha": args.alpha, "radius": args.radius,
           "certified_accuracy": certified, "abstain_rate": abstained, "images": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"certified accuracy at l2 radius {args.radius}: {certified:.4f} ({len(rows)} images, "
          f"abstained {abstained:.4f})")
    return 0


# ---------------------------------------------------------------- reproduce
def cmd_reproduce(args) -> int:
    import torch

    from preempt.core.reproduce import SETTINGS, ReproduceConfig, run_setting, write_report
    from preempt.core.robustify import RobustifyConfig

    if args.dataset != "fashion-mnist":
        raise UsageError("only --dataset fashion-mnist can be reproduced on this machine (CIFAR-10 and ImageNet "
                         "cannot be downloaded here)")
    attacks = _comma_list(args.attacks)
    if set(attacks) - {"pgd", "aa"}:
        raise UsageError(f"--attacks: choose from pgd, aa (got {args.attacks!r})")
    torch.manual_seed(args.seed)
    wb = None if args.whitebox_attacks is None else _comma_list(args.whitebox_attacks)
    if wb is not None and set(wb) - set(attacks):
        raise UsageError(f"--whitebox-attacks must be among --attacks ({','.join(attacks)})")
    cfg = ReproduceConfig(n=args.n, chunk=min(args.chunk, args.n), attacks=attacks, whitebox=not args.no_whitebox,
                          whitebox_attacks=wb,
                          device=args.device, seed=args.seed, certify_n=args.certify_n,
                          robustify=RobustifyConfig(samples=args.samples, **{
                              k: getattr(args, k) for k in ("stop_patience", "stop_loss", "plateau_window")
                              if getattr(args, k) is not None}))
    keys = list(SETTINGS) if args.norm == "all" else [args.norm]
    models = None
    if args.models:
        if args.norm == "all":
            raise UsageError("--models replaces the models of one setting: give --norm linf, l2 or smoothing")
        try:
            models = dict(item.split("=", 1) for item in args.models.split(",") if item.strip())
        except ValueError:
            raise UsageError(f"--models: expected ROLE=MODEL[,ROLE=MODEL], got {args.models!r}") from None
    roles = None
    if args.roles:
        if args.norm == "all":
            raise UsageError("--roles picks models of one setting: give --norm linf, l2 or smoothing")
        roles = _comma_list(args.roles)
    for key in keys:
        t0 = time.perf_counter()
        try:
            report = run_setting(key, cfg, Path(args.work), train=args.train, models=models, roles=roles,
                                 log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True))
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from None
        report["wall_seconds"] = round(time.perf_counter() - t0, 1)
        for path in write_report(report, Path(args.output)):
            print(f"wrote {path}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- parser
def _add_texture(p):
    p.add_argument("--texture", action=argparse.BooleanOptionalAction, default=None,
                   help="shape the change by the image: flat areas (sky, skin, background) may move by a quarter of "
                        "delta, textured areas and edges by delta (docs/quality.md)")


def _add_threat(p, default_norm=None, default_epsilon=None):
    card = " (default: the model card's)" if default_norm is None else " (default %(default)s)"
    p.add_argument("--norm", choices=["linf", "l2"], default=default_norm, help="the threat's norm" + card)
    p.add_argument("--epsilon", type=_positive_float, default=default_epsilon, help="adversary budget" + card)
    p.add_argument("--delta", type=_positive_float, default=None, help="defender budget (default: epsilon)")


def _non_negative_int(s: str) -> int:
    return _int_at_least(s, 0)


def _add_stop(p) -> None:
    p.add_argument("--stop-patience", type=_non_negative_int, default=None,
                   help="stop an image after this many outer iterations with attack loss below --stop-loss, "
                        "confirmed by a fresh attack (0: off; default 3)")
    p.add_argument("--stop-loss", type=_positive_float, default=None,
                   help="the attack loss under which an image may stop (default: ln 2; 0.1 for l2 without smoothing)")
    p.add_argument("--plateau-window", type=_non_negative_int, default=None,
                   help="stop an image whose mean attack loss over this many iterations fell less than 2%% "
                        "below the window before (0: off; default 20; with --stop-patience 0, the paper's loop)")


def _add_effort(p) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="effort: low, medium (the paper's 100 x 20, default) or high")
    p.add_argument("--iterations", type=_positive_int, default=None, help="outer iterations MAXITER (default: the preset's)")
    p.add_argument("--steps", type=_positive_int, default=None, help="inner PGD steps T (default: the preset's)")
    p.add_argument("--samples", type=_positive_int, default=None, help="random starts N (default: the preset's)")


def _add_model(p):
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="registered model name or path to a TorchScript/.pt2/state_dict file (default %(default)s)")
    p.add_argument("--arch", default=None, help="architecture of a state_dict file (small-cnn, preact-resnet18, ...)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random starts (default %(default)s)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("preempt")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): ``preempt: <what is wrong>``, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="preempt", description="Preemptive image robustification (Moon et al., AAAI 2022)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("robustify", help="robustify images; writes lossless PNGs and a JSON report")
    p.add_argument("inputs", nargs="+", help="image files (PNG, JPEG, WebP) or folders of them")
    p.add_argument("-o", "--output", required=True,
                   help="output folder (not inside an input folder); an input a/b/x.jpg becomes OUTPUT/x.png")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="also protect the images in sub-folders of an input folder, keeping the folder structure")
    p.add_argument("--force", action="store_true",
                   help="redo images a previous run with the same settings already protected (default: keep them)")
    p.add_argument("--server", default=None, metavar="URL",
                   help="protect on a Preempt service (e.g. http://127.0.0.1:8000) instead of this machine")
    p.add_argument("--api-key", default=None, help="the service's API key (with --server)")
    p.add_argument("--concurrency", type=_positive_int, default=4,
                   help="images in flight on the service at once (with --server; default %(default)s)")
    p.add_argument("--compare", action="store_true",
                   help="also write OUTPUT/compare/NAME.compare.png: original, protected and amplified difference")
    _add_threat(p)
    _add_model(p)
    _add_effort(p)
    p.add_argument("--report", default=None, help="report file (default OUTPUT/report.json)")
    p.add_argument("--verify", choices=["apgd", "pgd"], default=None,
                   help="the check on the written PNG: apgd = PGD-20 then APGD-CE and APGD-T (default), "
                        "pgd = PGD-20 x 5 only (faster, weaker)")
    p.add_argument("--no-verify", action="store_true", help="skip the verification attack on the written PNG")
    p.add_argument("--retry", action="store_true", default=None,
                   help="robustify the images the check rejects once more, with every outer iteration and targeted "
                        "inner attacks toward the 3 runner-up classes; keep the new PNG only if it passes the check")
    p.add_argument("--strength", choices=["high", "medium", "low"], default=None,
                   help="how visible protection may be: high keeps the whole change the robustifier found; medium "
                        "(default) the smallest scale of it that passes the check, one step further inside; low the "
                        "smallest (the report's scale says what was kept; docs/quality.md measures each)")
    p.add_argument("--no-smooth", dest="smooth", action="store_false", default=None,
                   help="for images larger than the model's input: change every pixel on its own instead of a "
                        "change at the model's resolution upsampled smoothly")
    _add_texture(p)
    p.add_argument("--survive", default=None, metavar="SPEC",
                   help="what the platform does to the file before classifying it, e.g. jpeg:75-95, resize:0.5-1.0, "
                        "resize:0.5+jpeg:85: robustify through it and check the file after it at the ends and middle "
                        "of each range with the real codec (docs/transforms.md)")
    p.add_argument("--format", choices=["png", "jpeg"], default=None,
                   help="the files written: png (lossless, default) or jpeg, for a client that can only send JPEG: "
                        "the protection is optimised for and checked on the JPEG itself; OUTPUT/x.jpg")
    p.add_argument("--quality", type=_positive_int, default=None, help="the JPEG quality with --format jpeg (default 90)")
    _add_stop(p)
    p.add_argument("--batch-size", type=_positive_int, default=64,
                   help="images of one size robustified together (default %(default)s)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="the classifier's precision while robustifying (bf16: for large models on a GPU; "
                        "labels and verification stay fp32)")
    p.set_defaults(func=cmd_robustify)

    p = sub.add_parser("train", help="train a classifier on Fashion-MNIST (Algorithm 2 and baselines)")
    p.add_argument("--method", choices=["preemptive", "adversarial", "gaussian", "standard"], default="adversarial",
                   help="preemptive: Algorithm 2; adversarial: PGD training; gaussian: noise for smoothing; standard "
                        "(default %(default)s)")
    p.add_argument("--dataset", default="fashion-mnist", help="only fashion-mnist can be read here")
    p.add_argument("--arch", default="small-cnn", help="small-cnn, preact-resnet18, wrn-34-10 or resnet50 "
                                                       "(default %(default)s)")
    _add_threat(p, "linf", 0.1)
    p.add_argument("--epochs", type=_positive_int, default=10, help="(default %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="(default %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam's learning rate (default %(default)s)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                   help="Adam's learning rate: constant, or cosine-annealed to 0 over all epochs")
    p.add_argument("--attack-steps", type=_positive_int, default=10, help="K")
    p.add_argument("--attack-step", type=_positive_float, default=None, help="alpha (default eps/4)")
    p.add_argument("--descent-steps", type=_positive_int, default=1, help="L (preemptive)")
    p.add_argument("--descent-step", type=_positive_float, default=None, help="beta (default delta)")
    p.add_argument("--original-fraction", type=float, default=0.0,
                   help="share of each batch attacked at the original instead of the robustified point "
                        "(preemptive; 0: Algorithm 2 as published)")
    p.add_argument("--sigma", type=_positive_float, default=0.25, help="noise level (gaussian)")
    p.add_argument("--limit", type=_positive_int, default=None, help="use only the first N training images")
    p.add_argument("--val-size", type=_positive_int, default=5000, help="held-out images for early stopping")
    p.add_argument("--test-size", type=_positive_int, default=10000,
                   help="test images the card's accuracy is measured on (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where the model trains (the checkpoint is saved for cpu)")
    p.add_argument("-o", "--output", required=True, help="checkpoint path (.pt); the model card goes beside it")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="grey-box and white-box accuracy of original and robustified test images")
    _add_threat(p)
    _add_model(p)
    p.add_argument("-n", type=_positive_int, default=200, help="test images")
    p.add_argument("--attacks", default="pgd,aa", help="comma list of pgd, aa")
    p.add_argument("--whitebox", action="store_true", help="also run the adaptive white-box attack (Alg. 3-4)")
    p.add_argument("--transform", action="append", default=[], metavar="SPEC",
                   help="also evaluate after what the platform does to the file (repeatable), e.g. jpeg:75, "
                        "resize:0.5, jpeg:75-95 (its ends and middle), resize:0.5+jpeg:85; the attacker tries both "
                        "attacking through it and ignoring it (docs/transforms.md)")
    _add_texture(p)
    p.add_argument("--survive", default=None, metavar="SPEC", help="robustify through this transform (see --transform)")
    p.add_argument("--upscale", type=_positive_int, default=1,
                   help="enlarge the test images by this factor first (Pillow bicubic, 8-bit), as a platform sees a "
                        "photo larger than its model's input (default %(default)s)")
    _add_effort(p)
    _add_stop(p)
    p.add_argument("--batch-size", type=_positive_int, default=200, help="images evaluated together (default %(default)s)")
    p.add_argument("--json", default=None, help="also write the table as JSON to this file")
    p.add_argument("--markdown", default=None, help="also write the table as markdown to this file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("reproduce", help="reproduce the paper's Section 4 on Fashion-MNIST: tables, JSON, plots")
    p.add_argument("--dataset", default="fashion-mnist", help="only fashion-mnist can be read here")
    p.add_argument("--norm", choices=["linf", "l2", "smoothing", "all"], default="linf",
                   help="linf: eps = delta = 0.1; l2: 1.5; smoothing: l2 0.5 with sigma 0.25")
    p.add_argument("-n", type=_positive_int, default=1000, help="test images (default %(default)s)")
    p.add_argument("--chunk", type=_positive_int, default=100, help="images per cached chunk")
    p.add_argument("--attacks", default="pgd,aa", help="comma list of pgd, aa (linf and l2)")
    p.add_argument("--no-whitebox", action="store_true", help="skip the white-box attack (Algorithms 3-4)")
    p.add_argument("--whitebox-attacks", default=None, help="comma list: the attacks also run white-box (default: all)")
    p.add_argument("--certify-n", type=_positive_int, default=10000, help="noise samples of CERTIFY (smoothing)")
    p.add_argument("--train", action="store_true", help="train the models that are not shipped")
    p.add_argument("-o", "--output", default="reports/fashion-mnist", help="report folder (default %(default)s)")
    p.add_argument("--models", default=None,
                   help="replace the setting's models: ROLE=MODEL[,ROLE=MODEL], roles adv, ours (linf, l2) or "
                        "gaussian (smoothing), e.g. adv=fmnist-linf-adv-8ep,ours=fmnist-linf-ours-6ep")
    p.add_argument("--roles", default=None,
                   help="evaluate only these models of the setting (comma list of roles, e.g. ours): one process "
                        "per role can share --work, and a last run without --roles finds every chunk cached")
    p.add_argument("--work", default="runs/reproduce", help="cache of finished chunks (default %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    _add_stop(p)
    p.add_argument("--samples", type=_positive_int, default=1, help="random starts N of the robustifier")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("certify", help="CERTIFY of Cohen et al. on Fashion-MNIST test images")
    _add_model(p)
    p.add_argument("--sigma", type=_positive_float, default=0.25, help="the noise level (default %(default)s)")
    p.add_argument("-n", type=_positive_int, default=100, help="test images")
    p.add_argument("--n0", type=_positive_int, default=100, help="noise samples that select the class (default %(default)s)")
    p.add_argument("--samples", type=_positive_int, default=10000, help="noise samples n")
    p.add_argument("--alpha", type=_positive_float, default=0.001,
                   help="failure probability of the certificate (default %(default)s)")
    p.add_argument("--radius", type=float, default=0.5, help="radius at which certified accuracy is reported")
    p.add_argument("--batch-size", type=_positive_int, default=1000, help="noise samples per pass (default %(default)s)")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    p.set_defaults(func=cmd_certify)

    _add_service(sub)
    _add_models(sub)
    return parser


def cmd_serve(args) -> int:
    from preempt.serve import serve

    try:
        serve(host=args.host, port=args.port, workers=args.workers, device=args.device, data_dir=args.data_dir,
              log_level=args.log_level)
    except RuntimeError as e:
        raise UsageError(str(e)) from None
    return 0


def cmd_keys(args) -> int:
    from preempt.keys import KeyStore
    from preempt.settings import Settings
    from preempt.store import redis_client

    url = Settings().redis_url
    if not url:
        folder = Path(args.data_dir or Path.home() / ".local/share/preempt")
        try:
            url = (folder / "redis-url").read_text().strip()
        except OSError:
            raise UsageError(f"no Redis to reach: set PREEMPT_REDIS_URL, or start preempt serve with the data "
                             f"directory {folder}") from None
    if args.action != "list" and not args.name:
        raise UsageError(f"preempt keys {args.action} needs the key's NAME")
    keys = KeyStore(redis_client(url))
    try:
        if args.action == "create":
            key, caller = keys.create(args.name, rate=args.rate, max_queued=args.max_queued, admin=args.admin)
            if args.json:
                print(json.dumps({"name": caller.name, "key": key, "webhook_secret": caller.webhook_secret}))
            else:
                print(f"{key}\n(the key of {caller.name!r}; it is shown once: store it now)", file=sys.stdout)
        elif args.action == "revoke":
            if not keys.revoke(args.name):
                raise UsageError(f"no key named {args.name!r}")
            print(f"revoked {args.name}")
        else:
            for c in keys.list():
                print(f"{c.name}\trate {c.rate or '-'}/min\tmax queued {c.max_queued or '-'}"
                      + ("\tadmin" if c.admin else ""))
    except ValueError as e:
        raise UsageError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - redis.RedisError: say which server could not be reached
        raise UsageError(f"{url}: {type(e).__name__}: {e}") from None
    return 0


def cmd_worker(args) -> int:
    from preempt.worker.app import run_worker

    run_worker(device=args.device, name=args.name, loglevel=args.log_level.upper())
    return 0


def cmd_models(args) -> int:
    from preempt import modeladd
    from preempt.registry import added_models, model_card, registered_models, shipped_models

    if args.data_dir:
        os.environ["PREEMPT_DATA_DIR"] = args.data_dir
    if args.action in ("show", "remove"):
        args.name = args.name or args.path
    if args.action in ("add", "show", "remove") and not args.name:
        raise UsageError(f"preempt models {args.action} needs --name NAME" if args.action == "add"
                         else f"preempt models {args.action} needs the model's NAME")
    try:
        if args.action == "add":
            if not args.path:
                raise UsageError("preempt models add needs the model file: preempt models add PATH --name NAME")
            names = modeladd.read_class_names(Path(args.class_names)) if args.class_names else None
            card = modeladd.add_model(
                Path(args.path), args.name, input_size=args.input_size, channels=args.channels, mean=args.mean,
                std=args.std, class_names=names, num_classes=args.num_classes, arch=args.arch, norm=args.norm,
                epsilon=args.epsilon, delta=args.delta, description=args.description, force=args.force,
                say=lambda line: print(line, flush=True))
            print(f"added {args.name}: {card['format']}, input {card['channels']}x{card['input_size'][0]}x"
                  f"{card['input_size'][1]}, {card['num_classes']} classes, in {modeladd.user_models_dir()}")
            if "threat" not in card:
                print("note: no --epsilon: requests for this model default to linf epsilon = delta = 0.1 (25/255), "
                      "Fashion-MNIST's; the paper uses 4/255 for ImageNet photos (docs/models.md)")
        elif args.action == "remove":
            modeladd.remove_model(args.name)
            print(f"removed {args.name}")
        elif args.action == "show":
            if args.name not in registered_models():
                raise UsageError(f"no model {args.name!r}; preempt models list shows them")
            print(json.dumps(model_card(args.name), indent=2, sort_keys=True))
        else:
            shipped, added = shipped_models(), added_models()
            rows = []
            for name in registered_models():
                card = model_card(name)
                threat = card.get("threat") or {}
                cost = ((card.get("cost") or {}).get("seconds_per_image_at_defaults") or {}).get("robust_from_start")
                rows.append({"name": name, "source": "shipped" if name in shipped else "added",
                             "format": card.get("format", "state_dict"),
                             "input": f"{card.get('channels', '?')}x" + "x".join(map(str, card.get("input_size") or ["?"])),
                             "classes": card.get("num_classes") or len(card.get("class_names") or []) or None,
                             "threat": f"{threat['norm']} {threat['epsilon']:g}" if threat else "-",
                             "seconds_per_image": cost})
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for r in rows:
                    print(f"{r['name']:28} {r['source']:8} {r['format']:12} {r['input']:12} {r['classes'] or '?':>5} "
                          f"classes  {r['threat']:12}" + (f"  ~{r['seconds_per_image']:g} s/image (CPU)"
                                                           if r["seconds_per_image"] else ""))
                if not added:
                    print(f"(no added models in {modeladd.user_models_dir()}; preempt models add PATH --name NAME)")
    except modeladd.ModelRejected as e:
        for line in e.lines:
            print(f"preempt: {line}", file=sys.stderr)
        return 1
    return 0


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="the classifiers to protect against: add your own (ONNX, TorchScript, "
                                      "torch.export, state_dict), list, show, remove",
                       description="preempt models add PATH --name NAME checks a classifier (it loads, runs a batch "
                                   "of the declared shape, returns logits of the declared class count, has a finite "
                                   "non-zero input gradient, is deterministic, and for ONNX agrees with onnxruntime), "
                                   "measures one pass, and registers it in the data directory, where the service "
                                   "finds it. docs/models.md has a worked example.")
    p.add_argument("action", choices=["add", "list", "show", "remove"], help="what to do")
    p.add_argument("path", nargs="?", default=None, help="add: the model file (.onnx, .pt2, TorchScript .pt, "
                                                         "state_dict .pt with --arch); show/remove: the NAME")
    p.add_argument("--name", default=None, help="the model's name in requests (add)")
    p.add_argument("--input-size", type=_positive_int, nargs=2, metavar=("H", "W"), default=None,
                   help="the input the network takes (read from an ONNX file that fixes it)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=None,
                   help="1 (grey) or 3 (RGB) (read from an ONNX file that fixes it)")
    p.add_argument("--mean", type=float, nargs="+", default=None,
                   help="per-channel mean subtracted from pixels in [0, 1] before the network (ImageNet: "
                        "0.485 0.456 0.406); leave out if the network normalises itself")
    p.add_argument("--std", type=float, nargs="+", default=None,
                   help="per-channel std the pixels are divided by (ImageNet: 0.229 0.224 0.225)")
    p.add_argument("--class-names", default=None, help="a file of class names: one per line, or a JSON list")
    p.add_argument("--num-classes", type=_positive_int, default=None,
                   help="the class count, without --class-names (default: what the model returns)")
    p.add_argument("--arch", default=None, help="the architecture of a state_dict (small-cnn, preact-resnet18, "
                                                "wrn-34-10, resnet50)")
    p.add_argument("--norm", choices=["linf", "l2"], default=None, help="the threat's norm (default linf)")
    p.add_argument("--epsilon", type=_positive_float, default=None,
                   help="the adversary's default budget for this model, in pixels in [0, 1] (4/255 = 0.0157)")
    p.add_argument("--delta", type=_positive_float, default=None,
                   help="how far protection may move an image by default (default: epsilon)")
    p.add_argument("--description", default=None, help="what the model is for, shown to people (web page)")
    p.add_argument("--force", action="store_true", help="replace an added model of the same name")
    p.add_argument("--json", action="store_true", help="list: JSON")
    p.add_argument("--data-dir", default=None,
                   help="the data directory whose models/ folder holds added models (default PREEMPT_DATA_DIR or "
                        "~/.local/share/preempt; PREEMPT_MODELS_DIR names the folder itself)")
    p.set_defaults(func=cmd_models)


def _add_service(sub) -> None:
    p = sub.add_parser("serve", help="the HTTP service: API, workers and (without PREEMPT_REDIS_URL) an embedded Redis")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=_positive_int, default=8000, help="(default %(default)s)")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="worker processes (default: one per GPU, or one on the CPU)")
    p.add_argument("--device", default=None, help="device of every worker (default: one GPU each, else cpu)")
    p.add_argument("--data-dir", default=None, help="the embedded Redis data and the added models (models/) (default PREEMPT_DATA_DIR or ~/.local/share/preempt)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="(default %(default)s)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("keys", help="API keys of the service: create, list, revoke (reads PREEMPT_REDIS_URL)")
    p.add_argument("action", choices=["create", "list", "revoke"], help="what to do")
    p.add_argument("name", nargs="?", default=None, help="the key's name (create, revoke)")
    p.add_argument("--rate", type=_non_negative_int, default=0, help="requests per minute (0: no limit; default)")
    p.add_argument("--max-queued", type=_non_negative_int, default=0,
                   help="queued and running jobs at once (0: no limit; default)")
    p.add_argument("--admin", action="store_true", help="may read /metrics")
    p.add_argument("--json", action="store_true", help="print {name, key, webhook_secret} as JSON (create)")
    p.add_argument("--data-dir", default=None,
                   help="the data directory of preempt serve's embedded Redis (default ~/.local/share/preempt)")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("worker", help="one queue worker on one device (reads PREEMPT_REDIS_URL)")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N (sets CUDA_VISIBLE_DEVICES=N)")
    p.add_argument("--name", default=None, help="worker name (default worker-HOST-PID)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="(default %(default)s)")
    p.set_defaults(func=cmd_worker)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "device") and args.command not in ("serve", "worker"):
            _device(args.device)
        return args.func(args)
    except UsageError as e:
        print(f"preempt: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("preempt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
