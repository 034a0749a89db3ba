"""onnxruntime timing shared by the latency benches (bench/low_rank/latency.py,
bench/prune/latency.py): sessions timed in alternating blocks, medians in ms."""

import time

import numpy as np

def timed(sessions, feed, rounds, runs):
    """Median ms per run of each session, timed in alternating blocks."""
    times = [[] for _ in sessions]
    for s in sessions:
        for _ in range(5):
            s.run(None, feed)
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, feed)
                times[i].append(time.perf_counter() - t)
    return [1000 * float(np.median(t)) for t in times]
