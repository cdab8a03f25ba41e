"""Probe (RESULTS section 2e): a batch's wide product and its weight gradient (2,800 x 4,096 rows by a 4,096 x 128
weight, then rows^T @ product) in float32 and in bfloat16, with the same row count each time and with a new
row count each time (a batch's distinct items vary; oneDNN builds a kernel per shape). Median ms of 60.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 python benchmarks/results/probes/bf16_product_probe.py
"""
import resource
import time

import torch

torch.set_num_threads(2)
weight = torch.randn(4096, 128)


def median_ms(dtype: torch.dtype, same_shape: bool, n: int = 60) -> float:
    times = []
    for i in range(n):
        rows = torch.randn(2800 if same_shape else 2700 + i, 4096).to(dtype)
        start = time.perf_counter()
        product = rows @ weight.to(dtype)
        rows.T @ product
        times.append(time.perf_counter() - start)
    return sorted(times)[n // 2] * 1000


for dtype in (torch.float32, torch.bfloat16):
    print(f"{dtype}: same shape {median_ms(dtype, True):.2f} ms, new shapes {median_ms(dtype, False):.2f} ms, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
