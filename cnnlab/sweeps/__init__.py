"""Sweeps: W&B-format sweep files run by Optuna, model selection, and the comparison report.

spec.py      sweep file (+ name map) -> typed SweepSpec, checked against the recipe
storage.py   where the study lives: a journal file (default) or any SQLAlchemy URL
study.py     the sweep folder, samplers, pruners, creating / joining the study
worker.py    the worker loop: trials as runs, heartbeats, retries, failure limits
results.py   trials joined with their run folders (what select and report read)
select.py    best run per metric, Pareto front, the test table
report.py    report.html + PNGs comparing the trials
"""
