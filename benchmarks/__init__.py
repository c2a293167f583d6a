"""pixelvit's benchmarks: `python -m benchmarks [--quick] [--only NAME ...]` runs them all (benchmarks/suite.py).

Results (with the machine and the command) are written to benchmarks/results/results.{json,md}.
"""
