from pathlib import Path

import pytest

from pseudolabel.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def base(tmp_path: Path) -> dict:
    return {
        "project": "p", "workdir": str(tmp_path / "w"), "classes": ["a", "b"],
        "data": {"seed": {"path": "s"}, "pool": {"path": "p"}, "holdout": {"path": "h"}},
    }


@pytest.mark.parametrize("name", ["digits.yaml", "imagefolder.yaml", "detect.yaml"])
def test_example_configs_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / name, environ={})
    assert cfg.workdir.is_absolute()
    assert cfg.label_studio.project_title


def test_unknown_key_names_key_and_accepted(tmp_path: Path) -> None:
    d = base(tmp_path)
    d["model"] = {"archh": "small_cnn"}
    with pytest.raises(ConfigError) as e:
        load_config(data=d, environ={})
    msg = str(e.value)
    assert "model.archh" in msg and "unknown key" in msg and "arch" in msg and "epochs" in msg


def test_bad_literal_lists_choices(tmp_path: Path) -> None:
    d = base(tmp_path)
    d["model"] = {"arch": "vgg"}
    with pytest.raises(ConfigError, match=r"model\.arch.*'vgg'.*small_cnn.*resnet18"):
        load_config(data=d, environ={})


def test_unknown_strategy_lists_choices(tmp_path: Path) -> None:
    d = base(tmp_path)
    d["selection"] = {"strategy": "magic"}
    with pytest.raises(ConfigError, match=r"selection\.strategy.*magic.*entropy"):
        load_config(data=d, environ={})


def test_missing_and_duplicate_classes(tmp_path: Path) -> None:
    d = base(tmp_path)
    del d["workdir"]
    with pytest.raises(ConfigError, match="workdir: required key is missing"):
        load_config(data=d, environ={})
    d = base(tmp_path)
    d["classes"] = ["a", "a"]
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(data=d, environ={})


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    import yaml

    d = base(tmp_path)
    d["model"] = {"epochs": 7}
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(d))
    assert load_config(f, environ={}).model.epochs == 7
    assert load_config(f, environ={}).model.batch_size == 64  # default
    env = {"PSEUDOLABEL__MODEL__EPOCHS": "9"}
    assert load_config(f, environ=env).model.epochs == 9
    assert load_config(f, environ=env, overrides=["model.epochs=11"]).model.epochs == 11
    # relative paths resolve against the file's folder
    assert load_config(f, environ={}).data.pool.path == (tmp_path / "p").resolve()


def test_bad_override_and_bad_yaml(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("project: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f, environ={})
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(data=base(tmp_path), overrides=["model.epochs"], environ={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_token_from_env_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = base(tmp_path)
    d["label_studio"] = {"token": "secret"}
    with pytest.raises(ConfigError, match="label_studio.token: unknown key"):
        load_config(data=d, environ={})
    cfg = load_config(data=base(tmp_path), environ={})
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="LABEL_STUDIO_API_KEY"):
        cfg.label_studio.token()
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "t0k")
    assert cfg.label_studio.token() == "t0k"
    assert "t0k" not in str(cfg.snapshot())


def det(tmp_path: Path, **over) -> dict:
    d = base(tmp_path)
    d["task"] = "detect"
    d["classes"] = ["bag"]
    d["data"]["seed"] = {"format": "yolo", "path": "s/images"}
    d["data"]["holdout"] = {"format": "coco", "path": "h.json"}
    d.update(over)
    return d


def test_detection_config_defaults(tmp_path: Path) -> None:
    cfg = load_config(data=det(tmp_path), environ={})
    assert cfg.model.arch == "yolo" and cfg.stop.metric == "map50"      # one class is fine for detection
    seg = load_config(data=det(tmp_path, task="segment"), environ={})
    assert seg.stop.metric == "mask_map50"
    cls = load_config(data=base(tmp_path), environ={})
    assert cls.model.arch == "small_cnn" and cls.stop.metric == "accuracy"


@pytest.mark.parametrize(("change", "message"), [
    ({"stop": {"metric": "accuracy"}}, "classification metric; task detect reports map50, map50_95"),
    ({"stop": {"metric": "miou"}}, "needs task segment"),
    ({"model": {"arch": "resnet18"}}, "model.arch must be yolo"),
    ({"pseudo": {"class_thresholds": {"shoe": 0.5}}}, "unknown classes \\['shoe'\\]"),
    ({"pseudo": {"class_thresholds": {"bag": 1.5}}}, "must be in \\(0, 1\\]"),
])
def test_detection_config_errors(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(data=det(tmp_path, **change), environ={})


def test_format_must_fit_task(tmp_path: Path) -> None:
    d = det(tmp_path)
    d["data"]["seed"] = {"format": "imagefolder", "path": "s"}
    with pytest.raises(ConfigError, match="data.seed.format 'imagefolder' does not fit task detect; choose one of: yolo, coco, voc"):
        load_config(data=d, environ={})
    d = base(tmp_path)
    d["data"]["holdout"] = {"format": "voc", "path": "h"}
    with pytest.raises(ConfigError, match="does not fit task classify"):
        load_config(data=d, environ={})
    d = base(tmp_path)
    d["classes"] = ["a"]
    with pytest.raises(ConfigError, match="classify needs at least 2 classes"):
        load_config(data=d, environ={})
