"""The benchmark's parts, for ``experiments/benchmark.py`` and ``experiments/gpu_check.py``.

``suite`` the layers measured (with sources), ``timing`` the harness (paired rounds,
A/A), ``machine`` threads and load, ``cases`` what one case times, ``profile`` per-op
profiles, ``report`` verdicts and the printed report. Import as ``bench.<module>``
with ``experiments/`` on ``sys.path``.
"""
