"""PolicyModule: every preference preset trains two steps; the reference stays frozen; SALSA's soup."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import get_class, instantiate
from test_configs import compose_train
from transformers import GPT2Config, GPT2LMHeadModel

from kdlab.modules import PolicyModule
from kdlab.modules.policy import load_weights, soup_state_dict
from kdlab.objectives.preference import DPO
from kdlab.run import build_objective, composed_method

# The known-reward experiment shrunk to seconds: a 1-layer SFT reference trained on 128 sequences.
TINY = [
    "experiment=pref_synthetic",
    "dataset.datamodule.sft.recipe.sequences=128", "dataset.datamodule.sft.recipe.epochs=1",
    "dataset.datamodule.sft.model.n_layer=1", "dataset.datamodule.sft.model.n_embd=16", "dataset.datamodule.sft.model.n_head=2",
    "dataset.datamodule.pairs.train=16", "dataset.datamodule.pairs.val=8", "dataset.datamodule.pairs.test=8",
    "dataset.batch_size=4", "module.samples=16",
]
CASES = [
    ["method=sft"], ["method=dpo"], ["method=ipo", "objective.length_normalize=true"], ["method=fdpo", "divergence=alpha"],
    ["method=tdpo"], ["method=tdpo", "objective.variant=tdpo1"], ["method=salsa"],
]


def quick_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def sft_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One SFT reference for the whole file, trained by the first test that needs it (the cache's job)."""
    global CACHE
    CACHE = tmp_path_factory.mktemp("teachers")


def build(overrides: list[str], tmp_path: Path) -> tuple[PolicyModule, L.LightningDataModule]:
    """The module and data a `kdlab train OVERRIDES` run builds (as `kdlab.run` does)."""
    cfg = compose_train([*TINY, f"dataset.datamodule.cache_dir={CACHE}", *overrides], tmp_path)
    module_class = get_class(cfg.module._target_)
    objective, _ = build_objective(cfg, composed_method())
    datamodule = instantiate(cfg.dataset.datamodule)
    policy = instantiate(cfg.model.student)
    module_class.check_models(datamodule, cfg.dataset.num_classes, policy, None, objective)
    module = instantiate(cfg.module, model=policy, objective=objective, optimizer=instantiate(cfg.optimizer),
                         scheduler=None, num_classes=cfg.dataset.num_classes)
    return module, datamodule


@pytest.fixture(scope="module")
def soup_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two 'SFT checkpoints' with the tiny policy's architecture, saved with save_pretrained."""
    module, _ = build(["method=dpo"], tmp_path_factory.mktemp("cfg"))
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        ingredient = GPT2LMHeadModel(module.model.config)
        path = tmp_path_factory.mktemp(f"sft{seed}")
        ingredient.save_pretrained(path)
        paths.append(str(path))
    return paths


class Snapshot(L.Callback):
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.before = {name: p.detach().clone() for name, p in module.state_dict().items()}


@pytest.mark.parametrize("overrides", CASES, ids=lambda overrides: " ".join(overrides).replace("method=", ""))
def test_preset_trains_two_steps_with_a_frozen_reference(overrides: list[str], soup_paths: list[str], tmp_path: Path) -> None:
    L.seed_everything(0)
    if overrides == ["method=salsa"]:
        overrides = [*overrides, f"module.reference_soup=[{soup_paths[0]},{soup_paths[1]}]"]
    module, datamodule = build(overrides, tmp_path)
    snapshot = Snapshot()
    trainer = quick_trainer(max_steps=2, limit_val_batches=1, limit_test_batches=1, callbacks=[snapshot],
                            default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=datamodule)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = trainer.callback_metrics
    after = module.state_dict()
    assert any(not torch.equal(after[name], value) for name, value in snapshot.before.items() if name.startswith("model."))
    assert (tmp_path / "policy" / "config.json").is_file()  # the next stage's starting point
    assert {"test/entropy", "test/distinct_1", "test/distinct_2", "test/reward"} <= set(metrics)
    if module.reference is None:  # SFT
        assert "test/nll" in metrics and "test/kl_ref" not in metrics
        return
    assert {"test/accuracy", "test/margin", "test/ece", "test/kl_ref", "test/kl_ref_k3"} <= set(metrics)
    for name, value in after.items():
        if name.startswith("reference."):
            assert torch.equal(value, snapshot.before[name]), name
    assert all(not p.requires_grad and p.grad is None for p in module.reference.parameters())
    assert not module.reference.training
    assert module.sample_history[0]["step"] == 0 and abs(module.sample_history[0]["kl_ref"]) < 1e-6 or overrides[0] == "method=salsa"


def test_salsa_reference_is_the_weighted_parameter_average(soup_paths: list[str], tmp_path: Path) -> None:
    module, _ = build(["method=salsa", f"module.reference_soup=[{soup_paths[0]},{soup_paths[1]}]", "module.soup_weights=[1,3]"], tmp_path)
    first, second = (GPT2LMHeadModel.from_pretrained(path).state_dict() for path in soup_paths)
    for name, value in module.reference.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.25 * first[name] + 0.75 * second[name])
    assert not torch.equal(module.reference.state_dict()["transformer.wte.weight"], module.model.state_dict()["transformer.wte.weight"])


def test_soup_rejects_mismatched_ingredients() -> None:
    small = GPT2LMHeadModel(GPT2Config(vocab_size=5, n_positions=4, n_embd=8, n_layer=1, n_head=2)).state_dict()
    with pytest.raises(ValueError, match="at least two"):
        soup_state_dict([small])
    with pytest.raises(ValueError, match="different parameter names"):
        soup_state_dict([small, {name: value for name, value in list(small.items())[1:]}])
    with pytest.raises(ValueError, match="non-floating"):
        soup_state_dict([{"steps": torch.tensor(1)}, {"steps": torch.tensor(2)}])
    with pytest.raises(ValueError, match="soup_weights"):
        soup_state_dict([small, small], weights=[1.0])


def test_load_weights_reads_policy_checkpoints(tmp_path: Path) -> None:
    model = GPT2LMHeadModel(GPT2Config(vocab_size=5, n_positions=4, n_embd=8, n_layer=1, n_head=2))
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()} | {"reference.x": torch.zeros(1)}}, tmp_path / "a.ckpt")
    torch.save(model.state_dict(), tmp_path / "b.pt")
    model.save_pretrained(tmp_path / "dir")
    for path in (tmp_path / "a.ckpt", tmp_path / "b.pt", tmp_path / "dir"):
        loaded = load_weights(path, model)
        assert set(loaded) >= {"transformer.wte.weight"} and torch.equal(loaded["transformer.wte.weight"], model.transformer.wte.weight)


def test_reference_logps_are_cached_by_index_and_equal_a_fresh_forward(tmp_path: Path) -> None:
    module, datamodule = build(["method=dpo"], tmp_path)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    first = module.reference_logps(batch, "train")
    assert set(module.reference_cache["train"]) == set(batch["index"].tolist())
    module.reference.transformer.wte.weight.data.zero_()  # a cache hit must not run the reference again
    torch.testing.assert_close(module.reference_logps(batch, "train"), first)


def test_policy_module_refuses_what_it_cannot_train(tmp_path: Path) -> None:
    module, datamodule = build(["method=dpo"], tmp_path)
    with pytest.raises(ValueError, match="preference objectives"):
        PolicyModule.check_models(datamodule, None, module.model, None, torch.nn.MSELoss())
    with pytest.raises(ValueError, match="Hugging Face causal LM"):
        PolicyModule.check_models(datamodule, None, torch.nn.Linear(2, 2), None, DPO(beta=0.1))
    small = GPT2LMHeadModel(GPT2Config(vocab_size=4, n_positions=16, n_embd=8, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="embedding has 4 rows"):
        PolicyModule.check_models(datamodule, None, small, None, DPO(beta=0.1))


def test_a_run_records_its_divergence_and_the_multirun_figure_labels_it(tmp_path: Path) -> None:
    """experiment=pref_synthetic with divergence=alpha, two steps through kdlab.run: results.json records
    the α the objective used, and the multirun trade-off figure is drawn from the run's CSV log."""
    from kdlab.run import run
    from kdlab.synthetic.plots import FIGURE, _label, multirun_tradeoff

    run_dir = tmp_path / "sweep" / "0-alpha"
    cfg = compose_train([*TINY, f"dataset.datamodule.cache_dir={CACHE}", "divergence=alpha", "divergence.alpha=0.3", "logger=csv",
                         "trainer.max_steps=2", "trainer.max_epochs=1", "~callbacks.progress_bar", "~callbacks.tradeoff",
                         f"paths.output_dir={run_dir}", f"paths.log_dir={tmp_path}"], run_dir)
    run(cfg)
    record = json.loads((run_dir / "results.json").read_text())
    assert (record["method"], record["divergence"], record["divergence_params"]) == ("fdpo", "alpha", {"alpha": 0.3})
    assert _label(record) == "alpha (α=0.3)"
    assert multirun_tradeoff(tmp_path / "sweep") == tmp_path / "sweep" / FIGURE
