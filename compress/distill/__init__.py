"""Distillation: the stage, the trainer (one step/loop for every training), the KD objective and losses."""
