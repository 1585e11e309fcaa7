"""The API benchmark suite behind bench/api.py: data, processes, wrk, limits, report."""
