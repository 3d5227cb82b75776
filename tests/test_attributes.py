"""Attribute estimators (pose, smoke truth, CLIP zero-shot, latent), calibration of W directions, steering."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.calibrate import fit_direction, fit_directions, run_calibrate
from pipeline.config import validate_params
from pipeline.errors import ConfigError
from pipeline.faces.attributes import (
    FRONTAL_NOSE_HEIGHT,
    AttributeBatch,
    Direction,
    balance_targets,
    bin_labels,
    head_pose,
    load_prompt_set,
)
from pipeline.generate.driver import run_generate
from pipeline.identities.steering import ShardSteerer
from pipeline.plugins import check_plugins
from pipeline.shards.candidates import read_candidates

from .conftest import columns_of, make_device_pass, shard_table_of, small_params


def mean_face(yaw: float, pitch: float, roll: float, depth: float) -> np.ndarray:
    """Five landmarks of a weak-perspective 3D face (half inter-ocular distance 1) rotated and projected."""
    length = 2.3
    pts = np.array([[-1, 0, 0], [1, 0, 0], [0, FRONTAL_NOSE_HEIGHT * length, depth], [-0.8, length, 0],
                    [0.8, length, 0]], float)  # fmt: skip
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    projected = (rz @ ry @ rx @ pts.T).T[:, :2]
    return (projected * 20 + [64, 50]).astype(np.float32)


@pytest.mark.parametrize("yaw", [-40.0, -10.0, 0.0, 25.0])
@pytest.mark.parametrize("roll", [-15.0, 0.0, 12.0])
def test_head_pose_recovers_yaw_and_roll_of_a_mean_face(yaw: float, roll: float) -> None:
    landmarks = mean_face(yaw, 0.0, roll, depth=0.8)[None]
    est_yaw, est_pitch, est_roll = head_pose(landmarks, nose_depth=0.8)
    assert est_yaw[0] == pytest.approx(yaw, abs=0.5)
    assert est_roll[0] == pytest.approx(roll, abs=0.5)
    assert abs(est_pitch[0]) < 1.0


def test_head_pose_pitch_sign_and_size() -> None:
    # image y points down: a rotation moving the nose tip toward smaller y turns the face up
    up, down = (head_pose(mean_face(0, p, 0, 0.8)[None], 0.8)[1][0] for p in (-15.0, 15.0))
    assert 10 < up < 20 and -20 < down < -10


def test_pose_on_smoke_faces_follows_the_renderers_true_yaw(device_pass) -> None:
    ids, var = np.repeat(np.arange(6), 4), np.tile(np.arange(4), 6)
    cols = columns_of(device_pass, ids, var)
    found = cols["det_prob"] > 0.9
    est, truth = cols["attr_yaw"][found], cols["attr_smoke_yaw"][found]
    assert found.sum() >= 18
    assert np.corrcoef(est, truth)[0, 1] > 0.9 and np.abs(est - truth).mean() < 8
    assert set(cols["attr_yaw_bin"][found]) <= {"left", "frontal", "right"}
    assert np.isnan(cols["attr_yaw"][~found]).all() and (cols["attr_yaw_bin"][~found] == "").all()


def test_bin_labels_half_open_and_unbinned() -> None:
    bins = {"left": (-90.0, -15.0), "frontal": (-15.0, 15.0), "right": (15.0, 90.0)}
    values = np.array([-15.0, 14.99, 15.0, np.nan, 95.0])
    assert bin_labels(values, bins).tolist() == ["frontal", "frontal", "right", "", ""]


def test_shipped_attribute_files_load_and_bad_ones_are_refused(tmp_path: Path) -> None:
    for name in ("gender", "age", "ethnicity", "glasses", "smile", "facial_hair", "headwear"):
        s = load_prompt_set(name)
        assert len(s.classes) >= 2 and all(s.prompts(c) for c in s.classes)
    assert len(load_prompt_set("ethnicity").classes) == 7  # FairFace's groups
    (tmp_path / "x.yaml").write_text("level: identity\ntemplates: ['no slot']\nclasses: {a: [x], b: [y]}\n")
    with pytest.raises(ValueError, match=r"exactly one \{\}"):
        load_prompt_set("x", tmp_path)


@pytest.mark.parametrize(
    ("balance", "expected"),
    [
        ({"targets": {"gender": {"female": 0.5}}}, "balance.targets.gender: no estimator labels 'gender'"),
        ({"targets": {"smoke_hair": {"blond": 0.5}}}, "balance.targets.smoke_hair.blond: unknown class"),
        ({"targets": {"smoke_hair": {"light": 0.7, "dark": 0.4}}}, "proportions must sum to 1"),
        ({"targets": {"smoke_hair": {"light": 0.3, "dark": 0.3}}}, "proportions must sum to 1"),
        ({"mode": "steer", "targets": {"yaw_bin": {"frontal": 0.5}}}, "balance.mode: steer moves each identity"),
    ],
)
def test_bad_targets_name_their_key_path(balance: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("(", r"\(")):
        small_params(balance=balance)


def test_classes_left_out_share_the_rest_and_smoke_needs_its_generator() -> None:
    params = small_params(balance={"targets": {"smoke_skin": {"dark": 0.5}}})
    assert balance_targets(params.attributes, params.balance) == {
        "smoke_skin": {"light": 0.25, "medium": 0.25, "dark": 0.5}
    }
    with pytest.raises(ConfigError, match=r"attributes\.estimators: smoke labels only the smoke generator"):
        check_plugins(
            validate_params({"generator": {"model": "stylegan2-ffhq-256x256"}, "attributes": {"estimators": ["smoke"]}})
        )


def test_fit_direction_recovers_a_planted_boundary() -> None:
    rng = np.random.default_rng(0)
    normal = rng.standard_normal(16)
    normal /= np.linalg.norm(normal)
    w = rng.standard_normal((600, 16)) * np.linspace(0.5, 2.0, 16)  # unequal scales, like StyleGAN's W
    fitted, bias = fit_direction(w, w @ normal > 0.3, 1e-4)
    assert fitted @ normal > 0.97 and bias == pytest.approx(-0.3, abs=0.1)
    labels = np.where(w @ normal > 0.3, "a", "b")
    directions, rows = fit_directions(w, {"x": labels}, {"x": ("a", "b")}, 0.25, 1e-4)
    assert [d.cls for d in directions] == ["a", "b"] and all(d.accuracy > 0.93 for d in directions)
    assert {r["labelled"] for r in rows} == {600}


def test_steerer_fills_the_most_underfilled_bin_and_moves_past_the_boundary() -> None:
    normal = np.eye(4)[0]
    directions = [Direction("hair", "light", normal, 0.0, 1.0), Direction("hair", "dark", -normal, 0.0, 1.0)]
    plan = {"targets": {"hair": {"light": 0.8, "dark": 0.2}}, "margin": 0.5, "chunk": 10}
    steer = ShardSteerer(plan, directions)
    w = np.zeros((10, 4), np.float32)
    w[:, 0] = -1.0  # every identity is naturally dark
    offsets, chosen = steer.assign(w)
    assert chosen["hair"].count("light") == 8
    moved = (w + offsets)[:, 0]
    light = np.array(chosen["hair"]) == "light"
    assert np.allclose(moved[light], 0.5) and np.allclose(offsets[~light], 0)  # dark ones already were
    steer.verify({"hair": np.array(["dark"] * 10)})  # the estimator saw no light face at all
    _, again = steer.assign(w[:5])
    assert again["hair"] == ["light"] * 5  # so the next chunk goes to the missing bin


def test_calibrate_then_steer_skews_the_candidates(tmp_path: Path) -> None:
    """Natural rate ~50% light; with steer toward 80% the candidate shards come out ~80% light (true labels)."""
    params = small_params(
        identities={"count": 40, "images_per_identity": 1, "shard_size": 20},
        calibrate={"samples": 200},
        balance={"mode": "steer", "targets": {"smoke_hair": {"light": 0.8}}, "steer_chunk": 4},
        dataset={"identities": 10, "images_per_identity": 1},
        detect={"min_face_size": 40},
        embed={"allow_random": True, "serfiq_passes": 0, "input_size": 80},
    )
    summary = run_calibrate(params, tmp_path / "calib", plots_csv=tmp_path / "calibration.csv")
    hair = {d["class"]: d for d in summary["directions"] if d["attribute"] == "smoke_hair"}
    assert hair["light"]["accuracy"] > 0.9 and summary["steer"]["targets"]["smoke_hair"]["light"] == 0.8
    assert "smoke_hair=light" in (tmp_path / "calibration.csv").read_text()
    stamp = (tmp_path / "calib" / "directions.json").stat().st_mtime_ns
    run_calibrate(params, tmp_path / "calib")
    assert (tmp_path / "calib" / "directions.json").stat().st_mtime_ns == stamp  # reused, not refitted

    run_generate(params, tmp_path / "steered", calibration=tmp_path / "calib")
    steered = read_candidates(tmp_path / "steered", ["attr_smoke_hair", "steer_smoke_hair"]).to_pandas()
    assert (steered["attr_smoke_hair"] == "light").mean() >= 0.7
    assert (steered["attr_smoke_hair"] == steered["steer_smoke_hair"]).mean() >= 0.9  # verified by the truth
    manifest = json.loads((tmp_path / "steered" / "manifest.json").read_text())
    assert manifest["attributes"]["smoke_hair"] == {"level": "identity", "classes": ["dark", "light"]}

    # Steering state is per shard: shard 1 computed alone, by a fresh pass, has the bytes of shard 1 computed
    # after shard 0.
    from pipeline.shards.candidates import ShardStore, plan_shards

    alone = make_device_pass(params, tmp_path / "calib")
    spec = plan_shards(params.identities.count, params.identities.shard_size)[1]
    fingerprint = manifest["fingerprint"]
    table = shard_table_of(alone, params, spec, fingerprint)
    ShardStore(tmp_path / "alone").write_shard(spec, table, fingerprint, {"samples": table.num_rows})
    name = f"{spec.name}.parquet"
    assert (tmp_path / "alone" / name).read_bytes() == (tmp_path / "steered" / name).read_bytes()


def test_clip_estimator_plumbing_with_random_weights(tmp_path: Path) -> None:
    """Architecture, tokenizer, prompt ensembles and the safetensors loading path, on random weights."""
    from safetensors.torch import save_file

    from pipeline.faces.attributes import ClipEstimator
    from pipeline.weights import WEIGHTS, WeightsError, WeightsStore

    params = small_params(attributes={"estimators": ["pose", "clip"], "clip_attributes": ["gender", "age"],
                                      "clip_allow_random": True})  # fmt: skip
    store = WeightsStore(tmp_path, tmp_path / "lock.json")
    estimator = ClipEstimator(params.attributes, device="cpu", weights=store)
    assert estimator.classifier.weights_name == "random"
    pixels = torch.randint(0, 256, (3, 96, 96, 3), dtype=torch.uint8)
    batch = AttributeBatch(pixels, np.zeros((3, 5, 2), np.float32), np.zeros(3, bool), torch.zeros(3, 2, 16))
    cols = estimator(batch)
    assert set(cols["attr_gender"]) <= {"female", "male"} and set(cols["attr_age"]) <= set(
        load_prompt_set("age").classes
    )
    probs = np.stack([cols[f"attr_age_p_{c}"] for c in load_prompt_set("age").classes], 1)
    assert probs.shape == (3, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)

    state = {k: v.contiguous() for k, v in estimator.classifier.model.state_dict().items()}
    save_file(state, str(tmp_path / WEIGHTS["openclip-vit-b-32-laion2b"].file))
    strict = small_params(attributes={"estimators": ["clip"], "clip_attributes": ["gender"]})
    loaded = ClipEstimator(strict.attributes, device="cpu", weights=store)
    assert loaded.classifier.weights_name == "openclip-vit-b-32-laion2b"
    assert np.allclose(loaded(batch)["attr_gender_p_female"], cols["attr_gender_p_female"], atol=1e-5)
    with pytest.raises(WeightsError, match="clip_allow_random"):
        ClipEstimator(strict.attributes, device="cpu", weights=WeightsStore(tmp_path / "empty"))
