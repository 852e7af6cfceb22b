import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a test with one torch thread: the tensors in tests are tiny, and two threads only
    add synchronisation overhead (much more so on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
