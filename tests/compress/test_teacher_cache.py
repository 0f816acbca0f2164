"""Teacher-output cache: exact outputs for the recorded views, top-k reconstruction, reuse and rebuild."""

from __future__ import annotations

import pytest
import torch
from kd_fixtures import digits, tiny_net

from compress.data.loader import apply_augment
from compress.distill.teacher_cache import TeacherCache
from recipes.schema import CacheConfig

pytestmark = pytest.mark.usefixtures("one_thread")
LIMIT, BATCH = 96, 32  # the cache is built in batches of the training batch size


@pytest.fixture(scope="module")
def setup():
    data_cfg, train, _ = digits(LIMIT, crop_pad=2, hflip=True, batch_size=BATCH)
    teacher = tiny_net(seed=7, batchnorm=True, width=12)
    teacher.module.eval()
    raw = torch.stack([train[i][0] for i in range(len(train))])  # (N, 1, 16, 16)
    return data_cfg, train, teacher, raw


def _teacher(teacher, x: torch.Tensor) -> torch.Tensor:
    """The teacher's outputs, in batches of BATCH like the cache build (same kernels: bit-exact)."""
    with torch.no_grad():
        parts = [teacher.module(teacher.preprocess(x[i:i + BATCH])) for i in range(0, len(x), BATCH)]
    return torch.cat(parts)


def _counting(teacher) -> list[int]:
    calls = [0]
    teacher.module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_cache_holds_exactly_the_teachers_outputs_for_each_recorded_view(setup, tmp_path):
    data_cfg, train, teacher, raw = setup
    cache = TeacherCache.build(teacher, train, data_cfg, CacheConfig(enabled=True, views=3, dtype="float32"),
                               tmp_path, seed=0)
    assert cache.params.shape == (LIMIT, 3, 3) and cache.outputs.shape == (LIMIT, 3, 10)
    assert not torch.equal(cache.params[:, 0], cache.params[:, 1])  # views really differ
    for v in range(3):
        expected = _teacher(teacher, apply_augment(raw, cache.params[:, v], data_cfg))
        assert torch.equal(cache.outputs[:, v], expected)  # same batches, same kernels: bit-exact
    # the training-time path: a random batch, a view per sample, the student's input for that view
    index = torch.tensor([5, 0, 77, 31, 31, 60])
    aug, out = cache.lookup(raw[index], index, torch.Generator().manual_seed(3))
    assert torch.allclose(out, _teacher(teacher, aug), atol=1e-5)
    def view_of(j: int, i: int) -> int:  # which recorded view of sample i the student got
        replay = [apply_augment(raw[i:i + 1], cache.params[i, v:v + 1], data_cfg)[0] for v in range(3)]
        return next(v for v in range(3) if torch.equal(aug[j], replay[v]))

    views = [view_of(j, i) for j, i in enumerate(index.tolist())]
    assert torch.equal(out, cache.outputs[index, torch.tensor(views)])


def test_float16_cache_is_the_rounded_teacher_output(setup, tmp_path):
    data_cfg, train, teacher, raw = setup
    cache = TeacherCache.build(teacher, train, data_cfg, CacheConfig(enabled=True, views=2), tmp_path, seed=0)
    assert cache.outputs.dtype == torch.float16
    expected = _teacher(teacher, apply_augment(raw, cache.params[:, 1], data_cfg))
    assert torch.equal(cache.outputs[:, 1], expected.half())


def test_top_k_keeps_the_top_logits_and_the_softmax_mass(setup, tmp_path):
    data_cfg, train, teacher, raw = setup
    full = TeacherCache.build(teacher, train, data_cfg, CacheConfig(enabled=True, views=2, dtype="float32"),
                              tmp_path / "full", seed=0)
    top_cfg = CacheConfig(enabled=True, views=2, dtype="float32", top_k=3)
    top = TeacherCache.build(teacher, train, data_cfg, top_cfg, tmp_path / "top", seed=0)
    assert top.outputs.shape == (LIMIT, 2, 3)  # only k values stored (+ indices + one log-sum-exp)
    index = torch.arange(LIMIT)
    _, want = full.lookup(raw, index, torch.Generator().manual_seed(1))
    _, got = top.lookup(raw, index, torch.Generator().manual_seed(1))
    w_val, w_idx = want.topk(3, dim=-1)
    g_val, g_idx = got.topk(3, dim=-1)
    assert torch.equal(g_idx, w_idx) and torch.equal(g_val, w_val)
    assert torch.allclose(got.logsumexp(-1), want.logsumexp(-1), atol=1e-5)  # softmax mass at T=1
    p_want, p_got = want.softmax(-1), got.softmax(-1)
    assert torch.allclose(p_got.gather(-1, w_idx), p_want.gather(-1, w_idx), atol=1e-6)
    rest = torch.ones_like(got, dtype=torch.bool).scatter_(-1, g_idx, False)
    assert torch.allclose((p_got * rest).sum(-1), (p_want * rest).sum(-1), atol=1e-6)
    dropped = got[rest].view(LIMIT, 7)
    assert torch.equal(dropped, dropped[:, :1].expand(-1, 7))  # the rest is spread evenly


def test_cache_file_is_reused_and_rebuilt_when_the_teacher_changes(setup, tmp_path):
    data_cfg, train, _, _ = setup
    teacher = tiny_net(seed=7, batchnorm=True, width=12)
    calls = _counting(teacher)
    cfg = CacheConfig(enabled=True, views=2)
    first = TeacherCache.build(teacher, train, data_cfg, cfg, tmp_path, seed=0)
    built = 2 * LIMIT // BATCH  # 2 views × 3 batches
    assert calls[0] == built
    again = TeacherCache.build(teacher, train, data_cfg, cfg, tmp_path, seed=0)
    assert calls[0] == built  # reused: no teacher forward
    assert torch.equal(again.outputs, first.outputs) and torch.equal(again.params, first.params)
    # swap classes 0 and 1 of the head: every sum of the weights is unchanged, the outputs are not
    with torch.no_grad():
        for t in (teacher.module[-1].weight, teacher.module[-1].bias):
            t[[0, 1]] = t[[1, 0]]
    changed = TeacherCache.build(teacher, train, data_cfg, cfg, tmp_path, seed=0)
    assert calls[0] == 2 * built and torch.equal(changed.outputs[:, :, 0], first.outputs[:, :, 1])
    # other augmentation → other views → rebuilt
    other_aug = data_cfg.model_copy(update={"augment": data_cfg.augment.model_copy(update={"crop_pad": 1})})
    TeacherCache.build(teacher, train, other_aug, cfg, tmp_path, seed=0)
    assert calls[0] == 3 * built
