import torch
import torch.nn.functional as F

from preempt.core.models import build_model
from preempt.core.threat import ThreatModel, flat_norm
from preempt.core.train import TrainConfig, model_card, preemptive_point, train, training_examples


def test_preemptive_point_lowers_loss_inside_delta(adv_model, fmnist_test):
    """Algorithm 2's first stage: x_r within B_delta(x_o) with lower loss than x_o."""
    torch.manual_seed(0)
    x, y = fmnist_test[0][:200], fmnist_test[1][:200]
    threat = ThreatModel("linf", 0.1)
    x_r = preemptive_point(adv_model, x, y, threat, steps=1, step_size=0.1)
    assert (flat_norm(x_r - x, "linf") <= 0.1 + 1e-6).all()
    with torch.no_grad():
        assert F.cross_entropy(adv_model(x_r), y) < F.cross_entropy(adv_model(x), y)


def test_original_fraction_attacks_that_share_of_the_batch_at_the_original(fmnist_test):
    """--original-fraction f: about f of the batch is attacked inside B_eps(x_orig) (adversarial training),
    the rest at Algorithm 2's x_rob, up to delta + eps away; f = 0 is the published algorithm."""
    x, y = fmnist_test[0][:512], fmnist_test[1][:512]
    threat = ThreatModel("linf", 0.1)
    model = build_model("small-cnn").eval()
    share = {}
    for f in (0.0, 0.5):
        torch.manual_seed(0)
        cfg = TrainConfig(method="preemptive", attack_steps=2, original_fraction=f)
        d = flat_norm(training_examples(model, x, y, threat, cfg) - x, "linf")
        assert (d <= 0.2 + 1e-5).all()
        share[f] = float((d <= 0.1 + 1e-6).float().mean())
    assert share[0.0] < 0.02 and 0.4 < share[0.5] < 0.6, share
    for bad in (-0.1, 1.0):
        try:
            TrainConfig(method="preemptive", original_fraction=bad)
        except ValueError as e:
            assert "original_fraction" in str(e)
        else:
            raise AssertionError(f"original_fraction={bad} was accepted")


def test_preemptive_training_learns_and_records_a_card(fmnist_train, fmnist_test):
    torch.manual_seed(0)
    x, y = fmnist_train[0][:1500], fmnist_train[1][:1500]
    threat = ThreatModel("linf", 0.1)
    cfg = TrainConfig(method="preemptive", epochs=2, batch_size=64, attack_steps=3, attack_step=0.05)
    model, history = train(build_model("small-cnn"), x, y, cfg, threat, fmnist_test[0][:200], fmnist_test[1][:200])
    assert len(history) == 2 and history[-1]["loss"] < history[0]["loss"] + 0.5
    assert max(h["clean_accuracy"] for h in history) > 0.5
    card = model_card("small-cnn", "fashion-mnist", cfg, threat, history, 1.0, "test")
    assert card["method"] == "preemptive" and card["threat"]["epsilon"] == 0.1 and card["seed"] == 0


def test_adversarial_training_keeps_the_best_epoch(fmnist_train, fmnist_test):
    torch.manual_seed(0)
    cfg = TrainConfig(method="adversarial", epochs=2, batch_size=64, attack_steps=2, attack_step=0.05)
    model, history = train(build_model("small-cnn"), fmnist_train[0][:800], fmnist_train[1][:800], cfg,
                           ThreatModel("linf", 0.1), fmnist_test[0][:100], fmnist_test[1][:100])
    best = max(history, key=lambda h: h["selection_metric"])
    assert best.get("best")


def test_cosine_schedule_anneals_the_learning_rate_and_still_learns(fmnist_train, fmnist_test):
    x, y = fmnist_train[0][:1200], fmnist_train[1][:1200]
    xt, yt = fmnist_test
    runs = {}
    for schedule in ("constant", "cosine"):
        torch.manual_seed(0)
        cfg = TrainConfig(method="standard", epochs=3, batch_size=64, lr=2e-3, lr_schedule=schedule)
        model, history = train(build_model("small-cnn"), x, y, cfg)
        with torch.no_grad():
            runs[schedule] = (history, float((model(xt).argmax(1) == yt).float().mean()))
    const, cos = runs["constant"][0], runs["cosine"][0]
    assert all(h["lr"] == 2e-3 for h in const)
    assert cos[0]["lr"] > cos[1]["lr"] > cos[2]["lr"] and cos[2]["lr"] < 1e-8
    assert runs["cosine"][1] > 0.6, runs
    try:
        TrainConfig(lr_schedule="step")
    except ValueError as e:
        assert "lr_schedule" in str(e)
    else:
        raise AssertionError("an unknown schedule was accepted")
