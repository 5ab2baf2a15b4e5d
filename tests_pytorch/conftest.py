"""Real torch for every test here: float64, one thread (tiny nets; repeatable)."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def float64_one_thread():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
