"""Suite-wide test settings: one torch thread (small models are faster, results reproducible on shared CPUs)."""

import torch

torch.set_num_threads(1)
