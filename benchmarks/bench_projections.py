"""Time of the stage-aligned 2-D maps the Feature spaces view draws (docs/workbench.md, view 2): new vs previous.

One case = one method (``umap`` or ``tsne``), one implementation and N pixels at 4 stages (synthetic class-structured
embeddings, 11 classes, 64 dimensions, the same pixels at every stage, seeded), mapped as an aligned set:

* ``new``: ``workbench.projection_methods.chained_maps`` (UMAP with PCA start, 200 epochs and exact neighbours up
  to 25,000 rows; openTSNE with FFT gradients; each stage started from its neighbour's map, then Procrustes);
* ``previous``: the implementation the project started from, kept here verbatim: ``umap.AlignedUMAP`` (joint
  optimisation, spectral start) and scikit-learn's t-SNE of each stage from one shared PCA start.

Every case runs in a fresh Python process (imports included, as on a freshly started app server) under a time
limit; the report gives the process's wall time, the time of the imports and of the maps alone (wall and CPU), and
its peak resident memory. Child processes get as many BLAS/OpenMP/numba threads as CPUs this process may use
(``os.sched_getaffinity``), so ``taskset -c 0,1`` emulates a 2-core machine. Before the timed cases untimed ``new``
UMAPs fill numba's on-disk cache (``NUMBA_CACHE_DIR``, see ``workbench.projection_methods``), as after the first use
on a machine: one with exact neighbours and, when a size needs it, one with NN-descent; ``--cold`` skips them.
Sizes above 3,000 are skipped while the 1-minute load average exceeds ``--max-load`` (a shared machine gives
meaningless numbers then).

Usage: ``python benchmarks/bench_projections.py [--sizes 3000 20000 100000] [--methods umap tsne]
[--impls new previous] [--limit 600] [--max-load 3] [--out benchmarks/results/projections-<host>.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGES = 4
CLASSES = 11
DIMENSIONS = 64
SEED = 0
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def stage_embeddings(points: int, seed: int = SEED) -> list[np.ndarray]:
    """``STAGES`` float32 matrices [points, DIMENSIONS] of the same pixels: class centres plus a per-pixel offset
    shared by all stages, each stage with its own random rotation and more noise at the finer stages."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, points)
    centres = rng.normal(size=(CLASSES, DIMENSIONS))
    offsets = rng.normal(size=(points, DIMENSIONS))
    stages = []
    for stage in range(STAGES):
        rotation, _ = np.linalg.qr(rng.normal(size=(DIMENSIONS, DIMENSIONS)))
        noise = rng.normal(size=(points, DIMENSIONS))
        stages.append(((centres[labels] + 0.6 * offsets + (0.9 - 0.2 * stage) * noise) @ rotation).astype(np.float32))
    return stages


def previous_aligned(data: list[np.ndarray], method: str, seed: int = SEED) -> list[np.ndarray]:
    """The aligned maps as the project computed them at the start (default parameters of that version)."""
    if method == "umap":
        import umap

        identity = {i: i for i in range(len(data[0]))}
        model = umap.AlignedUMAP(n_components=2, random_state=seed, n_neighbors=15, min_dist=0.1, metric="cosine")
        model.fit(data, relations=[identity] * (len(data) - 1))
        return [np.asarray(e) for e in model.embeddings_]
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    def normalise(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)

    init = PCA(n_components=2, random_state=seed).fit_transform(normalise(data[0]))
    init = init / np.std(init[:, 0]) * 1e-4
    panels = []
    for X in data:
        model = TSNE(n_components=2, random_state=seed, init=init, perplexity=30.0, metric="cosine")
        if len(X) < 2000:
            with threadpool_limits(limits=1, user_api="openmp"):
                panels.append(model.fit_transform(normalise(X)))
        else:
            panels.append(model.fit_transform(normalise(X)))
    return panels


def run_case(points: int, method: str, implementation: str) -> dict[str, Any]:
    """One case in this process (called in the child): timings of the imports and of the aligned maps."""
    started = time.perf_counter()
    data = stage_embeddings(points)
    tic = time.perf_counter()
    if implementation == "new":
        from workbench.projection_methods import _umap, chained_maps

        if method == "umap":
            _umap()
        else:
            import openTSNE  # noqa: F401
    elif method == "umap":
        import umap  # noqa: F401
    else:
        import sklearn.manifold  # noqa: F401
    imports = time.perf_counter() - tic
    wall, cpu = time.perf_counter(), time.process_time()
    panels = chained_maps(data, method, seed=SEED) if implementation == "new" else previous_aligned(data, method)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert len(panels) == STAGES and all(np.isfinite(p).all() and p.shape == (points, 2) for p in panels)
    return {"imports_s": round(imports, 2), "maps_wall_s": round(wall, 2), "maps_cpu_s": round(cpu, 2),
            "data_s": round(tic - started, 2), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    import numba
    import openTSNE
    import sklearn
    import umap

    return {"host": socket.gethostname(), "cpu": model, "cpus_usable": len(os.sched_getaffinity(0)),
            "cpus_machine": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "umap-learn": umap.__version__, "openTSNE": openTSNE.__version__, "scikit-learn": sklearn.__version__,
            "numba": numba.__version__}


def child_env() -> dict[str, str]:
    threads = str(len(os.sched_getaffinity(0)))
    return {**os.environ, **dict.fromkeys(THREAD_VARIABLES, threads), "PYTHONPATH": str(REPO)}


def timed_child(points: int, method: str, implementation: str, limit: float) -> dict[str, Any]:
    """Run one case in a fresh process under ``limit`` seconds; its result, or status ``timeout`` / ``failed``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--case", str(points), method, implementation]
    load = os.getloadavg()[0]
    tic = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, env=child_env(), cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "process_wall_s": round(limit, 1), "load_before": load}
    seconds = time.perf_counter() - tic
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return {"status": "failed", "error": lines[-1] if lines else f"exit status {done.returncode}", "load_before": load}
    return {"status": "ok", "process_wall_s": round(seconds, 2), **json.loads(done.stdout.splitlines()[-1]),
            "load_before": load, "load_after": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[3000, 20000, 100000])
    parser.add_argument("--methods", nargs="+", choices=["umap", "tsne"], default=["umap", "tsne"])
    parser.add_argument("--impls", nargs="+", choices=["new", "previous"], default=["new", "previous"])
    parser.add_argument("--limit", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--max-load", type=float, default=3.0, help="skip sizes above 3000 while the load average is higher")
    parser.add_argument("--cold", action="store_true", help="do not warm numba's on-disk cache first")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/projections-<host>.json)")
    parser.add_argument("--case", nargs=3, metavar=("N", "METHOD", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(int(args.case[0]), args.case[1], args.case[2])))
        return
    out = args.out or REPO / "benchmarks" / "results" / f"projections-{socket.gethostname()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
                              "stages": STAGES, "dimensions": DIMENSIONS, "classes": CLASSES, "cases": []}
    print(f"machine: {report['machine']}", flush=True)
    if not args.cold and "new" in args.impls:
        from workbench.projection_methods import EXACT_NEIGHBOURS_MAX_POINTS

        exact = [points for points in args.sizes if points <= EXACT_NEIGHBOURS_MAX_POINTS]
        warm = [min(exact)] if exact else []
        warm += [EXACT_NEIGHBOURS_MAX_POINTS + 1000] if max(args.sizes) > EXACT_NEIGHBOURS_MAX_POINTS else []
        report["numba_warm_up"] = [{"points": points, **timed_child(points, "umap", "new", args.limit)} for points in warm]
        print(f"numba cache warm-up (untimed cases): {report['numba_warm_up']}", flush=True)
    for points in args.sizes:
        for method in args.methods:
            for implementation in args.impls:
                load = os.getloadavg()[0]
                if points > 3000 and load > args.max_load:
                    result = {"status": "skipped", "reason": f"load average {load:.1f} > {args.max_load}"}
                else:
                    result = timed_child(points, method, implementation, args.limit)
                case = {"points": points, "stages": STAGES, "method": method, "implementation": implementation, **result}
                report["cases"].append(case)
                print(json.dumps(case), flush=True)
                out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
