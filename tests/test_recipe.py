from pathlib import Path

import pytest
import yaml

import cnnlab
from cnnlab.catalog import RECIPES
from cnnlab.errors import CnnlabError
from cnnlab.recipe import (
    Recipe,
    apply_overrides,
    dump_recipe,
    load_recipe,
    metric_goal,
    metric_names,
    validate,
)
from tests.conftest import DEMO, run_cli


def test_demo_recipe_validates_with_two_tasks():
    recipe = load_recipe(DEMO)
    assert set(recipe.tasks) == {"cls", "ink"}
    assert recipe.model.block_filters() == [32, 64, 128]
    assert recipe.tasks["ink"].loss == "mse"
    assert recipe.tasks["cls"].loss == "cross_entropy"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(path: Path):
    assert load_recipe(path).tasks


def test_unknown_key_names_key_and_valid_keys():
    with pytest.raises(CnnlabError) as err:
        load_recipe(DEMO, ["tasks.ink.wieght=3"])
    msg = str(err.value)
    assert "unknown key 'tasks.ink.wieght'" in msg
    assert "weight" in msg and "\n" not in msg


def test_wrong_choice_lists_allowed_values():
    with pytest.raises(CnnlabError, match=r"model.activation = 'relux'.*'gelu'"):
        load_recipe(DEMO, ["model.activation=relux"])


def test_wrong_type_and_out_of_range():
    with pytest.raises(CnnlabError, match=r"train.epochs = 'many'"):
        load_recipe(DEMO, ["train.epochs=many"])
    with pytest.raises(CnnlabError, match=r"data.val_fraction = 1.5.*less than 0.9"):
        load_recipe(DEMO, ["data.val_fraction=1.5"])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("tasks.cls.head.hidden=[-5]", "tasks.cls.head.hidden[0] = -5: Input should be greater"),
        ("tasks.ink.head.hidden=[64, 0]", "tasks.ink.head.hidden[1] = 0: Input should be greater"),
        ("model.filters=[0, 64, 128]", "model.filters[0] = 0: Input should be greater than 0"),
        ("train.scheduler.milestones=[5, -1]", "milestones[1] = -1: Input should be greater"),
        ("train.optimizer.betas=[0.9, 1.0]", "betas[1] = 1.0: Input should be less than 1"),
        ("train.optimizer.betas=[-0.1, 0.9]", "betas[0] = -0.1: Input should be greater than or"),
        ("train.optimizer.betas=[0.9]", "train.optimizer.betas[1] is missing: the list is too"),
    ],
)
def test_list_items_are_checked_one_by_one(override: str, expected: str):
    with pytest.raises(CnnlabError) as err:
        load_recipe(DEMO, [override])
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, field, expected",
    [
        ("adam", "momentum=0.9", "momentum = 0.9 applies to sgd only, not adam; drop momentum or"),
        ("adamw", "nesterov=false", "nesterov = False applies to sgd only, not adamw"),
        ("sgd", "betas=[0.9, 0.99]", "betas = (0.9, 0.99) applies to adam / adamw only, not sgd"),
        ("sgd", "eps=0.001", "eps = 0.001 applies to adam / adamw only, not sgd"),
    ],
)
def test_optimizer_fields_must_fit_the_optimizer(name: str, field: str, expected: str):
    with pytest.raises(CnnlabError) as err:
        load_recipe(DEMO, [f"train.optimizer.name={name}", f"train.optimizer.{field}"])
    assert f"train.optimizer: {expected}" in str(err.value)


def test_nesterov_needs_momentum():
    sgd = ["train.optimizer.name=sgd", "train.optimizer.nesterov=true"]
    with pytest.raises(CnnlabError, match="nesterov: true needs momentum > 0, got momentum: 0"):
        load_recipe(DEMO, [*sgd, "train.optimizer.momentum=0"])
    assert load_recipe(DEMO, sgd).train.optimizer.momentum is None  # null: the default, 0.9


@pytest.mark.parametrize("first", ["sgd", "adam", "adamw"])
def test_saved_recipe_validates_again_under_any_optimizer(first: str):
    """recipe.yaml in a run folder is re-read on --resume; a sweep swaps `name` on it."""
    recipe = load_recipe(DEMO, [f"train.optimizer.name={first}"])
    saved = yaml.safe_load(dump_recipe(recipe))
    assert validate(saved) == recipe
    for name in ("sgd", "adam", "adamw"):
        saved["train"]["optimizer"]["name"] = name
        assert validate(saved).train.optimizer.name == name


def test_cli_refuses_nesterov_without_momentum(tmp_path: Path):
    runs = tmp_path / "runs"
    sets = [f"output_dir={runs}", "train.optimizer.name=sgd", "train.optimizer.momentum=0"]
    sets.append("train.optimizer.nesterov=true")
    out = run_cli("train", str(DEMO), *(a for s in sets for a in ("--set", s)))
    assert_cli_refuses(out, runs, "nesterov: true needs momentum > 0")


def test_overrides_parse_yaml_values():
    recipe = load_recipe(
        DEMO, ["train.epochs=5", "tasks.ink.weight=10", "model.filters=[8, 16, 32]"]
    )
    assert recipe.train.epochs == 5
    assert recipe.tasks["ink"].weight == 10.0
    assert recipe.model.block_filters() == [8, 16, 32]


def test_null_removes_a_task():
    recipe = load_recipe(DEMO, ["tasks.ink=null", "train.monitor=val.cls.accuracy"])
    assert list(recipe.tasks) == ["cls"]


def test_a_misspelt_task_in_an_override_is_named_not_read_as_a_new_task():
    # `tasks.clz.weight=2` makes a task clz with no type: the line says which task was meant
    with pytest.raises(CnnlabError) as err:
        load_recipe(DEMO, ["tasks.clz.weight=2"])
    assert str(err.value).endswith(
        "tasks.clz.type is missing: choose one of: classification, regression, "
        "pixel_classification; or is 'clz' a misspelt task? The recipe's tasks: cls, ink "
        "(did you mean 'cls'?)"
    )
    # dropping a task the recipe does not have dropped nothing, silently
    with pytest.raises(CnnlabError) as err:
        cnnlab.load_recipe(DEMO, {"tasks.inkk": None})
    assert str(err.value) == (
        "overrides['tasks.inkk']: the recipe has no task 'inkk' to drop (its tasks: cls, ink) "
        "(did you mean 'ink'?)"
    )
    with pytest.raises(CnnlabError, match="no task 'depth' to drop .its tasks: cls, ink.$"):
        load_recipe(DEMO, ["tasks.depth=null"])
    new = load_recipe(DEMO, ["tasks.depth.type=regression", "tasks.depth.target=ink"])
    assert list(new.tasks) == ["cls", "ink", "depth"]  # a new task, typed: no complaint


def test_monitor_must_name_a_reported_metric():
    with pytest.raises(CnnlabError, match="val.ink.accuracy.*val.ink.rmse"):
        load_recipe(DEMO, ["train.monitor=val.ink.accuracy"])
    names = metric_names(load_recipe(DEMO))
    assert "val.cls.f1" in names and "val.ink.mae" in names
    raw = yaml.safe_load(DEMO.read_text()) | {"train": {"monitor": "val.ink.accuracy"}}
    with pytest.raises(CnnlabError) as err:  # a check of the whole recipe, given as a dict
        cnnlab.load_recipe(raw)
    assert str(err.value).startswith(
        "recipe: metric 'val.ink.accuracy' is not reported (did you mean 'val.cls.accuracy'?); "
    )
    with pytest.raises(CnnlabError) as err:  # in a file: the file names the recipe
        load_recipe(DEMO, ["train.monitor=val.ink.accuracy"])
    assert str(err.value).startswith(f"{DEMO}: metric 'val.ink.accuracy' is not reported")


def test_a_metric_per_class_or_component_may_be_the_monitor_once_its_class_is_known():
    from cnnlab.build import check_data

    # the recipe alone cannot know the classes: the form is checked, then the name
    recipe = load_recipe(DEMO, ["train.monitor=val.ink.rmse_dark"])
    with pytest.raises(CnnlabError) as err:  # the data says ink is one number
        check_data(recipe)
    assert str(err.value) == (
        "train.monitor 'val.ink.rmse_dark': tasks.ink's target has no classes or components, "
        "so its rmse is one number: val.ink.rmse"
    )
    with pytest.raises(CnnlabError) as err:  # a classification's accuracy is one number
        load_recipe(DEMO, ["train.early_stopping.metric=val.cls.accuracy_Shirt"])
    assert "choose one of: val.loss, " in str(err.value)
    assert str(err.value).endswith(
        "val.ink.rmse; or one class's or component's, where the target has them: "
        "val.ink.mae_<name>, val.ink.rmse_<name>; tasks.cls (classification) gives no metric "
        "per class: a task type of one's own adds one (docs: Adding a component, one more "
        "metric on a built-in task type)"
    )


def test_metric_goal():
    from cnnlab.tasks import Goal

    assert metric_goal("val.cls.accuracy") is Goal.MAXIMIZE == "maximize"  # W&B's spelling
    assert metric_goal("val.ink.rmse") is Goal.MINIMIZE
    assert metric_goal("val.loss") is Goal.MINIMIZE
    # one of a class or component (Task.epoch_values) goes its metric's way
    assert metric_goal("val.tags.f1_has_disc") is Goal.MAXIMIZE
    assert metric_goal("val.counts.rmse_squares") is Goal.MINIMIZE
    assert Goal.MAXIMIZE.better(0.9, 0.8) and Goal.MINIMIZE.better(0.1, 0.2)
    assert not Goal.MINIMIZE.better(0.2, 0.2)
    assert Goal.MINIMIZE.best([3, 1, 2], key=float) == 1 == -Goal.MINIMIZE.sign


def test_cross_field_checks():
    with pytest.raises(CnnlabError, match="filters has 2 entries but blocks = 3"):
        load_recipe(DEMO, ["model.filters=[8, 16]"])
    with pytest.raises(
        CnnlabError, match="tasks.cls.loss = 'mse': Input should be 'cross_entropy'"
    ):
        load_recipe(DEMO, ["tasks.cls.loss=mse"])


@pytest.mark.parametrize("name", ["type", "train", "forward"])
def test_a_task_named_as_a_modules_attribute_is_one_line(name):
    """`tasks: {type: ...}` (a natural name for a cell type) ended in a traceback from
    nn.ModuleDict, which holds the heads by task name."""
    sets = [f"tasks.{name}.type=classification", f"tasks.{name}.target=label"]
    with pytest.raises(CnnlabError) as err:
        load_recipe(DEMO, sets)
    assert str(err.value) == (
        f"{DEMO}: task name {name!r} is taken by PyTorch's ModuleDict, which holds the heads; "
        f"name the task otherwise (e.g. {name}_)"
    )


@pytest.mark.parametrize(
    "override, says",
    [
        ("tasks.cls.type=clasification", "tasks.cls.type = 'clasification' (did you mean "
         "'classification'?): choose one of: classification, regression"),
        ("data.source=fashion_mnst", "data.source 'fashion_mnst' is unknown (did you mean "
         "'fashion_mnist'?); choose one of: fashion_mnist, "),
        ("model.activation=mihs", "model.activation = 'mihs' (did you mean 'mish'?): Input "
         "should be 'relu', "),
        ("train.precision=BF16", "train.precision = 'BF16' (did you mean 'bf16'?): "),
        ("train.monitor=val.cls.acuracy", "metric 'val.cls.acuracy' is not reported (did you "
         "mean 'val.cls.accuracy'?); choose one of: val.loss, "),
        ("model.activation=3", "model.activation = 3: Input should be 'relu', "),  # no guess
    ],
)  # fmt: skip
def test_a_mistyped_choice_names_the_closest(override, says):
    with pytest.raises(CnnlabError) as err:
        load_recipe(DEMO, [override])
    assert says in str(err.value)


@pytest.mark.parametrize(
    "override, says",
    [
        ("tasks.ink.label_smoothing=0.1", "unknown key 'tasks.ink.label_smoothing'; valid keys "
         "here: target, weight, head, type, loss, standardize, bounds; label_smoothing is a key "
         "of classification tasks"),
        ("tasks.cls.standardize=true", "unknown key 'tasks.cls.standardize'; valid keys here: "
         "target, weight, head, type, loss, label_smoothing, class_weights; standardize is a "
         "key of regression tasks"),
        ("tasks.cls.type=segmentation", "tasks.cls.type = 'segmentation': choose one of: "
         "classification, regression, pixel_classification; register your own with "
         "@cnnlab.register_task (see cnnlab --import)"),
        ("tasks.cls.type=null", "tasks.cls.type is missing: choose one of: classification, "
         "regression, pixel_classification"),
        ("tasks.cls.head.widht=3", "unknown key 'tasks.cls.head.widht'; valid keys here: "
         "hidden, dropout, activation"),
    ],
)  # fmt: skip
def test_each_task_type_has_its_own_keys(override, says):
    """The key path is the user's (no tag inside it) and the valid keys are the type's own."""
    with pytest.raises(CnnlabError) as err:
        load_recipe(DEMO, [override])
    assert str(err.value).endswith(says)


def test_filter_organisations():
    recipe = validate({"tasks": {"c": {"type": "classification", "target": "label"}}})
    for org, want in {"same": [32, 32, 32], "double": [32, 64, 128], "half": [32, 16, 8]}.items():
        recipe.model.filter_org = org
        assert recipe.model.block_filters() == want


def test_override_into_a_value_is_an_error():
    with pytest.raises(CnnlabError, match="holds a value"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])


def test_cli_prints_one_line_without_traceback(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "data: {source: fashion_mnist}\n"
        "tasks: {c: {type: classification, target: label}}\n"
        "modle: {}\n"
    )
    out = run_cli("train", str(bad))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'modle'" in lines[0]
    assert "Traceback" not in out.stderr


def test_cli_reports_yaml_syntax_error_with_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  c: {type: classification\n")
    out = run_cli("train", str(bad))
    assert out.returncode == 2 and "not valid YAML at line 3, column 1" in out.stderr
    assert out.stderr.count("\n") == 1 and "expected ',' or '}'" in out.stderr


def test_a_misindented_key_is_said_as_indentation(tmp_path: Path):
    """PyYAML's 'expected <block end>, but found <block mapping start>' names no fix: a key
    indented one space more than its neighbours is the usual cause."""
    bad = tmp_path / "indent.yaml"
    bad.write_text("name: x\ntrain:\n   epochs: 2\n  batch_size: 16\n")
    with pytest.raises(CnnlabError) as err:
        load_recipe(bad)
    assert str(err.value).endswith(
        "at line 4, column 3: while parsing a block mapping, expected <block end>, but found "
        "'<block mapping start>'; check the indentation of line 4 and the lines above it: the "
        "keys of one section must start in the same column"
    )
    bad.write_text("name: x\ntrain:\n\tepochs: 2\n")  # an editor's tab
    with pytest.raises(CnnlabError) as err:
        load_recipe(bad)
    assert str(err.value).endswith(
        "YAML indents with spaces, not tabs: replace the tab with spaces"
    )
    bad.write_text(DEMO.read_text() + "train_subset: 500\n")  # a data key indented too little
    with pytest.raises(CnnlabError) as err:
        load_recipe(bad)
    assert "unknown key 'train_subset' (did you mean 'data.train_subset'? indent it under " in (
        str(err.value)
    )


def test_cli_check_says_a_sound_recipe_in_one_line_and_a_faulty_one_as_train_would():
    sound = run_cli("check", "fashion_multitask", "--set", "data.train_subset=2000")
    assert sound.returncode == 0, sound.stderr
    assert sound.stdout == (
        "fashion_multitask: sound. Data fashion_mnist: train 1,800, val 200, test 10,000 images "
        "of 1x28x28 (val carved from train: about data.val_fraction 0.1); tasks cls: "
        "classification of label; ink: regression of ink; model cnn, 389,483 parameters. The "
        "pixels (and a table's masks) are read when training starts.\n"
    )
    faulty = run_cli("check", "fashion_multitask", "--set", "tasks.cls.target=labels")
    assert faulty.returncode == 2 and faulty.stdout == ""
    assert faulty.stderr == (
        "error: tasks.cls.target 'labels' is not provided by fashion_mnist (did you mean "
        "'label'?); choose one of: label, ink\n"
    )
    several = ["tasks.cls.type=clasification", "train.epoch=3", "train.batch_size=x"]
    faulty = run_cli("check", "fashion_multitask", *(a for s in several for a in ("--set", s)))
    assert faulty.returncode == 2 and faulty.stderr.splitlines() == [  # each in one run, and
        # each said as the --set's that gave it, not the recipe file's
        "error: --set 'tasks.cls.type=clasification': tasks.cls.type = 'clasification' (did you "
        "mean 'classification'?): choose one of: classification, regression, "
        "pixel_classification; register your own with @cnnlab.register_task (see cnnlab "
        "--import)",
        "error: --set 'train.batch_size=x': train.batch_size = 'x': Input should be a valid "
        "integer, unable to parse string as an integer",
        "error: --set 'train.epoch=3': unknown key 'train.epoch' (did you mean 'train.epochs'?); "
        "valid keys here: " + ", ".join(Recipe.model_fields["train"].annotation.model_fields),
    ]


def test_every_problem_of_a_recipe_is_a_line_of_its_error_in_jupyter_too():
    with pytest.raises(CnnlabError) as err:
        load_recipe(DEMO, ["train.epoch=3", "model.activation=mihs"])
    assert str(err.value).endswith(
        "model.activation = 'mihs' (did you mean 'mish'?): Input "
        "should be 'relu', 'gelu', 'silu', 'mish' or 'leaky_relu'"
    )
    (also,) = err.value.also
    assert also.startswith("--set 'train.epoch=3': unknown key 'train.epoch' (did you mean ")
    assert err.value._render_traceback_() == [
        f"CnnlabError: {err.value!s}",
        f"CnnlabError: {also}",
    ]


def test_cli_usage_errors_end_without_traceback(tmp_path: Path):
    """An unknown option or a missing argument: click's message and status 2, whichever copy
    of click typer raises it from (its own since typer 0.29)."""
    out = run_cli("report", str(tmp_path), "--bogus")
    assert out.returncode == 2 and "No such option: --bogus" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "--set" not in out.stderr
    out = run_cli("train", "fashion_fast", "--epochs", "3")  # a recipe's field as a flag
    assert out.returncode == 2 and out.stderr.endswith(
        "No such option: --epochs\nerror: a recipe's fields are set with --set: --set "
        "train.epochs=...\n"
    ), out.stderr
    out = run_cli("eval")
    assert out.returncode == 2 and "Missing argument" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def assert_cli_refuses(out, runs: Path, expected: str) -> None:
    """A user error seen as a user sees it: status 2, one line, no traceback, no run folder."""
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    assert not runs.exists() or not any(runs.iterdir())


NOT_TEXT = {
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "utf16": "name: x\ntasks: {}\n".encode("utf-16"),
    "latin1": "name: caf\xe9\n".encode("latin-1"),
    "nul": b"name: x\x00\x01\x02\n",  # valid UTF-8, but control bytes: still not text
}


@pytest.mark.parametrize("data", NOT_TEXT.values(), ids=NOT_TEXT.keys())
def test_recipe_that_is_not_text_is_one_line(tmp_path: Path, data: bytes):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(data)
    with pytest.raises(CnnlabError) as err:
        load_recipe(bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg
    assert (
        "is not UTF-8 text (byte 0x" in msg or "at position 7: character #x0000 is not text" in msg
    )


def test_cli_refuses_a_binary_recipe(tmp_path: Path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(NOT_TEXT["png"])
    runs = tmp_path / "runs"
    out = run_cli("train", str(bad), "--set", f"output_dir={runs}")
    assert_cli_refuses(out, runs, "is not UTF-8 text (byte 0x89 at offset 0)")


def test_cli_lists_shipped_recipes():
    out = run_cli("recipes")
    assert out.returncode == 0
    assert "fashion_multitask" in out.stdout and "seed000_best_rmse" in out.stdout


def test_cli_eval_and_resume_of_a_non_run_are_one_line(tmp_path: Path):
    for args in (("eval", str(tmp_path)), ("train", "--resume", str(tmp_path))):
        out = run_cli(*args)
        assert out.returncode == 2
        assert out.stderr.count("\n") == 1 and "is not a run folder" in out.stderr


def test_cli_refuses_a_negative_head_size(tmp_path: Path):
    runs = tmp_path / "runs"
    out = run_cli(
        "train", str(DEMO), "--set", f"output_dir={runs}", "--set", "tasks.cls.head.hidden=[-5]"
    )
    assert_cli_refuses(out, runs, "tasks.cls.head.hidden[0] = -5: Input should be greater than 0")


def test_early_stopping_null_turns_it_off():
    patient = load_recipe(DEMO, ["train.early_stopping.patience=3"])
    assert patient.train.early_stopping.patience == 3
    recipe = load_recipe(DEMO, ["train.early_stopping.patience=3", "train.early_stopping=null"])
    assert (
        recipe.train.early_stopping.patience is None and recipe.train.early_stopping.metric is None
    )
