"""ZeRO-3 buffer sizing (dsconfig.with_zero3_buffers) and the workers' batch cache (distributed.batches)."""

from __future__ import annotations

import numpy as np
import torch

from dist_unlearn.distributed.batches import BatchCache
from dist_unlearn.distributed.dsconfig import (
    ZERO3_BUFFER_FLOOR,
    ZERO3_BUFFER_KEYS,
    make_ds_config,
    with_zero3_buffers,
)


def test_zero3_buffers_scale_with_the_model_and_keep_user_values():
    n = 124_439_808  # GPT-2 124M
    cfg = with_zero3_buffers(make_ds_config(3), n)
    zero = cfg["zero_optimization"]
    for key in ZERO3_BUFFER_KEYS:
        assert zero[key] == -(-n // 8)  # 1/8 of the model, well under DeepSpeed's 5e7-1e9 defaults
    assert zero["stage3_param_persistence_threshold"] == 0
    small = with_zero3_buffers(make_ds_config(3), 85_002)["zero_optimization"]
    assert all(small[k] == ZERO3_BUFFER_FLOOR for k in ZERO3_BUFFER_KEYS)
    user = make_ds_config(
        3, {"zero_optimization": {"stage": 3, "reduce_bucket_size": 123, "prefetch_bucket_size": 7}}
    )
    mine = with_zero3_buffers(user, n)["zero_optimization"]
    assert mine["reduce_bucket_size"] == 123 and mine["prefetch_bucket_size"] == 7
    assert "stage3_prefetch_bucket_size" not in mine  # DeepSpeed's other name for the same setting
    assert mine["stage3_max_live_parameters"] == -(-n // 8)
    # other stages untouched
    assert with_zero3_buffers(make_ds_config(2), n) == make_ds_config(2)


def _source(rows, calls):
    def make():
        calls.append(len(rows))
        for i in range(0, len(rows), 2):
            yield {"x": torch.as_tensor(rows[i : i + 2], dtype=torch.float32)}, 2 / len(rows)

    return make


def test_batch_cache_collates_a_sample_once_and_misses_on_a_new_one():
    cache, data, calls = BatchCache(), object(), []
    rows = np.arange(6)
    first = list(cache.batches(rows, data, _source(rows, calls)))
    again = list(cache.batches(rows, data, _source(rows, calls)))
    assert calls == [6] and cache.hits == 1
    assert all(
        torch.equal(a["x"], b["x"]) and wa == wb for (a, wa), (b, wb) in zip(first, again, strict=True)
    )
    again[0][0].pop("x")  # a loss function that pops keys does not damage the cached batch
    assert "x" in next(iter(cache.batches(rows, data, _source(rows, calls))))[0]
    other = np.arange(6)  # equal values, a new sample (resample): a new key
    list(cache.batches(other, data, _source(other, calls)))
    assert calls == [6, 6]
    list(cache.batches(rows, object(), _source(rows, calls)))  # a new dataset: a new key
    assert calls == [6, 6, 6] and len(cache._entries) == 2  # at most two samples kept


def test_batch_cache_streams_a_sample_over_its_budget():
    cache, data, calls = BatchCache(limit_bytes=16), object(), []  # 2 rows x 4 B fit, 6 rows do not
    rows = np.arange(6)
    for _ in range(2):
        out = list(cache.batches(rows, data, _source(rows, calls)))
        assert [b["x"].tolist() for b, _ in out] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert calls == [6, 6] and not cache._entries
