import pytest
import torch

# Two threads fighting over two cores (or over another process) slow small ops ~40x.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def digits():
    import dgm.datasets

    return dgm.datasets.load("digits")
