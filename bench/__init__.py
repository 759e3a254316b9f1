"""The performance benchmarks of EasyFaaS: ``python -m bench [--smoke] [--out FILE]``.

Each scenario runs against a real pod (real sandboxes) and is driven by wrk or by a blocking
client whose own cost is small next to what it measures. Figures are medians with p99, and each
is also given as a ratio against a baseline measured in the same run (a bare aiohttp JSON echo),
because absolute times drift on shared machines. ``docs/performance.md`` explains the method.
"""
