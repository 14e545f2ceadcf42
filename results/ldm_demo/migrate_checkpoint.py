"""Carry a checkpoint written before the lr option moved (model.params.base_lr/scale_lr -> train.lr/scale_lr)."""
import sys
from pathlib import Path
import torch
from msrepro.checkpoint import save_checkpoint
src, dst = sys.argv[1], sys.argv[2]
s = torch.load(src, weights_only=True)
p = s["config"]["model"]["params"]
p.pop("base_lr", None)
scale = p.pop("scale_lr", False)
s["config"]["train"]["scale_lr"] = bool(scale)
p["vae"] = str(Path(p["vae"]).resolve())
s["config"]["dataset"]["root"] = str(Path(s["config"]["dataset"]["root"]).resolve())
s.pop("format")
save_checkpoint(dst, s)
print("wrote", dst, s["step"])
