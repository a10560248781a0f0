"""Typed configuration: presets round-trip, value ranges, strict numbers, precedence and conflicts, eval class list."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from mscl.cli import build_parser, resolve_config_path
from mscl.cli import main as cli_main
from mscl.config import LOSS_PRESETS, Config, ConfigError, load_config, save_config
from mscl.data import generate_synthetic_dataset

PRESETS = sorted(p.stem for p in (Path(__file__).parents[1] / "mscl/configs").glob("*.yaml"))
MISSING_ROOT = "/nonexistent/mscl-test-data"


def _train_error(capsys, *argv: str) -> str:
    """Run ``mscl train`` with a dataset root that does not exist (so nothing can start) and return stderr."""
    code = cli_main(["train", "--config", "synthetic-tiny", "--root", MISSING_ROOT, *argv])
    assert code == 2
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("resize", [None, [90, 120]])
@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_saved_and_reloaded_equals_itself(name: str, resize: list[int] | None, tmp_path: Path) -> None:
    overrides = [] if resize is None else [f"data.resize={resize}"]
    config = load_config(resolve_config_path(name), overrides)
    if resize is not None:
        assert config.data.resize == resize
    path = tmp_path / "config.yaml"
    path.write_text(save_config(config))
    again = load_config(path)
    assert again == config
    assert again.to_dict() == config.to_dict()


def test_resize_takes_a_scale_or_a_size_and_nothing_else() -> None:
    assert load_config(overrides=["data.resize=1"]).data.resize == 1.0
    assert isinstance(load_config(overrides=["data.resize=1"]).data.resize, float)
    assert load_config(overrides=["data.resize=[64, 96]"]).data.resize == [64, 96]
    assert load_config(overrides=["data.resize=null"]).data.resize is None
    with pytest.raises(ConfigError, match=r"^data\.resize: expects a scale factor \(e\.g\. 0\.5\) or a \[height, width\] size, got True"):
        load_config(overrides=["data.resize=true"])
    with pytest.raises(ConfigError, match=r"^data\.resize\[1\]: must be >= 1, got 0 \(given by --set data\.resize=\[90, 0\]\)$"):
        load_config(overrides=["data.resize=[90, 0]"])
    with pytest.raises(ConfigError, match=r"^data\.resize: expects a \[height, width\] pair, got \[1, 2, 3\]"):
        load_config(overrides=["data.resize=[1, 2, 3]"])


def test_a_key_set_twice_by_set_is_refused_naming_both() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["data.resize=null", "data.resize=[90, 120]"])
    assert str(err.value) == (
        "data.resize is given twice on the command line, by --set data.resize=null and by --set data.resize=[90, 120]; keep one"
    )
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["train={steps: 4}", "train.steps=3"])
    assert str(err.value).startswith("train.steps is given twice on the command line, by --set train={steps: 4} and by --set train.steps=3")


def test_learning_rate_in_exponent_notation(tmp_path: Path) -> None:
    assert load_config(overrides=["optim.lr=1e-3"]).optim.lr == pytest.approx(1e-3)
    path = tmp_path / "lr.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  weight_decay: 5e-4\n")
    config = load_config(path)
    assert config.optim.lr == pytest.approx(1e-3) and config.optim.weight_decay == pytest.approx(5e-4)
    assert isinstance(config.optim.lr, float)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=-1", "data.batch_size: must be >= 1, got -1"),
        ("data.batch_size=0", "data.batch_size: must be >= 1, got 0"),
        ("data.val_batch_size=0", "data.val_batch_size: must be >= 1, got 0"),
        ("data.num_workers=-1", "data.num_workers: must be >= 0, got -1"),
        ("data.max_train_images=0", "data.max_train_images: must be >= 1, got 0"),
        ("data.color_jitter=-0.1", "data.color_jitter: must be >= 0, got -0.1"),
        ("data.crop_size=[0, 64]", "data.crop_size[0]: must be >= 1, got 0"),
        ("data.scale_range=[0.0, 1.0]", "data.scale_range[0]: must be > 0, got 0.0"),
        ("data.scale_range=[1.5, 0.75]", "data.scale_range: needs [min, max] with min <= max, got [1.5, 0.75]"),
        ("optim.lr=0", "optim.lr: must be > 0, got 0"),
        ("optim.lr=-1e-3", "optim.lr: must be > 0, got '-1e-3'"),
        ("optim.weight_decay=-1", "optim.weight_decay: must be >= 0, got -1"),
        ("optim.warmup_steps=-2", "optim.warmup_steps: must be >= 0, got -2"),
        ("loss.temperature=0", "loss.temperature: must be > 0, got 0"),
        ("loss.contrastive_weight=-0.1", "loss.contrastive_weight: must be >= 0, got -0.1"),
        ("loss.ms_weights=[1.0, -0.7, 0.4, 0.1]", "loss.ms_weights[1]: must be >= 0, got -0.7"),
        ("loss.cs_weights=[1.0, -1.0]", "loss.cs_weights[1]: must be >= 0, got -1.0"),
        ("loss.min_views_per_class=0", "loss.min_views_per_class: must be >= 1, got 0"),
        ("loss.projector_dim=0", "loss.projector_dim: must be >= 1, got 0"),
        ("train.steps=0", "train.steps: must be >= 1, got 0"),
        ("train.val_every=0", "train.val_every: must be >= 1, got 0"),
        ("export.num_pixels=0", "export.num_pixels: must be >= 1, got 0"),
        ("seed=-1", "seed: must be >= 0, got -1"),
        ("optim.lr=.inf", "optim.lr: must be a finite number, got inf"),
        ("train.device=gpu", "train.device: expects auto or a torch device such as cpu, cuda, cuda:1, got 'gpu'"),
        ("loss.preset=supcon", "loss.preset: must be one of 'ce', 'ms' or 'ms+cs', got 'supcon'"),
    ],
)
def test_out_of_range_values_are_refused_naming_key_value_and_source(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert str(err.value) == f"{message} (given by --set {override})"


def test_run_name_must_be_one_folder() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["name=a/b"])
    text = str(err.value)
    assert text.startswith("name: must be one folder name") and text.endswith(", got 'a/b' (given by --set name=a/b)")


@pytest.mark.parametrize("value", ["-1", "0"])
def test_cli_batch_size_is_checked_before_training(value: str, capsys) -> None:
    err = _train_error(capsys, "--batch-size", value)
    assert err == (
        f"mscl train: error: data.batch_size: must be >= 1, got {value} (given by --batch-size {value}; set --batch-size or data.batch_size)"
    )


def test_cli_val_batch_size_zero_is_checked_before_training(capsys) -> None:
    err = _train_error(capsys, "--set", "data.val_batch_size=0")
    assert err == "mscl train: error: data.val_batch_size: must be >= 1, got 0 (given by --set data.val_batch_size=0)"


def test_flag_and_set_for_one_key_conflict(capsys) -> None:
    err = _train_error(capsys, "--steps", "20", "--set", "train.steps=40")
    assert err == "mscl train: error: train.steps is given twice on the command line, by --set train.steps=40 and by --steps 20; keep one"
    err = _train_error(capsys, "--set", "loss.temperature=0.2", "--set", "loss.temperature=0.3")
    assert "by --set loss.temperature=0.2 and by --set loss.temperature=0.3" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  steps: true\n", "train.steps: expects a number, not true/false, got True"),
        ("optim:\n  lr: false\n", "optim.lr: expects a number, not true/false, got False"),
        ("data:\n  batch_size: yes\n", "data.batch_size: expects a number, not true/false, got True"),
        ("data:\n  hflip: 1\n", "data.hflip: expects true or false, got 1"),
    ],
)
def test_booleans_and_numbers_do_not_mix(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "strict.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {message}"


def test_precedence_file_then_set_then_flags(tmp_path: Path) -> None:
    preset = resolve_config_path("synthetic-tiny")
    base = load_config(preset)
    assert (base.train.steps, base.data.batch_size) == (800, 16)
    config = load_config(preset, ["train.steps=5", "data={val_batch_size: 2}"], {"data.batch_size": ("--batch-size", 3)})
    assert (config.train.steps, config.data.batch_size, config.data.val_batch_size) == (5, 3, 2)
    assert config.data.name == base.data.name == "folder"  # a mapping for a section is merged, not a replacement
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--config file" in help_text and "< --set KEY=VALUE < the dedicated flags" in " ".join(help_text.split())


def test_train_flags_come_from_the_config_model() -> None:
    from mscl.cli import TRAIN_FLAGS

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    actions = {action.option_strings[0]: action for action in train._actions if action.option_strings}
    assert set(TRAIN_FLAGS) <= set(actions)
    assert tuple(actions["--loss"].choices) == LOSS_PRESETS
    assert actions["--steps"].type is int and actions["--batch-size"].type is int and actions["--seed"].type is int
    assert actions["--root"].type is str
    for flag, key in TRAIN_FLAGS.items():
        assert f"config key {key}" in actions[flag].help
        section, _, leaf = key.rpartition(".")
        assert leaf in type(getattr(Config(), section) if section else Config()).model_fields


def test_unknown_keys_list_the_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["loss.temprature=0.2"])
    text = str(err.value)
    assert text.startswith("loss.temprature: unknown key (did you mean 'temperature'?); valid keys in loss: [")
    assert "'temperature'" in text and "'ms_weights'" in text and text.endswith("(given by --set loss.temprature=0.2)")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  nme: camvid\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: data\.nme: unknown key \(did you mean 'name'\?\); valid keys in data: \["):
        load_config(bad)


def test_errors_are_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [1,\n  2\n")
    with pytest.raises(ConfigError) as err:
        load_config(broken)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"config file {broken} is not valid YAML")
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["data.batch_size=[1"])
    assert "\n" not in str(err.value) and str(err.value).startswith("--set data.batch_size=[1: the value is not valid YAML")


def test_preset_lookup_lives_in_config_and_demo_does_not_import_the_cli() -> None:
    import mscl.cli
    from mscl.config import CONFIG_DIR, resolve_config_path

    assert mscl.cli.resolve_config_path is resolve_config_path
    assert resolve_config_path("synthetic-tiny") == CONFIG_DIR / "synthetic-tiny.yaml"
    with pytest.raises(ConfigError, match=r"config 'no-such' is neither a file nor a shipped preset; presets: \["):
        resolve_config_path("no-such")
    import mscl.demo

    tree = ast.parse(Path(mscl.demo.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "mscl.config" in imported and "mscl.cli" not in imported


def test_resume_loads_the_runs_config(tmp_path: Path, monkeypatch) -> None:
    import mscl.trainer

    run = tmp_path / "runs" / "earlier"
    run.mkdir(parents=True)
    written = load_config(resolve_config_path("synthetic-tiny"), ["name=earlier", f"output_dir={tmp_path / 'elsewhere'}", "data.resize=[48, 64]"])
    (run / "config.yaml").write_text(save_config(written))
    seen = {}

    class FakeTrainer:
        def __init__(self, config: Config, resume: bool = False, **options: object) -> None:
            seen["config"], seen["resume"] = config, resume

        def fit(self) -> Path:
            return seen["config"].run_dir

    monkeypatch.setattr(mscl.trainer, "Trainer", FakeTrainer)
    assert cli_main(["train", "--resume", str(run), "--steps", "12"]) == 0
    config = seen["config"]
    assert seen["resume"] is True and config.run_dir == run
    assert config.train.steps == 12 and config.data.resize == [48, 64] and config.data.name == "folder"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 1-step CE run of the tiny model on small synthetic scenes, and its dataset root."""
    from mscl.trainer import Trainer

    root = generate_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic", n_train=4, n_val=2, size=(32, 48), seed=0)
    overrides = [
        f"data.root={root}", f"output_dir={tmp_path_factory.mktemp('runs')}", "name=tiny", "loss.preset=ce", "train.steps=1",
        "data.batch_size=2", "data.val_batch_size=2", "train.progress=false", "train.device=cpu", "export.num_pixels=20",
        "export.num_prediction_images=1", "export.num_dense_images=0", "export.project=false",
    ]
    return Trainer(load_config(resolve_config_path("synthetic-tiny"), overrides)).fit(), root


def test_eval_refuses_a_dataset_with_another_class_list(trained_run, tmp_path: Path, capsys) -> None:
    run, root = trained_run
    trained_on = json.loads((run / "run.json").read_text())["dataset"]["class_names"]
    other = tmp_path / "other"
    (other / "images/val").mkdir(parents=True)
    (other / "masks/val").mkdir(parents=True)
    for kind in ("images", "masks"):
        for image in (root / kind / "val").iterdir():
            (other / kind / "val" / image.name).write_bytes(image.read_bytes())
    classes = json.loads((root / "classes.json").read_text())
    classes["classes"].append({"id": 200, "name": "snow", "color": [250, 250, 250]})
    (other / "classes.json").write_text(json.dumps(classes))
    found = [*trained_on, "snow"]
    assert cli_main(["eval", str(run), "--data-root", str(other), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"mscl eval: error: the dataset at --data-root {other} has {len(found)} classes {found} but run {run} was trained on "
        f"{len(trained_on)} classes {trained_on} (run.json dataset.class_names); point --data-root at a copy of the dataset "
        "the run was trained on"
    )
    assert "snow" not in captured.out
    assert cli_main(["eval", str(run), "--data-root", str(root), "--device", "cpu"]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]) >= len(trained_on)
