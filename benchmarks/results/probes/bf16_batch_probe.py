"""Probe (RESULTS section 2a, bfloat16): CPU s per training batch in float32, with --bf16-logits, and under
torch.autocast bfloat16 (needs autocast_sparse_fp32.patch applied). Usage: python bf16_batch_probe.py ml100k|baby"""
import sys, time, numpy as np, torch
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))
from dataclasses import replace
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.mmrec import load_mmrec
from dgmrec_core import distributed
from dgmrec_core.trainer import NegativeSampler, TrainingRun
import train_speed as ts
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
scen = sys.argv[1]
if scen == "ml100k":
    ds = load_mmrec(ROOT.parent / "shared/data/movielens100k-posters/mmrec"); mode = "paper-exact"
else:
    ds = ts.synthetic(ts.SHAPES["baby"], seed=0); mode = "batch-local"
def run(variant, nb=8):
    cfg = replace(DGMRecConfig(), seed=0, **ts.MODES[mode], bf16_logits=(variant == "bf16_logits"))
    torch.manual_seed(0)
    r = TrainingRun(ds, cfg, distributed.init("cpu"), ts.chunked_cosine_knn, None, checkpoint=None, progress=False, take_features=True)
    model, opt = r.model, r.opt
    inter = ds.interactions; rng = np.random.default_rng(0)
    sampler = NegativeSampler(inter.train, inter.n_items, rng)
    model.train(); model.begin_epoch(r.club_opt, 0, ts.chunked_cosine_knn)
    order = rng.permutation(len(inter.train)); times = []; losses = []
    for b in range(nb):
        rows = order[b*cfg.batch_size:(b+1)*cfg.batch_size]; users = inter.train[rows, 0]
        t = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=(variant == "autocast")):
            loss, _ = model.loss(torch.as_tensor(users), torch.as_tensor(inter.train[rows, 1]), torch.as_tensor(sampler.sample(users)))
        opt.zero_grad(); loss.backward(); opt.step()
        times.append(time.process_time() - t); losses.append(float(loss))
    return np.median(times[2:]), losses
for v in ("fp32", "bf16_logits", "autocast"):
    t, l = run(v)
    print(f"{scen} {v:12s} cpu s/batch {t:.3f}  losses {l[0]:.4f} {l[-1]:.4f}", flush=True)
