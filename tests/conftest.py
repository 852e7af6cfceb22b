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


@pytest.fixture
def solver_calls(monkeypatch):
    """Counts calls of the Krylov and subspace iterations made through :func:`spectral.diffusion`."""
    from ndd import spectral

    calls = {"krylov": 0, "subspace": 0}
    krylov, subspace = spectral.krylov._block_krylov, spectral.subspace_iteration

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(spectral.krylov, "_block_krylov", count("krylov", krylov))
    monkeypatch.setattr(spectral.distance, "subspace_iteration", count("subspace", subspace))
    return calls
