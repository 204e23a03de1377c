"""How many training epochs fit a time budget, from a probe run's model card (bench/gpu_capacity.sh).

    python -m bench.epochs_that_fit CARD PROBE_IMAGES FULL_IMAGES BUDGET_S MAX_EPOCHS METHODS

CARD: the card of a short `preempt train` on PROBE_IMAGES training images (a fifth, at most 2000, held
out, as `--val-size 2000` does), whose last epoch is timed; FULL_IMAGES: the images of the real run. Prints "EPOCHS K":
K = METHODS when all of them, trained at once and each counted at 1/METHODS of the speed, fit
MAX_EPOCHS epochs in BUDGET_S seconds; else K = 1 and EPOCHS is what one method alone fits (at least 1).
"""

import json
import sys

from preempt.core.data import held_out_size

VAL_SIZE = 2000  # the --val-size bench/gpu_capacity.sh trains with


def main(argv) -> int:
    card, probe, full, budget, cap, methods = argv
    probe, full, budget, cap, methods = int(probe), int(full), float(budget), int(cap), int(methods)
    seconds = json.load(open(card))["history"][-1]["seconds"]
    epoch = seconds * (full - held_out_size(full, VAL_SIZE)) / (probe - held_out_size(probe, VAL_SIZE))
    together = int(budget // (epoch * methods))
    if together >= cap or methods == 1:
        print(max(1, min(cap, together)), methods)
    else:
        print(max(1, min(cap, int(budget // epoch))), 1)
    print(f"probe epoch {seconds:.1f} s -> {epoch:.0f} s per full epoch; budget {budget:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
