"""The Prometheus backend's multi-process mode: one file per worker process, one archive.

Set ``multiprocess_dir`` in the ``[prometheus]`` table (or
``METRICSFACADE_PROMETHEUS__MULTIPROCESS_DIR``): every process configured with it writes
its values to its own file there (``files``), and a scrape in any of them renders all of
them merged (``merge``), with dead workers' counters folded into one archive.
"""
