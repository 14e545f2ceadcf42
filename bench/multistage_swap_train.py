"""Train the two models of bench/multistage_swap.py: python bench/multistage_swap_train.py unified|multistage STEPS."""
import sys, torch
torch.set_num_threads(1)
from msrepro.runconfig import load_config
from msrepro.training.loop import train
variant, steps = sys.argv[1], sys.argv[2]
ov = ["model.backbone=dpm_solver", "model.preset=tiny", f"model.variant={variant}", f"train.steps={steps}",
      "output_dir=/tmp/r10/runs", f"name=dpm_{variant}", "device=cpu",
      # the tiny recipe this probe was run with (8 px, 2 levels x 1 block, attention at 4 px, decoders 48/32/4)
      "dataset.resolution=8", "model.decoder_channels=[48,32,4]", "model.params.channel_mult=[1,2]",
      "model.params.num_blocks=1", "model.params.attn_resolutions=[4]", "model.params.dropout=0.0",
      "train.batch_size=128", "train.lr=2e-3", "train.warmup_steps=50", "train.ema_decay=0.995",
      "train.stage_policy=per_sample", "train.checkpoint_every=100", "train.heldout_every=100",
      "sample.num=891", "sample.batch_size=297", "eval.num_samples=891"]
if variant == "unified":
    ov += ["stages.num_stages=1"]
else:
    ov += ["stages.boundaries=[0.176,0.626]", "stages.boundaries_schedule=vp_linear"]
cfg = load_config(overrides=ov)
r = train(cfg, progress=False, fresh=True)
print(r.metrics)
