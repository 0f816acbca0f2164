"""Training fingerprints: `python -m tests.perf.train_fingerprint > a.txt` before and after a change to
the training loop; the two outputs must be identical (weights' sha256 and every history value but
wall time, for KD, KD with SAM + clipping, KD with EMA, and QAT with the KD objective)."""
import hashlib
import tempfile
from pathlib import Path

import torch

from compress.data.loader import make_loader
from compress.distill.trainer import fit
from tests.compress.kd_fixtures import PRE, TASK, digits, distill_cfg, model_tensors, tiny_net, train_cfg

torch.set_num_threads(1)

def h(t):
    return hashlib.sha256(b"".join(v.numpy().tobytes() for _, v in sorted(t.items()))).hexdigest()[:16]

tmp = Path(tempfile.mkdtemp())
data_cfg, train, val = digits(128, batch_size=32)
for name, kw in [("kd", {}), ("kd-sam-clip", {"optimizer": "sam", "grad_clip": 1.0}), ("kd-ema", {"ema_decay": 0.9})]:
    teacher = tiny_net(7, width=12)
    student = tiny_net(1, batchnorm=True)
    r = fit(student, train, val, TASK, train_cfg(2, **kw), tmp / name, data_cfg=data_cfg, teacher=teacher,
            distill=distill_cfg(), label=name)
    hist = [{k: v for k, v in x.items() if k != "train_seconds"} for x in r.history]
    print(name, h(model_tensors(tmp / name)), h(model_tensors(tmp / name, "best.safetensors")), hist)

from compress.data.loader import example_batch  # noqa: E402
from compress.distill.objective import KDObjective  # noqa: E402
from compress.quant.qat import qat_distill  # noqa: E402

student = tiny_net(1, batchnorm=True).module.eval()
teacher = tiny_net(7, width=12).module.eval()
raw = example_batch(train)
obj = KDObjective(TASK, distill_cfg(), student, teacher, PRE(raw), PRE(raw))
loader = make_loader(train, 32, shuffle=True, seed=0)
qm = qat_distill(student, None, loader, PRE, PRE, TASK, epochs=2, lr=1e-3, objective=obj)
out = qm.module(PRE(raw))
print("qat", hashlib.sha256(out.detach().numpy().tobytes()).hexdigest()[:16], qm.meta.get("qat_history"))
