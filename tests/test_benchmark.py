"""The label-efficiency benchmark: curve arithmetic on known answers, and a real mini benchmark
(digits, oracle reviewer, 2 seeds x 2 strategies, tiny training) writing all its reports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from pseudolabel.sim.benchmark import (
    ROUND_COLUMNS,
    SUMMARY_COLUMNS,
    curve_markdown,
    labels_to_reach,
    main,
    normalised_auc,
    run_benchmark,
    share_by_budget,
    share_embeddings,
    summarise,
    summary_markdown,
)


def test_labels_to_reach_known_answer() -> None:
    labels = [20, 40, 60, 80, 100]
    acc = [0.50, 0.70, 0.85, 0.80, 0.95]
    assert labels_to_reach(labels, acc, 0.85) == 60      # first point at or above the target
    assert labels_to_reach(labels, acc, 0.84) == 60
    assert labels_to_reach(labels, acc, 0.90) == 100     # the dip at 80 does not count
    assert labels_to_reach(labels, acc, 0.50) == 20
    assert labels_to_reach(labels, acc, 0.96) is None    # never reached
    with pytest.raises(ValueError, match="non-decreasing"):
        labels_to_reach([40, 20], [0.1, 0.2], 0.1)


def test_normalised_auc_known_answer() -> None:
    # trapezoids: (0.5+0.7)/2*20 + (0.7+0.9)/2*20 = 12 + 16 = 28 over a range of 40 -> 0.7
    assert normalised_auc([20, 40, 60], [0.5, 0.7, 0.9]) == pytest.approx(0.7)
    assert normalised_auc([20, 40, 60], [0.8, 0.8, 0.8]) == pytest.approx(0.8)
    assert normalised_auc([20], [0.6]) == pytest.approx(0.6)
    # a curve that rises earlier has the larger area
    assert normalised_auc([0, 10, 20], [0.2, 0.9, 0.9]) > normalised_auc([0, 10, 20], [0.2, 0.3, 0.9])


def test_summary_compares_with_random() -> None:
    rows = []
    for strategy, accs in (("entropy", [0.5, 0.8, 0.95]), ("random", [0.5, 0.7, 0.9])):
        for seed in (0, 1):
            for k, a in enumerate(accs):
                rows.append({"dataset": "d", "strategy": strategy, "pseudo": False, "seed": seed, "round": k + 1,
                             "labels": 20 * (k + 1), "accuracy": a, "macro_f1": a, "corrections": 0,
                             "seconds": 0.0, "pseudo_used": 0})
    s = summarise(pd.DataFrame(rows), reference_accuracy=1.0).set_index("strategy")
    assert s.loc["entropy", "labels_to_95"] == 60 and pd.isna(s.loc["random", "labels_to_95"])
    assert s.loc["entropy", "labels_to_90"] == 60 and s.loc["random", "labels_to_90"] == 60
    assert s.loc["entropy", "auc_vs_random"] == pytest.approx(normalised_auc([20, 40, 60], [0.5, 0.8, 0.95])
                                                              - normalised_auc([20, 40, 60], [0.5, 0.7, 0.9]))
    assert s.loc["entropy", "final_vs_random"] == pytest.approx(0.05)
    assert s.loc["random", "auc_vs_random"] == 0



def test_share_of_random_labels_known_answer() -> None:
    """random ends at 0.9 with 100 labels; margin's mean curve first reaches 0.9 at 60 labels
    (60 % of random's labels), entropy never does; round_seconds is the mean over rounds and seeds."""
    rows = []
    curves = {"margin": ([0.5, 0.8, 0.9, 0.92, 0.95], [0.5, 0.8, 0.9, 0.9, 0.95]),   # seed 0, seed 1
              "entropy": ([0.5, 0.6, 0.7, 0.8, 0.85], [0.5, 0.6, 0.7, 0.8, 0.89]),
              "random": ([0.5, 0.6, 0.7, 0.8, 0.9], [0.5, 0.6, 0.7, 0.8, 0.9])}
    for strategy, per_seed in curves.items():
        for seed, accs in enumerate(per_seed):
            for k, a in enumerate(accs):
                rows.append({"dataset": "d", "strategy": strategy, "pseudo": False, "seed": seed, "round": k,
                             "labels": 20 * (k + 1), "accuracy": a, "macro_f1": a, "corrections": 0,
                             "seconds": 1.0 + seed + k, "pseudo_used": 0})
    rounds = pd.DataFrame(rows)
    s = summarise(rounds, reference_accuracy=None).set_index("strategy")
    assert s.loc["margin", "labels_to_random_final"] == 60
    assert s.loc["margin", "share_of_random_labels"] == pytest.approx(0.6)
    assert s.loc["random", "share_of_random_labels"] == pytest.approx(1.0)
    assert pd.isna(s.loc["entropy", "labels_to_random_final"]) and pd.isna(s.loc["entropy", "share_of_random_labels"])
    assert s.loc["margin", "round_seconds"] == pytest.approx(3.5)   # mean of 1..5 (seed 0) and 2..6 (seed 1)
    # without random in the run there is nothing to compare with
    s2 = summarise(rounds[rounds["strategy"] != "random"], reference_accuracy=None)
    assert s2["share_of_random_labels"].isna().all() and s2["labels_to_random_final"].isna().all()
    lines = curve_markdown(rounds)
    assert lines[0] == "| labels | 20 | 40 | 60 | 80 | 100 |"
    assert "| margin | 0.5000 ± 0.000 | 0.8000 ± 0.000 | 0.9000 ± 0.000 | 0.9100 ± 0.010 | 0.9500 ± 0.000 |" in lines
    md = summary_markdown(summarise(rounds, reference_accuracy=None),
                          {"accuracy": None, "settings": {"seeds": "0,1", "pool": 300}}, rounds)
    assert "| margin | no | 2 |" in md and "60%" in md and "Settings: seeds = 0,1, pool = 300" in md
    # the same question at each of random's budgets: random's mean is 0.6 / 0.7 / 0.8 / 0.9 at
    # 40 / 60 / 80 / 100 labels; margin's mean curve (0.5, 0.8, 0.9, 0.91, 0.95) reaches them at
    # 40 / 40 / 40 / 60 labels; entropy (..., 0.87) never reaches 0.9
    sh = share_by_budget(rounds).set_index(["strategy", "budget"])
    assert sh.loc[("margin", 60.0), "labels"] == 40 and sh.loc[("margin", 60.0), "share"] == pytest.approx(2 / 3)
    assert sh.loc[("margin", 80.0), "share"] == pytest.approx(0.5)
    assert sh.loc[("margin", 100.0), "share"] == pytest.approx(0.6)
    assert sh.loc[("entropy", 80.0), "share"] == pytest.approx(1.0) and pd.isna(sh.loc[("entropy", 100.0), "labels"])
    assert (sh.xs("random", level="strategy")["share"] == 1.0).all()
    assert "| margin | 20 (100%) | 40 (100%) | 40 (67%) | 40 (50%) | 60 (60%) |" in md
    assert "| entropy | 20 (100%) | 40 (100%) | 60 (100%) | 80 (100%) | - |" in md
    assert share_by_budget(rounds[rounds["strategy"] != "random"]).empty


def test_shared_embedding_cache_is_a_link_and_refuses_a_foreign_folder(tmp_path: Path) -> None:
    shared, work = tmp_path / "runs" / "_shared" / "embeddings", tmp_path / "runs" / "margin-s0"
    work.mkdir(parents=True)
    share_embeddings(work, shared)
    share_embeddings(work, shared)      # a second call is a no-op
    assert (work / "embeddings").is_symlink() and (work / "embeddings").resolve() == shared.resolve()
    other = tmp_path / "runs" / "random-s0"
    (other / "embeddings").mkdir(parents=True)
    with pytest.raises(ValueError, match="not the benchmark's shared embedding cache"):
        share_embeddings(other, shared)

@pytest.mark.slow
def test_mini_benchmark_on_digits_writes_reports(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    res = run_benchmark(dataset="digits", strategies=["entropy", "random"], seeds=[0, 1], rounds=2, batch_size=10,
                        pseudo_settings=[True], oracle=True, out_dir=out, epochs=1, min_steps=15,
                        seed_per_class=1, n_holdout=200, n_pool=300, torch_threads=1)
    rounds = pd.read_csv(out / "rounds.csv")
    assert list(rounds.columns) == ROUND_COLUMNS
    # 2 seeds x 2 strategies x (2 review rounds + the final training round)
    assert len(rounds) == 2 * 2 * 3
    assert sorted(rounds["labels"].unique().tolist()) == [10, 20, 30]    # 10 seed labels + 10 per round
    assert rounds["accuracy"].between(0, 1).all()
    assert len(list((out / "data" / "pool").glob("*.png"))) == 300
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert sorted(summary["strategy"]) == ["entropy", "random"] and (summary["seeds"] == 2).all()
    assert summary.set_index("strategy").loc["random", "auc_vs_random"] == 0
    assert 0 < res.reference["accuracy"] <= 1
    assert (summary["reference_accuracy"] == res.reference["accuracy"]).all()
    png = (out / "learning_curve.png").read_bytes()
    assert len(png) > 1000 and png[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "summary.md").read_text()
    assert "| entropy |" in md and "| random |" in md and "labels to 95%" in md
    shares = pd.read_csv(out / "share_by_budget.csv")
    assert sorted(shares["budget"].unique().tolist()) == [10, 20, 30] and len(shares) == 2 * 3
    assert "strategy / random's labels" in md


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown strategies"):
        run_benchmark(strategies=["nope"], out_dir=tmp_path, oracle=True)
    with pytest.raises(ValueError, match="unknown dataset"):
        run_benchmark(dataset="cifar", strategies=["random"], out_dir=tmp_path, oracle=True)
    assert main(["--seeds", "a,b", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_retrain_publishes_only_when_better(tmp_path: Path) -> None:
    import torch
    import yaml

    from pseudolabel.sim.demo import demo_config, export_digits
    from loops.retrain import published_info, retrain
    from pseudolabel.config import load_config
    from pseudolabel.data.ledger import Ledger

    data = export_digits(tmp_path / "data", seed_per_class=2, holdout=100, seed=0)
    for extra in sorted((tmp_path / "data" / "pool").glob("*.png"))[120:]:
        extra.unlink()
    raw = demo_config(tmp_path / "work", data.root, strategy="random", project="retrain",
                      **{"model.epochs": 2, "model.min_steps": 30, "pseudo.threshold": 0.3})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "c.yaml", environ={})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Ledger(cfg.workdir / "ledger.sqlite") as ledger:
            first = retrain(cfg, ledger, candidate_dir=tmp_path / "cand1")
            assert first.accepted and first.reason.startswith("first model")
            assert first.counts_by_source["seed"] == 20 and first.counts_by_source["human"] == 0
            assert first.counts_by_source["pseudo"] > 0
            pub = published_info(cfg)
            assert pub is not None and pub["version"] == "v1" and Path(pub["path"]).is_file()
            rows = (tmp_path / "cand1" / "training_set.csv").read_text().splitlines()[1:]
            holdout = {it.id for it in ledger.items("holdout")}
            seed_ids = {it.id for it in ledger.items("seed")}
            pseudo_ids = [r.split(",")[0] for r in rows if r.split(",")[2] == "pseudo"]
            assert len(pseudo_ids) == first.counts_by_source["pseudo"]
            assert not set(pseudo_ids) & (holdout | seed_ids)          # never pseudo-label a labelled item
            assert all(float(r.split(",")[3]) < 1.0 for r in rows if r.split(",")[2] == "pseudo")
            # a candidate that cannot beat a perfect score is recorded but not published
            second = retrain(cfg, ledger, candidate_dir=tmp_path / "cand2", previous_metrics={"accuracy": 1.0})
            assert not second.accepted and "<=" in second.reason
            assert published_info(cfg)["version"] == "v1"
            assert not (cfg.workdir / "models" / "v2.pt").exists()
            history = ledger.retrain_history()
            assert [h["accepted"] for h in history] == [True, False]
            assert json_ok(tmp_path / "cand2" / "retrain.json")["published"] is None
    finally:
        torch.set_num_threads(threads)


def json_ok(path: Path) -> dict:  # type: ignore[type-arg]
    import json

    return json.loads(path.read_text())


def test_a_campaign_that_stopped_early_stays_flat() -> None:
    rows = [{"dataset": "d", "strategy": "margin", "pseudo": False, "seed": s, "round": k, "labels": 10 * k,
             "accuracy": a, "macro_f1": a, "corrections": 0, "seconds": 0.0, "pseudo_used": 0}
            for s, accs in ((0, [0.6, 1.0]), (1, [0.6, 0.8, 0.9])) for k, a in enumerate(accs, 1)]
    s = summarise(pd.DataFrame(rows), reference_accuracy=1.0).iloc[0]
    assert s["final_accuracy"] == pytest.approx((1.0 + 0.9) / 2)     # each seed's last model
    assert s["final_labels"] == pytest.approx((20 + 30) / 2)
    # round 3: seed 0 keeps 1.0 at 20 labels, seed 1 has 0.9 at 30
    assert s["auc"] == pytest.approx(normalised_auc([10, 20, 25], [0.6, 0.9, 0.95]))


@pytest.mark.slow
def test_frozen_backbones_share_embeddings_and_pretrain_ssl_once(tmp_path: Path) -> None:
    """model.arch frozen: every campaign and the reference use one embedding cache; with
    model.backbone ssl the SimCLR backbone is trained once for the whole benchmark (not once
    per campaign) and every campaign trains its head on that file."""
    common = dict(dataset="digits", strategies=["margin", "random"], seeds=[0, 1], rounds=1, batch_size=10,
                  pseudo_settings=[False], oracle=True, seed_per_class=1, n_holdout=100, n_pool=150,
                  torch_threads=1)
    out = tmp_path / "frozen"
    res = run_benchmark(out_dir=out, overrides=["model.arch=frozen"], **common)  # type: ignore[arg-type]
    runs = out / "runs"
    campaigns = [d for d in runs.iterdir() if d.name not in ("_shared",)]
    assert len(campaigns) == 2 * 2 + 1          # + the reference
    for d in campaigns:
        assert (d / "embeddings").is_symlink() and (d / "embeddings").resolve() == (runs / "_shared" / "embeddings")
        # the campaign folder's config is the one it ran with, --set included
        assert yaml.safe_load((d / "config.yaml").read_text())["model"]["arch"] == "frozen", d.name
    assert not (runs / "_shared" / "_shared").exists()
    assert (res.summary["round_seconds"] > 0).all()

    out = tmp_path / "ssl"
    res = run_benchmark(out_dir=out, overrides=["model.arch=frozen", "model.backbone=ssl", "pretrain.max_steps=3",
                                                "pretrain.batch_size=16", "pretrain.image_size=16"],
                        **common)  # type: ignore[arg-type]
    ssl = res.reference["ssl_pretraining"]
    assert ssl["steps"] == 3 and ssl["pool"] == 150 and Path(ssl["path"]).is_file()
    assert Path(ssl["path"]).is_relative_to(out / "runs" / "_shared" / "pretrain")
    for d in (out / "runs").iterdir():
        if d.name == "_shared":
            continue
        assert not (d / "pretrain").exists(), f"{d.name} pretrained its own backbone"
    assert "Self-supervised backbone: SimCLR on the 150 pool images, 3 steps" in (out / "summary.md").read_text()
    assert res.rounds["accuracy"].between(0, 1).all() and len(res.rounds) == 2 * 2 * 2
