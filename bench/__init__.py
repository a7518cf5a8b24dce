"""minattn's benchmark suite: ``python -m bench`` (or ``python bench/run.py``); see ``bench/run.py``.

    run.py            the command line, the order of measurement, the table, results.json
    measure.py        timing (median after warm-up), tracemalloc peak, resident-set growth, BLAS threads, machine
    flops.py          the matrix-product FLOP count of every workload, formulas stated
    cases_minattn.py  the minattn workloads, each a ready-to-time ``run()``
    cases_torch.py    the same workloads in PyTorch (optional: only imported when torch is)
    figure.py         dense vs flash attention: time and memory against L

Timings never go in tests (DESIGN.md §5); tests/test_bench.py only checks that a --quick run completes and writes
its outputs.
"""
