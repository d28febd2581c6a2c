"""Sex and second age: the bundled age+sex models (sha256, parity with their training runs), gender-v1, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from namus_edge.core.config import load_config
from namus_edge.core.errors import ModelError
from namus_edge.core.fsutil import sha256_file
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.evaluation import sex_accuracy, sex_confidence_for_precision
from namus_edge.models.fetch import fetch_models
from namus_edge.models.imagefile import read_image
from namus_edge.models.registry import BUNDLED_DIR, REGISTRY, check_file, resolve
from namus_edge.models.sex import mix_ages

DATA = Path(__file__).parent / "data"
#: The bundled age models, their parity fixtures (outputs saved by the training run) and the command that made them.
BUNDLED = {"agesex_utk_v1": ("agesex_parity.json", "namus-edge train age-sex"),
           "agesex_utk_v2": ("agesex_v2_parity.json", "namus-edge train age-head")}
SPEC = REGISTRY["agesex_utk_v1"]


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_model_matches_registry_and_is_found_without_a_cache(name, tmp_path):
    spec = REGISTRY[name]
    path = BUNDLED_DIR / spec.filename
    assert path.is_file(), f"{path} must ship with the package"
    assert path.stat().st_size == spec.size
    assert sha256_file(path) == spec.sha256
    empty = tmp_path / "cache"
    assert check_file(spec, empty)[0] == "present"
    assert resolve(spec.name, empty) == path
    # `models fetch` needs no source for it; an existing cache copy takes precedence
    report = fetch_models(str(tmp_path / "no-mirror"), empty, [spec.name])
    assert report.present == [spec.name] and not report.failed
    empty.mkdir()
    (empty / spec.filename).write_bytes(b"not the model")
    assert check_file(spec, empty)[0] == "corrupt"


def test_bundled_models_fit_the_size_limit():
    assert sum(REGISTRY[n].size for n in BUNDLED) <= 4 * 1024 * 1024
    assert sorted(p.name for p in BUNDLED_DIR.glob("*.onnx")) == sorted(REGISTRY[n].filename for n in BUNDLED)


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_model_metadata_and_opset(name):
    spec = REGISTRY[name]
    model = onnx.load(str(BUNDLED_DIR / spec.filename))
    meta = {p.key: p.value for p in model.metadata_props}
    assert "non-commercial" in meta["licence"]
    assert len(meta["training_manifest_sha256"]) == 64
    assert meta["command"].startswith(BUNDLED[name][1])
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) <= 17
    assert [o.name for o in model.graph.output] == ["age", "p_male"]
    assert not spec.commercial_use
    if name == "agesex_utk_v2":  # reads the embedding of the embedder its registry entry names
        assert [i.name for i in model.graph.input] == ["data", "embedding"]
        assert meta["embedder"] == spec.extra["embedder"] == "edgeface_xs"
        assert meta["base_model_sha256"] == SPEC.sha256  # agesex_utk_v1 inside


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_parity_with_training_run_on_real_faces(name, data_dir, model_cache):
    """The committed ONNX on runtime crops (and embeddings) of real UTKFace photos == what the training run saved."""
    fixture = json.loads((DATA / BUNDLED[name][0]).read_text())
    assert fixture["model_sha256"] == REGISTRY[name].sha256
    analyzer = FaceAnalyzer(load_config(None, ["models.set=custom", f"models.age2={name}"]), model_cache)
    assert analyzer.age2 is not None and analyzer.age2.spec.name == name
    root = data_dir / "identification"
    assert len(fixture["faces"]) >= 5
    for face in fixture["faces"]:
        image = read_image(root / face["path"])
        prepared = analyzer.prepare(image, analyzer.detect(image, photo=True)[0])
        est = analyzer.age2.estimate(prepared.aligned[None], prepared.age_chip[None], analyzer.embed([prepared]))
        assert est.age is not None
        assert float(est.age[0]) == pytest.approx(face["age"], abs=0.02), face["path"]
        assert float(est.p_male[0]) == pytest.approx(face["p_male"], abs=1e-3), face["path"]


def test_embedding_model_needs_its_embedder_and_the_embeddings(model_cache, test_images):
    cfg = load_config(None, ["models.set=custom", "models.embedder=sface"])  # age2 stays agesex_utk_v2
    with pytest.raises(ModelError, match=r"agesex_utk_v2 reads edgeface_xs embeddings, but the embedder is sface"):
        FaceAnalyzer(cfg, model_cache)
    analyzer = FaceAnalyzer(load_config(), model_cache)
    assert analyzer.age2 is not None and analyzer.age2.needs_embedding
    img = cv2.imread(str(test_images / "obama_2012.jpg"))
    prepared = analyzer.prepare(img, analyzer.detect(img)[0])
    with pytest.raises(ValueError, match="needs the 1 faces' embeddings"):
        analyzer.age2.estimate(prepared.aligned[None], prepared.age_chip[None])
    # without embeddings the analyzer computes them: the same ages as with the ones it was given
    given = analyzer.estimate_age_sex([prepared], analyzer.embed([prepared]))[0]
    computed = analyzer.estimate_age_sex([prepared])[0]
    assert given is not None and computed is not None and float(given[0]) == pytest.approx(float(computed[0]))


@pytest.mark.parametrize(("model_set", "sex_model", "age2_model"),
                         [("default", "gender_v1", "agesex_utk_v2"), ("licence_clean", "gender_v1", None)])
def test_analyzer_fills_p_male_only_for_embedded_faces(model_set, sex_model, age2_model, model_cache, test_images):
    analyzer = FaceAnalyzer(load_config(None, [f"models.set={model_set}"]), model_cache)
    ids = analyzer.model_identities()
    assert ids["sex"].name == sex_model
    assert (ids["age2"].name if "age2" in ids else None) == age2_model
    img = cv2.imread(str(test_images / "obama_2012.jpg"))
    tiny = cv2.resize(img, None, fx=0.07, fy=0.07, interpolation=cv2.INTER_AREA)  # fails the size gate
    full, small = analyzer.analyze_batch([img, tiny], gate=True)
    assert len(full) == 1 and full[0].has_embedding
    assert full[0].p_male is not None and full[0].p_male > 0.8  # a man
    assert full[0].age is not None and 25 < full[0].age < 80
    assert small and not small[0].has_embedding
    assert small[0].p_male is None and small[0].age is None
    woman = analyzer.analyze(cv2.imread(str(test_images / "astronaut.jpg")))[0]  # Eileen Collins
    assert woman.p_male is not None and woman.p_male < 0.5


def test_sex_off_leaves_p_male_none(model_cache, test_images):
    analyzer = FaceAnalyzer(load_config(None, ["models.sex=null"]), model_cache)
    assert analyzer.sex is None and analyzer.age2 is not None
    face = analyzer.analyze(cv2.imread(str(test_images / "obama_2012.jpg")))[0]
    assert face.p_male is None and face.age is not None


def test_sex_and_second_age_come_from_their_own_models(model_cache, test_images):
    """p_male is gender_v1's, the age mixes agesex_utk_v2 in; age2=null leaves age-v1's age alone."""
    img = cv2.imread(str(test_images / "obama_2012.jpg"))
    both = FaceAnalyzer(load_config(), model_cache)
    assert both.sex is not None and both.age2 is not None and both.age is not None
    prepared = both.prepare(img, both.detect(img, photo=True)[0])
    ages, p_male = both.estimate_age_sex([prepared])
    assert ages is not None and p_male is not None
    chips = prepared.aligned[None], prepared.age_chip[None]
    gender = both.sex.estimate(*chips)
    assert gender.age is None and float(p_male[0]) == pytest.approx(float(gender.p_male[0]))
    own = both.age2.estimate(*chips, both.embed([prepared]))
    v1 = float(both.age.estimate(prepared.age_chip[None])[0])
    assert own.age is not None and v1 >= 16  # an adult: the mix applies
    assert float(ages[0]) == pytest.approx(0.75 * float(own.age[0]) + 0.25 * v1, abs=1e-4)
    assert float(own.p_male[0]) != pytest.approx(float(p_male[0]), abs=1e-6)  # not the age model's sex
    alone = FaceAnalyzer(load_config(None, ["models.age2=null"]), model_cache)
    assert alone.age2 is None and "age2" not in alone.model_identities()
    ages_alone, p_alone = alone.estimate_age_sex([prepared])
    assert ages_alone is not None and float(ages_alone[0]) == pytest.approx(v1, abs=1e-4)
    assert p_alone is not None and float(p_alone[0]) == pytest.approx(float(p_male[0]))


def test_one_model_for_sex_and_second_age_runs_once(model_cache):
    cfg = load_config(None, ["models.set=custom", "models.sex=agesex_utk_v1", "models.age2=agesex_utk_v1"])
    analyzer = FaceAnalyzer(cfg, model_cache)
    assert analyzer.age2 is analyzer.sex and analyzer.sex is not None
    assert analyzer.model_identities()["sex"].name == analyzer.model_identities()["age2"].name == SPEC.name
    assert not analyzer.sex.needs_embedding


def test_second_age_model_must_estimate_age(model_cache):
    cfg = load_config(None, ["models.set=custom", "models.age2=gender_v1"])
    with pytest.raises(ModelError, match=r"models.age2=gender_v1 is a sex model"):
        FaceAnalyzer(cfg, model_cache)


def test_sex_accuracy_bands():
    p = [0.9, 0.2, 0.6, 0.4, 0.7, 0.1]
    y = [1, 0, 0, 1, -1, 0]
    age = [30, 40, 5, 8, 15, 16]
    acc = sex_accuracy(p, y, age)
    assert acc == {"overall": pytest.approx(3 / 5), "0-12": 0.0, "13-17": 1.0, "adult": 1.0}
    assert sex_accuracy([], [], []) == {"overall": None, "0-12": None, "13-17": None, "adult": None}
    with pytest.raises(ValueError, match="equal-length"):
        sex_accuracy([0.5], [1, 0], [3])


def test_sex_confidence_for_precision():
    # 30 confident right answers, then 10 less confident of which 5 wrong
    p = np.concatenate([np.full(30, 0.99), np.linspace(0.6, 0.7, 10)])
    y = np.concatenate([np.ones(30), np.r_[np.ones(5), np.zeros(5)]]).astype(int)
    res = sex_confidence_for_precision(p, y, precision=0.99, min_support=20)
    assert res["threshold"] == pytest.approx(0.99) and res["support"] == 30
    assert res["coverage"] == pytest.approx(30 / 40) and res["precision"] == 1.0
    assert sex_confidence_for_precision(p[30:], y[30:], 0.99, 20)["threshold"] is None


def test_mix_ages():
    a, b = np.array([10.0, 40.0], np.float32), np.array([20.0, 20.0], np.float32)
    assert mix_ages(a, b, 0.5).tolist() == [15.0, 30.0]
    assert mix_ages(a, b, 1.0).tolist() == [20.0, 20.0]
    assert mix_ages(a, None, 0.5) is a
    assert mix_ages(None, b, 0.5).tolist() == [20.0, 20.0]
    assert mix_ages(None, None, 0.5) is None
