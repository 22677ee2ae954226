"""The contract over the model registry: every registered model, from each of its presets.

Cases are generated, not written: every name in :func:`dgm.core.registry.model_names` (except
the ``test_*`` models that the trainer tests register) with each ``configs/*.yaml`` whose
``model.name`` is that name, or with its defaults on digits if it has no preset. Each case is
shrunk to a tiny size (:mod:`contract_sizes`) and runs on a small subset of its preset's data,
or of a built-in stand-in of the same kind and shape where the preset's data needs fetched files
(MNIST: fake 1x28x28 arrays; Shakespeare: pydoc topics; B3DB: end-terminated character
sequences). A model added later is covered without writing a test.

Checks: ``loss`` finite with shape (N,); ``sample`` in the data's shape, dtype and range, and
reproducible from its generator; ``log_prob`` finite with shape (N,) where the likelihood is
normalized; the kind the evaluator prints equals the declared one; one training epoch through
the trainer; and the model loaded from the run equals the one the trainer held in memory
(weights, ``log_prob`` and samples for the same seed).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml
from torch import Tensor

import dgm
from contract_sizes import MAX_PARAMETERS, OVERRIDES, shrink
from dgm.config import RunConfig, load_config
from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.errors import ConfigError, DataError
from dgm.core.registry import build_model, model_entry, model_names
from dgm.data import dataset_entry
from dgm.datasets import DataKind, DataSpec, Dataset, Split
from dgm.train import TrainResult

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIZES = {"train": 64, "val": 32, "test": 32}
BATCH = 16  # the trainer's batch: 4 steps per epoch
BLOCK_SIZE = 16  # token sequences
N_SAMPLES = 4
# The models the trainer tests register for themselves (tests/toy_models.py, rule_models.py).
TEST_MODEL_PREFIX = "test_"


# -- the cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One registered model and one preset (None: the model's defaults on digits)."""

    model: str
    preset: Path | None

    @property
    def id(self) -> str:
        return f"{self.model}-{self.preset.stem if self.preset else 'defaults'}"


def _preset_model(path: Path) -> str | None:
    try:
        d = yaml.safe_load(path.read_text())
        return d["model"]["name"]
    except (yaml.YAMLError, KeyError, TypeError):
        return None  # test_every_preset_names_a_registered_model says why


def _cases() -> list[Case]:
    presets: dict[str, list[Path]] = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        presets.setdefault(_preset_model(path) or "", []).append(path)
    cases = []
    for name in model_names():
        if name.startswith(TEST_MODEL_PREFIX):
            continue
        cases += [Case(name, p) for p in presets.get(name, [])] or [Case(name, None)]
    return cases


CASES = _cases()


def cases() -> Callable:
    """``@pytest.mark.parametrize`` over every case, with ids ``model-preset``."""
    return pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])


# -- data -------------------------------------------------------------------------------------


def _fake_images(binary: bool, directory: Path) -> Dataset:
    """MNIST's shape and kind from tiny random arrays, through the ``array`` loader.

    Binary: val/test hold fixed 0/1 pixels and train holds intensities that every batch
    binarizes afresh, as ``binary_mnist`` does.
    """
    rng = np.random.default_rng(0)
    arrays = {}
    for part, n in SIZES.items():
        arrays[part] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"y_{part}"] = rng.integers(0, 10, n)
    if not binary:
        path = directory / "mnist_like.npz"
        np.savez(path, **arrays)
        return dgm.datasets.load("array", path=str(path), levels=256)
    binarized = {k: (v >= 128).astype(np.uint8) if not k.startswith("y") else v
                 for k, v in arrays.items()}
    path = directory / "binary_mnist_like.npz"
    np.savez(path, **binarized)
    data = dgm.datasets.load("array", path=str(path))
    assert data.spec.kind is DataKind.BINARY
    train = Split(torch.from_numpy(arrays["train"]).unsqueeze(1), data.train.y,
                  dynamic_binarize=True)
    return dataclasses.replace(data, train=train)


def _fake_molecules(max_length: int = 32) -> Dataset:
    """B3DB's kind: end-terminated character sequences with two labels (from pydoc text)."""
    from pydoc_data.topics import topics

    from dgm.data.tokenizers import CharTokenizer

    lines = (line.strip() for k in sorted(topics) for line in topics[k].splitlines())
    strings = [s for s in lines if 10 <= len(s) <= max_length][: sum(SIZES.values())]
    tok = CharTokenizer.from_text("".join(strings), end=True)
    end = tok.end_token
    x = torch.full((len(strings), max_length + 1), end, dtype=torch.long)
    for i, s in enumerate(strings):
        x[i, : len(s)] = torch.tensor(tok.encode(s))
    y = torch.arange(len(strings)) % 2
    chars = torch.tensor([len(s) for s in strings])
    spec = DataSpec((max_length + 1,), DataKind.TOKENS, num_levels=tok.vocab_size,
                    num_classes=2, end_token=end)
    parts, start = {}, 0
    for part, n in SIZES.items():
        i = slice(start, start + n)
        parts[part] = Split(x[i], y[i], characters=chars[i])
        start += n
    return Dataset("b3db_like", spec, **parts, tokenizer=tok)


def _text_options(options: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in options.items() if k in ("tokenizer", "vocab_size")}
    return {**kept, "block_size": min(int(options.get("block_size", BLOCK_SIZE)), BLOCK_SIZE)}


#: datasets that need fetched files, and the built-in stand-in of the same kind and shape
STAND_INS: dict[str, Callable[[dict[str, Any], Path], Dataset]] = {
    "mnist": lambda o, d: _fake_images(False, d),
    "fashion_mnist": lambda o, d: _fake_images(False, d),
    "binary_mnist": lambda o, d: _fake_images(True, d),
    "binary_fashion_mnist": lambda o, d: _fake_images(True, d),
    "shakespeare": lambda o, d: dgm.datasets.load("pydoc_topics", **_text_options(o)),
    "b3db": lambda o, d: _fake_molecules(),
}


def _small(data: Dataset) -> Dataset:
    """The first 64 / 32 / 32 examples of each split."""
    parts = {p: data.split(p).subset(slice(0, n)) for p, n in SIZES.items()}
    return dataclasses.replace(data, **parts)


@pytest.fixture(scope="session")
def load_data(tmp_path_factory: pytest.TempPathFactory) -> Callable[[RunConfig], Dataset]:
    """Data for a config, cached by dataset name and options."""
    cache: dict[str, Dataset] = {}
    directory = tmp_path_factory.mktemp("contract_data")

    def load(config: RunConfig) -> Dataset:
        name, options = config.data.name, dict(config.data.options)
        key = f"{name} {sorted(options.items())}"
        if key not in cache:
            if name in STAND_INS:
                data = STAND_INS[name](options, directory)
            else:
                loader = dataset_entry(name).loader
                if "block_size" in inspect.signature(loader).parameters:
                    options["block_size"] = min(options.get("block_size", BLOCK_SIZE), BLOCK_SIZE)
                try:
                    data = dgm.datasets.load(name, **options)
                except DataError as e:
                    raise DataError(f"{e}\n(a preset's data that needs files: add a built-in "
                                    "stand-in of the same kind and shape to STAND_INS)") from e
            cache[key] = _small(data)
        return cache[key]

    return load


# -- models -----------------------------------------------------------------------------------


def config_of(case: Case) -> RunConfig:
    """The case's run config: its preset (or defaults on digits) at tiny size, one quick epoch."""
    if case.preset is not None:
        config = load_config(case.preset)
    else:
        config = load_config(base={"model": {"name": case.model}, "data": {"name": "digits"}})
    entry = model_entry(case.model)
    fields = shrink(entry.config_cls, config.model_options, OVERRIDES.get(case.model))
    d = config.to_dict()
    d["model"] = {"name": case.model, **fields}
    d["train"].update(
        epochs=1, batch_size=BATCH, eval_batch_size=64, progress=False, device="cpu",
        threads=1, time_budget_s=None, monitor_samples=32,
    )
    if config.data.name in STAND_INS and d["train"].get("monitor") in ("fd", "kid"):
        # a stand-in array has no feature network; the sample-quality monitor is tested on
        # the digits presets
        d["train"]["monitor"] = "auto"
    return RunConfig.from_dict(d)


def build(case: Case, data: Dataset) -> GenerativeModel:
    """The case's model, initialized from the training split as the trainer does, in eval mode."""
    config = config_of(case)
    model = build_model(case.model, data.spec, config.model_options)
    n = model.num_parameters()
    assert n <= MAX_PARAMETERS, (
        f"{case.id}: {n:,} parameters after shrinking (limit {MAX_PARAMETERS:,}); add an entry "
        f"for {case.model!r} to OVERRIDES in tests/contract_sizes.py"
    )
    generator = torch.Generator().manual_seed(1)
    x, _ = data.train.batch(slice(None), data.spec, generator)
    model.initialize_from_data(x, generator)
    return model.eval()


Built = tuple[GenerativeModel, Dataset]


@pytest.fixture
def built(case: Case, load_data: Callable[[RunConfig], Dataset]) -> Built:
    """The case's model (fresh, initialized from data, in eval mode) and its data."""
    data = load_data(config_of(case))
    return build(case, data), data


def _batch(data: Dataset, split: str = "test", n: int = BATCH) -> tuple[Tensor, Tensor | None]:
    generator = torch.Generator().manual_seed(2)
    return data.split(split).batch(slice(0, n), data.spec, generator)


def check_in_space(x: Tensor, spec: DataSpec, n: int) -> None:
    """x is n examples of the data's shape, dtype and range."""
    assert tuple(x.shape) == (n, *spec.event_shape)
    assert x.dtype == spec.dtype
    if spec.kind.is_discrete:
        assert int(x.min()) >= 0 and int(x.max()) < spec.num_levels, (
            f"values {int(x.min())}..{int(x.max())} outside 0..{spec.num_levels - 1}"
        )
        if spec.end_token is not None:  # after the first end token, only padding with it
            after_end = torch.cumsum(x == spec.end_token, dim=1) > 0
            assert (x[after_end] == spec.end_token).all(), "tokens after the end token"
    else:
        assert torch.isfinite(x).all()
    spec.validate(x)


def check_per_example(values: Tensor, n: int) -> None:
    assert values.shape == (n,), values.shape
    assert values.dtype.is_floating_point
    assert torch.isfinite(values).all(), values


# -- the checks -------------------------------------------------------------------------------


def test_every_preset_names_a_registered_model() -> None:
    names = set(model_names())
    for path in sorted(CONFIGS.glob("*.yaml")):
        name = _preset_model(path)
        assert name in names, f"{path.name}: model.name {name!r} is not a registered model"
        load_config(path)


@cases()
def test_loss(case: Case, built: Built) -> None:
    model, data = built
    x, y = _batch(data, "train")
    model.train()
    loss = model.loss(x, y)
    check_per_example(loss, x.shape[0])
    loss.sum().backward()


@cases()
def test_sample(case: Case, built: Built) -> None:
    """In the data's shape, dtype and range, with a finite log_prob; the same for the same
    generator seed whatever the global RNG's state."""
    model, data = built
    draws = []
    for global_seed in (10, 11):
        torch.manual_seed(global_seed)
        with torch.no_grad():
            draws.append(model.sample(N_SAMPLES, generator=torch.Generator().manual_seed(3)))
    check_in_space(draws[0], data.spec, N_SAMPLES)
    assert torch.equal(draws[0], draws[1]), "sample() draws on the global RNG, not its generator"
    if model.likelihood_on(data.spec.kind) is not Likelihood.NONE:
        with torch.no_grad():
            check_per_example(model.log_prob(draws[0]), N_SAMPLES)  # samples are in the support


@cases()
def test_log_prob(case: Case, built: Built) -> None:
    model, data = built
    x, y = _batch(data)
    kind = model.likelihood_on(data.spec.kind)
    if kind is Likelihood.NONE:
        with pytest.raises(NotImplementedError):
            model.log_prob(x, y)
        return
    with torch.no_grad():
        check_per_example(model.log_prob(x, y), x.shape[0])


@cases()
def test_narrow_integer_data_score_as_long_data(case: Case, built: Built) -> None:
    """Data files hold uint8 pixels: a model scores them as it scores the same values held as
    long (an IDF once subtracted its offset in uint8 and wrapped around)."""
    model, data = built
    spec = data.spec
    if not spec.kind.is_discrete or (spec.num_levels or 2) > 256:
        pytest.skip("no narrow-integer form of these data")
    x, y = _batch(data)
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        wide = model.loss(x, y)
        torch.manual_seed(0)
        narrow = model.loss(x.to(torch.uint8), y)
    assert torch.allclose(wide, narrow, rtol=1e-5, atol=1e-5)


#: what the evaluator calls each declared likelihood, on discrete and on continuous data
EVAL_KINDS = {
    Likelihood.EXACT: ("exact", "density"),
    Likelihood.LOWER_BOUND: ("upper_bound", "density_bound"),
    Likelihood.ESTIMATE: ("estimate", "density_estimate"),
}


@cases()
def test_evaluator_kind_is_the_declared_one(case: Case, built: Built) -> None:
    model, data = built
    declared = model.likelihood_on(data.spec.kind)
    if declared not in EVAL_KINDS:
        with pytest.raises(ConfigError):
            dgm.evaluate(model, data.test)
        return
    result = dgm.evaluate(model, data.test)
    discrete, continuous = EVAL_KINDS[declared]
    assert result.kind == (continuous if data.spec.kind is DataKind.CONTINUOUS else discrete)
    assert result.n == len(data.test) and math.isfinite(result.nll_nats)


# -- end-terminated token sequences ----------------------------------------------------------

TOKEN_MODELS = [
    n for n in model_names()
    if not n.startswith(TEST_MODEL_PREFIX) and DataKind.TOKENS in model_entry(n).cls.data_kinds
]


def _canonical_sequences(length: int, levels: int, end: int) -> Tensor:
    """Every sequence whose positions after the first end token are all the end token."""
    rows = []
    for seq in itertools.product(range(levels), repeat=length):
        first = seq.index(end) if end in seq else length
        if all(v == end for v in seq[first:]):
            rows.append(seq)
    return torch.tensor(rows)


@pytest.mark.parametrize("name", TOKEN_MODELS)
def test_end_terminated_sequences(name: str) -> None:
    """On token data with an end token, log_prob sums to one over the sequences that the data
    can hold (padding after the end token) and samples are such sequences."""
    spec = DataSpec((4,), DataKind.TOKENS, num_levels=3, end_token=2)
    entry = model_entry(name)
    fields = shrink(entry.config_cls, {}, OVERRIDES.get(name))
    if any(f.name == "input_encoding" for f in dataclasses.fields(entry.config_cls)):
        fields["input_encoding"] = "one_hot"  # token ids have no order
    model = build_model(name, spec, fields)
    x = _canonical_sequences(4, 3, 2)
    generator = torch.Generator().manual_seed(1)
    model.initialize_from_data(x, generator)
    model.eval()
    with torch.no_grad():
        total = float(model.log_prob(x).double().exp().sum())
        samples = model.sample(64, generator=generator)
    assert total == pytest.approx(1.0, abs=1e-5), "log_prob does not sum to one"
    check_in_space(samples, spec, 64)


# -- training, saving and loading -------------------------------------------------------------


@dataclass
class Trained:
    run_dir: Path
    result: TrainResult
    model: GenerativeModel  # the instance the trainer held in memory, best weights loaded
    data: Dataset


@pytest.fixture(scope="session")
def trained_runs() -> dict[str, Trained | BaseException]:
    return {}


@pytest.fixture
def trained(
    case: Case,
    load_data: Callable[[RunConfig], Dataset],
    tmp_path_factory: pytest.TempPathFactory,
    trained_runs: dict[str, Trained | BaseException],
    monkeypatch: pytest.MonkeyPatch,
) -> Trained:
    """One epoch of the case through the trainer (once per session, shared by two tests)."""
    if case.id not in trained_runs:
        try:
            trained_runs[case.id] = _train(case, load_data, tmp_path_factory, monkeypatch)
        except Exception as e:  # noqa: BLE001  (re-raised by every test that needs it)
            trained_runs[case.id] = e
    got = trained_runs[case.id]
    if isinstance(got, BaseException):
        raise got
    return got


def _train(
    case: Case,
    load_data: Callable[[RunConfig], Dataset],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Trained:
    config = config_of(case)
    data = load_data(config)
    cls = model_entry(case.model).cls
    instances: list[GenerativeModel] = []
    init = cls.__init__

    def recording_init(self: GenerativeModel, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self) is cls:
            instances.append(self)

    run_dir = tmp_path_factory.mktemp(case.id) / "run"
    with monkeypatch.context() as m:
        m.setattr(cls, "__init__", recording_init)
        result = dgm.train(config, run_dir, dataset=data)
    assert instances, f"the trainer built no {cls.__name__}"
    return Trained(run_dir, result, instances[0], data)


@cases()
def test_one_training_epoch(case: Case, trained: Trained) -> None:
    result, run = trained.result, dgm.open_run(trained.run_dir)
    assert result.epochs == 1 and result.best_epoch == 1
    assert math.isfinite(result.best_val)
    assert run.info["status"] == "finished"
    assert run.info["likelihood"] == trained.model.likelihood_on(trained.data.spec.kind).value
    epochs = [m for m in run.metrics() if "epoch" in m and "train_loss" in m]
    assert len(epochs) == 1 and math.isfinite(epochs[0]["train_loss"])
    assert epochs[0]["step"] > 0 or not trained.model.fit.players, "no optimizer step was taken"


def _seeded(fn: Callable[[], Tensor], seed: int) -> Tensor:
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return fn()


@cases()
def test_save_then_load(case: Case, trained: Trained) -> None:
    """The model loaded from the run directory is the one the trainer held in memory."""
    torch.manual_seed(12345)  # not the trainer's seed: randomness at build time must be saved
    loaded = dgm.load(trained.run_dir)
    original = trained.model.eval()
    saved, now = original.state_dict(), loaded.state_dict()
    assert saved.keys() == now.keys()
    for key in saved:
        assert torch.equal(saved[key], now[key]), f"{key} differs after loading"
    x, y = _batch(trained.data)
    if loaded.likelihood_on(trained.data.spec.kind) is not Likelihood.NONE:
        a = _seeded(lambda: original.log_prob(x, y), 5)
        b = _seeded(lambda: loaded.log_prob(x, y), 5)
        assert torch.equal(a, b), f"log_prob differs by up to {float((a - b).abs().max()):.3g}"
    a = _seeded(lambda: original.sample(N_SAMPLES, generator=torch.Generator().manual_seed(6)), 7)
    b = _seeded(lambda: loaded.sample(N_SAMPLES, generator=torch.Generator().manual_seed(6)), 7)
    assert torch.equal(a, b), "samples for the same seed differ after loading"


def test_declared_sample_options_are_what_sample_takes() -> None:
    """The CLI offers --temperature, --top-k, ... from ``sample_options``; every option declared
    must be a keyword of ``sample``, and every extra keyword of ``sample`` declared."""
    import inspect

    from dgm.core.registry import model_entry

    for name in model_names():
        cls = model_entry(name).cls
        params = inspect.signature(cls.sample).parameters
        extra = {p for p in params if p not in ("self", "n", "y", "generator")}
        assert set(cls.sample_options) == extra, name


def test_reconstruct_takes_a_generator() -> None:
    """The report calls ``reconstruct(x, generator=g)`` on every model that has the capability."""
    import inspect

    from dgm.core.registry import model_entry

    for name in model_names():
        cls = model_entry(name).cls
        if hasattr(cls, "reconstruct"):
            assert "generator" in inspect.signature(cls.reconstruct).parameters, name
