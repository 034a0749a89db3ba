"""PyTorch's reference for distill-head's loss on given logits.

Usage: python distill_torch_check.py LOGITS.npz TEMPERATURE ALPHA
LOGITS.npz holds `s` (student logits [N, C]), `t` (teacher logits [N, C]) and
`labels` [N] (int64). Prints one JSON line {"kd": ..., "ce": ..., "loss": ...}:
kd = KLDivLoss(reduction="batchmean")(log_softmax(s/T), softmax(t/T)) * T^2,
ce = CrossEntropyLoss()(s, labels), loss = alpha*kd + (1-alpha)*ce, in float64.
Needs torch (the export venv, .venv-export).
"""

import json
import sys

import numpy as np
import torch
import torch.nn.functional as F


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: distill_torch_check.py LOGITS.npz TEMPERATURE ALPHA")
    arrays = np.load(sys.argv[1])
    temperature, alpha = float(sys.argv[2]), float(sys.argv[3])
    s = torch.from_numpy(arrays["s"].astype(np.float64))
    t = torch.from_numpy(arrays["t"].astype(np.float64))
    labels = torch.from_numpy(arrays["labels"].astype(np.int64))
    kl = torch.nn.KLDivLoss(reduction="batchmean")
    kd = kl(F.log_softmax(s / temperature, dim=-1), F.softmax(t / temperature, dim=-1)) * temperature**2
    ce = torch.nn.CrossEntropyLoss()(s, labels)
    loss = alpha * kd + (1 - alpha) * ce
    print(json.dumps({"kd": kd.item(), "ce": ce.item(), "loss": loss.item()}))


if __name__ == "__main__":
    main()
