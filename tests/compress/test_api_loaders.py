"""`Distiller.fit` with the user's own DataLoaders: collate_fn, sampler, dict batches, DDP, bad input."""

from __future__ import annotations

import logging

import pytest
import torch
from api_fixtures import CLIP, Clips, TinyAudioNet, pad_collate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler
from torch.utils.data.distributed import DistributedSampler

from compress import Distiller, KDConfig, KdtoolError, TrainConfig

FAST = TrainConfig(epochs=1, lr=0.01, threads=1)


def test_padding_collate_fn_is_used_and_the_student_learns(tmp_path):
    train = DataLoader(Clips(96), batch_size=16, shuffle=True, collate_fn=pad_collate, drop_last=True)
    val = DataLoader(Clips(32, seed=1), batch_size=16, collate_fn=pad_collate)
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        next(iter(DataLoader(Clips(8), batch_size=4)))  # what the old rebuilt loader hit
    d = Distiller(TinyAudioNet(16), TinyAudioNet(4), task="multiclass", kd=KDConfig(temperature=2, alpha=0.5),
                  train=TrainConfig(epochs=4, lr=0.02, threads=1), out_dir=tmp_path)
    student = d.fit(train, val)
    assert d.result is not None and len(d.result.history) == 4
    assert d.result.history[0]["val_accuracy"] is not None
    assert d.result.best_metric >= 0.75  # a high tone vs a low one: learnable in 4 short epochs
    assert student(torch.zeros(3, CLIP)).shape == (3, 2)


def test_weighted_sampler_draws_are_what_training_sees(tmp_path):
    ds = Clips(200)  # balanced: 100 clips of each class
    weights = torch.where(ds.labels == 0, 9.0, 1.0)  # class 0 drawn 9x as often: 90 % of an epoch
    sampler = WeightedRandomSampler(weights, num_samples=200, replacement=True,
                                    generator=torch.Generator().manual_seed(0))
    train = DataLoader(ds, batch_size=20, sampler=sampler, collate_fn=pad_collate)
    val = DataLoader(Clips(20, seed=1), batch_size=20, collate_fn=pad_collate)
    Distiller(None, TinyAudioNet(4), train=FAST, out_dir=tmp_path).fit(train, val)
    served = torch.tensor(ds.served)
    assert len(served) >= 200  # the epoch (plus the first batch read for the shape checks)
    share = float((served == 0).float().mean())
    assert 0.84 <= share <= 0.96, share  # a rebuilt shuffled loader would serve 0.50


def test_dict_batches_with_configured_keys(tmp_path):
    train = DataLoader(Clips(64, as_dict=True), batch_size=16, collate_fn=_dict_collate)
    val = DataLoader(Clips(16, seed=1, as_dict=True), batch_size=16, collate_fn=_dict_collate)
    d = Distiller(TinyAudioNet(8), TinyAudioNet(4), train=FAST, input_key="audio", label_key="target",
                  out_dir=tmp_path)
    d.fit(train, val)
    record = d.result.history[0]
    assert record["val_accuracy"] is not None and record["loss_soft"] > 0  # labels and the teacher both read


def _dict_collate(items: list[dict]) -> dict[str, torch.Tensor]:
    x, y, _ = pad_collate([(i["audio"], i["target"]) for i in items])
    return {"audio": x, "target": y}


def test_a_shape_the_model_cannot_take_fails_at_the_first_batch_naming_both_shapes(capsys):
    import typer

    import kdtool

    x = torch.randn(32, 5)  # the student takes 8 features
    loader = DataLoader(TensorDataset(x, torch.randint(0, 3, (32,))), batch_size=8)
    with pytest.raises(KdtoolError) as err:
        Distiller(None, nn.Linear(8, 3), train=FAST).fit(loader, loader)
    message = err.value.line()
    assert "\n" not in message
    assert "train_loader: student.arch Linear cannot take input of shape (2, 5) (it expects (N, …, 8))" in message
    with pytest.raises(typer.Exit) as code:  # the CLI prints exactly this line for this error, exit 2
        kdtool._fail(err.value, debug=False)
    assert code.value.exit_code == 2 and capsys.readouterr().err.strip() == message


def test_a_loader_without_labels_fails_at_the_first_batch():
    loader = DataLoader(TensorDataset(torch.randn(32, 8)), batch_size=8)
    with pytest.raises(KdtoolError) as err:
        Distiller(None, nn.Linear(8, 3), train=FAST).fit(loader, loader)
    assert err.value.line().startswith("kdtool: error: train_loader yields list(Tensor(8, 8)) without labels; "
                                       "the task needs (input, label) tuples or dicts with 'label'")


def test_dict_batch_without_the_input_key_names_the_keys():
    loader = DataLoader(Clips(8, as_dict=True), batch_size=4, collate_fn=_dict_collate)
    with pytest.raises(KdtoolError, match=r"dict with keys \['audio', 'target'\]: no input key 'input'"):
        Distiller(None, TinyAudioNet(4), train=FAST).fit(loader, loader)


def test_under_ddp_a_plain_loader_gets_a_distributed_sampler_and_keeps_the_rest(monkeypatch, caplog):
    from compress.distill.api import loader_for_rank

    caplog.set_level(logging.WARNING, logger="compress.distill.api")  # an in-process CLI run sets the root to ERROR
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    ds = Clips(10)
    plain = DataLoader(ds, batch_size=4, shuffle=True, collate_fn=pad_collate, drop_last=True)
    rebuilt = loader_for_rank(plain)
    assert isinstance(rebuilt.sampler, DistributedSampler) and rebuilt.sampler.rank == 1
    assert rebuilt.sampler.shuffle and rebuilt.collate_fn is pad_collate and rebuilt.drop_last
    assert "replaced by a DistributedSampler" in caplog.text
    weighted = DataLoader(ds, batch_size=4, sampler=WeightedRandomSampler(torch.ones(10), 10))
    assert loader_for_rank(weighted) is weighted  # the user's own sampler is respected, with a warning
    assert "keeps your own sampler (WeightedRandomSampler)" in caplog.text
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert loader_for_rank(plain) is plain
