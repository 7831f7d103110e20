"""Device bookkeeping of the training loop that a CPU machine can check: the GPU paths it guards
ran on a lent H100/H200 (benchmarks/device_ml1m.sh)."""
from __future__ import annotations

import logging

import pytest
import torch

from genattn.training import _continue, _same_device


def test_same_device_reads_an_unindexed_cuda_as_the_current_card(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert _same_device(torch.device("cuda:0"), torch.device("cuda"))
    assert not _same_device(torch.device("cuda:1"), torch.device("cuda"))
    assert not _same_device(torch.device("cpu"), torch.device("cuda"))
    assert _same_device(torch.device("cpu"), torch.device("cpu"))


def test_a_stream_saved_on_another_kind_of_device_restarts_with_a_warning(caplog) -> None:
    gen = torch.Generator().manual_seed(3)
    fresh = gen.get_state()
    cuda_like = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state: seed and offset
    with caplog.at_level(logging.WARNING, logger="genattn.training"):
        _continue(gen, cuda_like, "the model's sampling")
    assert "another kind of device" in caplog.text
    assert torch.equal(gen.get_state(), fresh)  # left at its seed


def test_a_stream_saved_on_the_same_device_continues() -> None:
    a = torch.Generator().manual_seed(1)
    torch.rand(5, generator=a)
    b = torch.Generator().manual_seed(2)
    _continue(b, a.get_state(), "x")
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rows_on_the_card_are_taken_on_the_card() -> None:
    from genattn.training import _rows
    table = torch.arange(12).reshape(4, 3).to("cuda")
    rows = _rows(table, torch.tensor([2, 0]), torch.device("cuda"))
    assert rows.device.type == "cuda" and rows.tolist() == [[6, 7, 8], [0, 1, 2]]
