"""Export a torchvision ResNet-50 to ONNX and to TorchScript, as a platform would hand its classifier over.

    python docs/examples/export_resnet50.py OUT_DIR [--pretrained]

--pretrained takes torchvision's ImageNet weights (a download); without it the weights are random, which is
enough to try every step (the checks, the cost, protection) where nothing can be downloaded. Also writes the
1000 ImageNet class names, one per line, for --class-names.
"""

import argparse
import warnings
from pathlib import Path

import torch
import torchvision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--pretrained", action="store_true", help="torchvision's IMAGENET1K_V2 weights (a download)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    model = torchvision.models.resnet50(weights=weights if args.pretrained else None).eval()
    x = torch.rand(1, 3, 224, 224)  # pixels in [0, 1] after resize, normalised: Preempt's card adds mean/std
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(args.out / "resnet50.onnx"), dynamo=True, verbose=False,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        torch.jit.trace(model, x).save(str(args.out / "resnet50.pt"))
    (args.out / "imagenet-classes.txt").write_text("\n".join(weights.meta["categories"]) + "\n")
    print(f"wrote {args.out}/resnet50.onnx (+ .data), {args.out}/resnet50.pt, {args.out}/imagenet-classes.txt")


if __name__ == "__main__":
    main()
