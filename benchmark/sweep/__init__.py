"""`kdtool sweep`: search student, KD, int8 and runtime settings against a target's retention and latency.

A sweep sits above the stages: every trial is a whole kdtool run (distill → quantize → export →
benchmark) in its own run folder, sharing one teacher; Optuna proposes the settings and keeps the
study (SQLite in the sweep folder, or any SQLAlchemy URL); the sweep card extends the report card
with a Pareto front.

Layout: `run.py` (what the command does, in order), `space.py` (the search space and its
validation), `objectives.py` (objectives and constraints), `storage.py` (study storage), `trial.py`
(one trial, run in its own process), `study.py` (the local/RDB driver), `ray_backend.py` (Ray Tune),
`results.py` (trials.csv, sweep.json, the front: `benchmark.pareto`), `card.py` and `html.py` (the
card), `promote.py`.
"""
