"""Built-in data: the digits split, data specs and their validation, the 2-D toys."""

import pytest
import torch

import dgm.datasets
from dgm.core.errors import ConfigError, DataError
from dgm.core.spec import DataKind, DataSpec


def test_digits_split_matches_the_book(digits):
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1000, 350, 447)
    from sklearn.datasets import load_digits

    ref = torch.from_numpy(load_digits().images).long()
    assert torch.equal(digits.train.all(digits.spec)[0][:, 0], ref[:1000])
    assert torch.equal(digits.test.all(digits.spec)[0][:, 0], ref[1350:])
    x, y = digits.val.all(digits.spec)
    assert x.dtype == torch.long and x.shape == (350, 1, 8, 8)
    assert int(x.min()) == 0 and int(x.max()) == 16 and digits.spec.num_levels == 17
    assert y.shape == (350,)


def test_spec_validation_messages():
    spec = DataSpec(event_shape=(1, 8, 8), kind=DataKind.DISCRETE, num_levels=17)
    spec.validate(torch.zeros(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(DataError, match=r"shape \(N, 1, 8, 8\)"):
        spec.validate(torch.zeros(2, 64, dtype=torch.long))
    with pytest.raises(DataError, match="integer tensor"):
        spec.validate(torch.zeros(2, 1, 8, 8))
    with pytest.raises(DataError, match="0..16"):
        spec.validate(torch.full((2, 1, 8, 8), 17))
    cont = DataSpec(event_shape=(2,), kind=DataKind.CONTINUOUS)
    with pytest.raises(DataError, match="floating"):
        cont.validate(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(DataError):
        DataSpec(event_shape=(4,), kind=DataKind.DISCRETE)
    assert DataSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("name", ["moons", "circles", "swissroll", "checkerboard", "eight_gaussians", "two_gaussians"])
def test_toys_are_seeded_and_distinct(name):
    a = dgm.datasets.load(name, n_train=500, n_val=100, n_test=100)
    b = dgm.datasets.load(name, n_train=500, n_val=100, n_test=100)
    assert a.train.x.shape == (500, 2) and a.train.x.dtype == torch.float32
    assert torch.equal(a.train.x, b.train.x)
    assert not torch.equal(a.val.x, a.test.x)
    assert torch.isfinite(a.train.x).all() and a.train.x.abs().max() < 10


def test_checkerboard_has_mass_on_alternating_squares():
    x = dgm.datasets.load("checkerboard", n_train=4000).train.x
    cell = (torch.floor(x[:, 0] / 2) + torch.floor(x[:, 1] / 2)) % 2
    assert bool((cell == cell[0]).all())


def test_unknown_dataset_and_option():
    with pytest.raises(ConfigError, match="available"):
        dgm.datasets.load("cifar10")
    with pytest.raises(ConfigError, match="valid options"):
        dgm.datasets.load("moons", colour="red")
    with pytest.raises(ConfigError, match="integer"):
        dgm.datasets.load("moons", n_train="many")
