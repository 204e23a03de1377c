"""Reproduction of the paper's Section 4 on Fashion-MNIST: ``preempt reproduce``.

Three settings (:data:`settings.SETTINGS`):

* ``linf`` (Table 1 analogue): eps = delta = 0.1, models ADV (PGD adversarial training) and Ours
  (preemptively robust training, Algorithm 2);
* ``l2`` (Table 2 analogue): eps = delta = 1.5, the same two kinds of model;
* ``smoothing`` (Tables 5-7 analogue): a Gaussian-noise model (sigma = 0.25) smoothed, l2
  eps = delta = 0.5; empirical accuracy under randomized PGD (1 and 10 restarts), grey-box and
  white-box, and the certified accuracy at radius 0.5.

Rows are ``(model, preempt)`` with ``preempt`` in ``none`` (the originals) and ``ours`` (Preempt's
robustification at its defaults, evaluated on the 8-bit image a user would transmit).

* :mod:`.settings`: the settings, their models and the recipes that trained them;
* :mod:`.cache`: the work folder (models trained on demand, finished chunks of images);
* :mod:`.run`: :func:`run_setting`, one setting chunk by chunk;
* :mod:`.report`: markdown, JSON and the white-box plot.
"""

from .report import markdown, write_report
from .run import run_setting
from .settings import SETTINGS, TRAIN_RECIPES, ReproduceConfig, train_command

__all__ = ["SETTINGS", "TRAIN_RECIPES", "ReproduceConfig", "markdown", "run_setting", "train_command", "write_report"]
