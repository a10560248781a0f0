"""Time and peak extra memory of the supervised InfoNCE implementations (forward + backward).

Compares, for each sample count N (embedding size d):

* ``direct``  - :func:`mscl.losses.supervised_infonce_reference` (full similarity matrix);
* ``blocked`` - :func:`mscl.losses.supervised_infonce` (the project's default);
* ``matmul``  - the bare products: ``S = Z @ Z.T; S.sum().backward()``;

and the full :class:`mscl.losses.MSCSLoss` at the paper's settings (4 stages, d=256, about 10,000
samples per stage, 2 cross-scale pairs; 12 random crops of 1024x1024 with 19 balanced classes) for
both implementations, when the reference fits in memory. Times are medians over repeats
after a warm-up; peak extra memory is ``torch.cuda.max_memory_allocated`` above the baseline on
CUDA, and on CPU the peak resident set size (sampled from ``/proc/self/statm`` by a thread) above
the baseline taken just before the call, after returning freed heap memory to the OS.

Usage: ``python benchmarks/bench_loss.py [--sizes 2000 5000 10000] [--device cpu|cuda|auto]
[--json results.json]``
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mscl.losses import MSCSLoss, supervised_infonce, supervised_infonce_reference

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE_SIZE


def _release_freed_memory() -> None:
    gc.collect()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def _available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable missing from /proc/meminfo")


class _ResidentPeak:
    """Samples the process's resident set size in a background thread."""

    def __init__(self, interval_s: float = 0.0005) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _resident_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> _ResidentPeak:
        self.peak = _resident_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _resident_bytes())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` in seconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_extra_memory(fn: Callable[[], None], device: torch.device) -> int:
    """Peak memory above the baseline while ``fn`` runs, in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - baseline
    _release_freed_memory()
    baseline = _resident_bytes()
    with _ResidentPeak() as sampler:
        fn()
    return max(sampler.peak - baseline, 0)


def _loss_case(kind: str, z: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        if kind == "matmul":
            (z @ z.T).sum().backward()
        elif kind == "direct":
            supervised_infonce_reference(z, labels).backward()
        else:
            supervised_infonce(z, labels).backward()
        z.grad = None

    return run


def bench_losses(
    sizes: list[int], dim: int, classes: int, device: torch.device, repeats: int, warmup: int
) -> list[dict]:
    """direct / blocked / matmul rows for every N."""
    results = []
    generator = torch.Generator().manual_seed(0)
    for n in sizes:
        z = torch.randn(n, dim, generator=generator).to(device).requires_grad_()
        labels = torch.randint(0, classes, (n,), generator=generator).to(device)
        row: dict = {"N": n, "d": dim}
        for kind in ("direct", "blocked", "matmul"):
            fn = _loss_case(kind, z, labels)
            row[f"{kind}_s"] = time_call(fn, device, repeats, warmup)
            row[f"{kind}_mib"] = peak_extra_memory(fn, device) / 2**20
        print(
            f"N={n}: direct {row['direct_s']:.3f}s, blocked {row['blocked_s']:.3f}s, matmul {row['matmul_s']:.3f}s",
            flush=True,
        )
        results.append(row)
    return results


def _paper_scene(device: torch.device, generator: torch.Generator, dim: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """12 crops of 1024x1024, strides 4/8/16/32, 19 classes on 64x64 cells, every class on 13-14
    cells of every image: 228 (image, class) pairs, so ``max_features_total`` caps every stage at
    43 views per pair (9,804 samples), the deepest stage included."""
    batch, size, classes, cell = 12, 1024, 19, 64
    cells_per_image = (size // cell) ** 2
    balanced = torch.arange(cells_per_image) % classes
    cells = torch.stack([balanced[torch.randperm(cells_per_image, generator=generator)] for _ in range(batch)])
    cells = cells.view(batch, size // cell, size // cell)
    labels = cells.repeat_interleave(cell, 1).repeat_interleave(cell, 2)
    embeddings = [
        torch.randn(batch, dim, size // stride, size // stride, generator=generator).to(device).requires_grad_()
        for stride in (4, 8, 16, 32)
    ]
    return embeddings, labels.to(device)


def bench_mscs(
    dim: int,
    device: torch.device,
    repeats: int,
    warmup: int,
    implementations: list[str],
    direct_mib_at_10k: float | None,
) -> list[dict]:
    """MSCSLoss rows; the reference is skipped on CPU when its six graphs (one per part, each
    about the direct loss's memory at N=10,000) would not fit in 60% of the available memory."""
    results = []
    generator = torch.Generator().manual_seed(1)
    embeddings, labels = _paper_scene(device, generator, dim)
    for implementation in implementations:
        loss_fn = MSCSLoss(num_classes=19, ignore_index=255, implementation=implementation)
        if implementation == "reference" and device.type == "cpu" and direct_mib_at_10k is not None:
            needed = 6 * direct_mib_at_10k * 2**20
            if needed > 0.6 * _available_bytes():
                print(f"MSCSLoss[reference] skipped: needs about {needed / 2**30:.1f} GiB", flush=True)
                results.append({"implementation": implementation, "skipped": f"needs about {needed / 2**30:.1f} GiB"})
                continue

        def run() -> None:
            output = loss_fn(embeddings, labels, torch.Generator().manual_seed(2))
            output.total.backward()
            for tensor in embeddings:
                tensor.grad = None

        with torch.no_grad():
            records = loss_fn(embeddings, labels, torch.Generator().manual_seed(2)).records
        row = {
            "implementation": implementation,
            "samples_per_stage": [r.views * r.groups for r in records.values()],
            "time_s": time_call(run, device, repeats, warmup),
            "mib": peak_extra_memory(run, device) / 2**20,
            "embedding_grad_mib": sum(e.numel() * e.element_size() for e in embeddings) / 2**20,
        }
        print(f"MSCSLoss[{implementation}]: {row['time_s']:.3f}s, {row['mib']:.0f} MiB", flush=True)
        results.append(row)
    return results


def markdown(loss_rows: list[dict], mscs_rows: list[dict], device: torch.device) -> str:
    lines = [
        f"Device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}",
        "",
        "| N | d | direct s | blocked s | matmul s | direct MiB | blocked MiB | matmul MiB "
        "| direct/blocked time | blocked/matmul time | blocked/direct memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in loss_rows:
        lines.append(
            f"| {r['N']} | {r['d']} | {r['direct_s']:.3f} | {r['blocked_s']:.3f} | {r['matmul_s']:.3f} | "
            f"{r['direct_mib']:.0f} | {r['blocked_mib']:.0f} | {r['matmul_mib']:.0f} | "
            f"{r['direct_s'] / r['blocked_s']:.2f}x | {r['blocked_s'] / r['matmul_s']:.2f}x | "
            f"{r['blocked_mib'] / max(r['direct_mib'], 1e-9):.3f} |"
        )
    if mscs_rows:
        lines += [
            "",
            "| MSCSLoss (4 stages, 2 cs pairs) | samples per stage | fwd+bwd s | peak extra MiB "
            "| of which embedding gradients MiB |",
            "|---|---|---|---|---|",
        ]
        for r in mscs_rows:
            if "skipped" in r:
                lines.append(f"| {r['implementation']} | - | skipped | {r['skipped']} | - |")
            else:
                samples = ", ".join(map(str, r["samples_per_stage"]))
                lines.append(
                    f"| {r['implementation']} | {samples} | {r['time_s']:.3f} | {r['mib']:.0f} "
                    f"| {r['embedding_grad_mib']:.0f} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10000], help="sample counts N")
    parser.add_argument("--dim", type=int, default=256, help="embedding size d")
    parser.add_argument("--classes", type=int, default=19, help="number of classes of the random labels")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument(
        "--mscs", nargs="*", choices=["blocked", "reference"], default=["blocked", "reference"],
        help="MSCSLoss implementations to run at the paper's settings (none: skip)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")

    loss_rows = bench_losses(args.sizes, args.dim, args.classes, device, args.repeats, args.warmup)
    direct_10k = next((r["direct_mib"] * (10000 / r["N"]) ** 2 for r in reversed(loss_rows)), None)
    mscs_rows = bench_mscs(args.dim, device, args.repeats, args.warmup, args.mscs, direct_10k) if args.mscs else []
    print()
    print(markdown(loss_rows, mscs_rows, device))
    if args.json is not None:
        args.json.write_text(
            json.dumps({"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "losses": loss_rows, "mscs": mscs_rows}, indent=2)
        )


if __name__ == "__main__":
    main()
