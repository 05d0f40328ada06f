"""FairFace (ResNet34, strict load of the published layout), its preprocessing, FaceChain's subject
table, one decision for several selfies, and the subject words reaching the prompt encoder."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facechain import registry
from facechain.annotators.fairface import (
    MEAN,
    STD,
    BasicBlock,
    FairFace,
    FairFaceNet,
    FairFacePrediction,
    load_strict,
    mean_prediction,
    preprocess,
)
from facechain.engine import Engine, EngineConfig, PortraitRequest, StyleSpec, _load_fairface
from facechain.errors import WeightsInvalid
from facechain.faces import ARCFACE_TEMPLATE_112
from facechain.inpaint import INPAINT_NEGATIVE, INPAINT_PROMPT, InpaintRequest
from facechain.prompts import (
    DEFAULT_NEGATIVE,
    SUBJECTS,
    SubjectPrompt,
    subject_from_prediction,
    subject_prompt,
)

MODEL_DIR = "damo/cv_resnet34_face-attribute-recognition_fairface"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def published_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of the published file and its shape, written out from the reference table
    (torchvision ResNet34 names), independently of the network code under test."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, channels: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for block in range(blocks):
            prefix = f"layer{layer}.{block}"
            first_in = inplanes if block == 0 else planes
            shapes[f"{prefix}.conv1.weight"] = (planes, first_in, 3, 3)
            bn(f"{prefix}.bn1", planes)
            shapes[f"{prefix}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{prefix}.bn2", planes)
            if block == 0 and layer > 1:
                shapes[f"{prefix}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                bn(f"{prefix}.downsample.1", planes)
        inplanes = planes
    shapes["fc.weight"] = (18, 512)
    shapes["fc.bias"] = (18,)
    return shapes


def synthetic_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the published layout; BatchNorm variances positive."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in published_shapes().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith(".weight") and len(shape) == 1:
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """The synthetic file saved as ModelScope lays it out, imported into a model cache."""
    src = tmp_path_factory.mktemp("src")
    cache = tmp_path_factory.mktemp("cache")
    state = synthetic_state_dict()
    target = src / MODEL_DIR / "pytorch_model.pt"
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    registry.download_models(cache, only=["fairface"], local_source=src)
    return cache, state


def face(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)


class TestLoading:
    def test_published_layout_figures(self) -> None:
        shapes = published_shapes()
        assert len(shapes) == 218
        assert sum(k.endswith("num_batches_tracked") for k in shapes) == 36
        params = sum(
            int(np.prod(s))
            for k, s in shapes.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
        assert params == 21_293_906
        net = FairFaceNet()
        assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == shapes
        assert sum(p.numel() for p in net.parameters()) == 21_293_906

    def test_strict_load_through_the_registry(
        self, imported: tuple[Path, dict[str, torch.Tensor]]
    ) -> None:
        cache, state = imported
        path = registry.resolve(registry.FAIRFACE, cache)
        assert path.name == "pytorch_model.pt"
        model = FairFace.from_file(path, "cpu")
        loaded = model.net.state_dict()
        for key in ("conv1.weight", "layer3.0.downsample.0.weight", "layer4.2.bn2.running_var"):
            assert torch.equal(loaded[key], state[key])
        assert not model.net.training
        [pred] = model.predict([face(0)])
        assert pred.gender_probs.shape == (2,)
        assert pred.age_probs.shape == (9,)
        assert pred.gender_probs.sum() == pytest.approx(1.0, abs=1e-5)
        assert pred.age_probs.sum() == pytest.approx(1.0, abs=1e-5)

    def test_engine_loads_it_on_the_real_profile(
        self, imported: tuple[Path, dict[str, torch.Tensor]]
    ) -> None:
        cache, _ = imported
        model = _load_fairface(EngineConfig(profile="real", models_dir=cache), torch.device("cpu"))
        assert isinstance(model, FairFace)

    def test_missing_weights_mean_no_prefix_and_a_warning(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        config = EngineConfig(profile="real", models_dir=tmp_path)
        with caplog.at_level(logging.WARNING, logger="facechain.engine"):
            assert _load_fairface(config, torch.device("cpu")) is None
        assert "fairface weights missing: portraits get no subject prefix" in caplog.text
        assert "facechain-bot models download" in caplog.text

    def test_missing_key_is_refused(self) -> None:
        state = synthetic_state_dict()
        del state["layer3.2.conv1.weight"]
        with pytest.raises(WeightsInvalid, match=r"1 missing \['layer3.2.conv1.weight'\]"):
            load_strict(FairFaceNet(), state)

    def test_extra_key_is_refused(self) -> None:
        state = synthetic_state_dict()
        state["fc2.weight"] = torch.zeros(2, 512)
        with pytest.raises(WeightsInvalid, match=r"1 unexpected \['fc2.weight'\]"):
            load_strict(FairFaceNet(), state)

    def test_other_shape_and_prefixed_keys_are_refused(self) -> None:
        state = synthetic_state_dict()
        state["fc.weight"] = torch.zeros(1000, 512)
        with pytest.raises(WeightsInvalid, match=r"another shape \['fc.weight'\]"):
            load_strict(FairFaceNet(), state)
        prefixed = {f"module.{k}": v for k, v in synthetic_state_dict().items()}
        # (the 36 num_batches_tracked are not counted missing: absent keys, no metadata)
        with pytest.raises(WeightsInvalid, match=r"182 missing .*218 unexpected \['module\.bn1"):
            load_strict(FairFaceNet(), prefixed)

    def test_num_batches_tracked_absent_only_as_torch_allows(self) -> None:
        state = synthetic_state_dict()
        plain = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        load_strict(FairFaceNet(), plain)  # no version metadata: an old-style checkpoint
        # A dict saved from a current module carries BatchNorm version 2: then they must be there.
        versioned = FairFaceNet().state_dict()
        trimmed = OrderedDict(
            (k, v) for k, v in versioned.items() if not k.endswith("num_batches_tracked")
        )
        trimmed._metadata = versioned._metadata  # type: ignore[attr-defined]
        with pytest.raises(WeightsInvalid, match="num_batches_tracked"):
            load_strict(FairFaceNet(), trimmed)

    def test_not_a_state_dict(self, tmp_path: Path) -> None:
        path = tmp_path / "pytorch_model.pt"
        torch.save([torch.zeros(1)], path)
        with pytest.raises(WeightsInvalid, match="not tensors"):
            FairFace.from_file(path)
        path.write_bytes(b"not a checkpoint")
        with pytest.raises(WeightsInvalid, match="not a tensor file"):
            FairFace.from_file(path)


class TestPreprocess:
    def test_uniform_face_exact_values(self) -> None:
        crop = np.empty((112, 112, 3), np.uint8)
        crop[...] = (200, 100, 7)
        x = preprocess(crop)
        assert x.shape == (3, 224, 224)
        assert x.dtype == torch.float32
        expected = [(200 / 255 - 0.485) / 0.229, (100 / 255 - 0.456) / 0.224]
        expected.append((7 / 255 - 0.406) / 0.225)
        for channel, value in enumerate(expected):  # RGB order kept
            assert torch.allclose(x[channel], torch.full((224, 224), value), atol=1e-6)

    def test_bilinear_upscale_requantised(self) -> None:
        # A black|white step at column 56: bilinear x2 puts output column 111 at input 55.75
        # (0.25 of white -> 63.75) and 112 at 56.25 (191.25); PIL rounds back to uint8.
        crop = np.zeros((112, 112, 3), np.uint8)
        crop[:, 56:] = 255
        x = preprocess(crop)
        mean = torch.tensor(MEAN).view(3, 1, 1)
        std = torch.tensor(STD).view(3, 1, 1)
        pixels = ((x * std + mean) * 255).round()
        row = pixels[0, 100]
        assert torch.all(row[:111] == 0)
        assert row[111] == 64
        assert row[112] == 191
        assert torch.all(row[113:] == 255)
        assert torch.equal(pixels[:, 0], pixels[:, 223])  # the columns step, not the rows
        assert float(((x * std + mean) * 255).mean()) == pytest.approx(127.5, abs=1e-3)

    def test_bad_input(self) -> None:
        with pytest.raises(ValueError, match="uint8"):
            preprocess(np.zeros((112, 112, 3), np.float32))
        with pytest.raises(ValueError, match="uint8"):
            preprocess(np.zeros((112, 112), np.uint8))

    def test_template_is_the_shifted_arcface_one(self) -> None:
        # ModelScope's align_face template: the 96x112 points shifted +8 in x.
        reference = np.array(
            [
                [30.2946 + 8, 51.6963],
                [65.5318 + 8, 51.5014],
                [48.0252 + 8, 71.7366],
                [33.5493 + 8, 92.3655],
                [62.7299 + 8, 92.2041],
            ]
        )
        np.testing.assert_allclose(ARCFACE_TEMPLATE_112, reference, atol=1e-4)


class TestNetwork:
    def test_basic_block_matches_a_hand_written_reference(self) -> None:
        torch.manual_seed(0)
        block = BasicBlock(8, 16, stride=2)
        for module in block.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.2, 0.2)
        block.eval()
        x = torch.randn(2, 8, 14, 14)

        def bn(t: torch.Tensor, m: torch.nn.BatchNorm2d) -> torch.Tensor:
            shape = (1, -1, 1, 1)
            scale = m.weight.view(shape) / torch.sqrt(m.running_var.view(shape) + 1e-5)
            return (t - m.running_mean.view(shape)) * scale + m.bias.view(shape)

        assert block.downsample is not None
        out = F.relu(bn(F.conv2d(x, block.conv1.weight, stride=2, padding=1), block.bn1))
        out = bn(F.conv2d(out, block.conv2.weight, padding=1), block.bn2)
        shortcut = bn(F.conv2d(x, block.downsample[0].weight, stride=2), block.downsample[1])
        expected = F.relu(out + shortcut)
        with torch.no_grad():
            actual = block(x)
        assert actual.shape == (2, 16, 7, 7)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)

    def test_identity_shortcut_when_shapes_match(self) -> None:
        assert BasicBlock(16, 16).downsample is None

    def test_batched_equals_one_by_one(self) -> None:
        model = FairFace.random(seed=1, width=8)
        faces = [face(i) for i in range(3)]
        batched = model.predict(faces)
        for crop, pred in zip(faces, batched, strict=True):
            [alone] = model.predict([crop])
            np.testing.assert_allclose(alone.gender_probs, pred.gender_probs, atol=1e-5)
            np.testing.assert_allclose(alone.age_probs, pred.age_probs, atol=1e-5)
        assert model.predict([]) == []

    def test_random_is_seeded(self) -> None:
        a = FairFace.random(seed=3, width=8).predict([face(0)])[0]
        b = FairFace.random(seed=3, width=8).predict([face(0)])[0]
        assert np.array_equal(a.gender_probs, b.gender_probs)


# FaceChain's table (reference §2.4), cell by cell: (gender, age bucket) -> prefix, suffix.
MAN, WOMAN = "a handsome man, ", "a beautiful woman, "
TABLE = {
    (0, 0): ("a boy, children, ", ""),
    (0, 1): ("a boy, children, ", ""),
    (0, 2): (MAN + "20-year-old, ", ", children"),
    (0, 3): (MAN + "25-year-old, ", ", children"),
    (0, 4): (MAN + "35-year-old, ", ", children"),
    (0, 5): ("a mature man, ", ", children"),
    (0, 6): ("a mature man, ", ", children"),
    (0, 7): ("a mature man, ", ", children"),
    (0, 8): ("a mature man, ", ", children"),
    (1, 0): ("a girl, children, ", ""),
    (1, 1): ("a girl, children, ", ""),
    (1, 2): (WOMAN, ""),
    (1, 3): (WOMAN, ""),
    (1, 4): (WOMAN, ""),
    (1, 5): ("a mature woman, ", ""),
    (1, 6): ("a mature woman, ", ""),
    (1, 7): ("a mature woman, ", ""),
    (1, 8): ("a mature woman, ", ""),
}


class TestSubjectTable:
    @pytest.mark.parametrize(("cell", "expected"), list(TABLE.items()))
    def test_every_cell(self, cell: tuple[int, int], expected: tuple[str, str]) -> None:
        subject = subject_from_prediction(*cell)
        assert (subject.prefix, subject.negative_suffix) == expected

    def test_subject_names_follow_attr_idx(self) -> None:
        names = [subject_from_prediction(g, a).subject for g, a in ((0, 0), (1, 0), (0, 3))]
        names += [subject_from_prediction(g, a).subject for g, a in ((1, 3), (0, 7), (1, 7))]
        assert tuple(names) == SUBJECTS

    def test_out_of_range(self) -> None:
        for cell in ((2, 0), (0, 9), (-1, 3)):
            with pytest.raises(ValueError, match="out of range"):
                subject_from_prediction(*cell)

    def test_user_choice_has_no_age_phrase(self) -> None:
        assert subject_prompt("man") == SubjectPrompt("man", MAN, ", children")
        assert subject_prompt("woman") == SubjectPrompt("woman", WOMAN, "")
        assert subject_prompt("man", "25-year-old, ").prefix == MAN + "25-year-old, "
        with pytest.raises(ValueError, match="does not apply"):
            subject_prompt("woman", "25-year-old, ")
        with pytest.raises(ValueError, match="unknown subject"):
            subject_prompt("queen")  # type: ignore[arg-type]


def pred(male: float, ages: dict[int, float]) -> FairFacePrediction:
    age = np.full(9, 0.0)
    for bucket, p in ages.items():
        age[bucket] = p
    return FairFacePrediction(np.array([male, 1.0 - male]), age)


class StubFairFace:
    """Canned predictions, one per crop, in order."""

    def __init__(self, predictions: list[FairFacePrediction]) -> None:
        self.predictions = predictions
        self.seen: list[np.ndarray] = []

    def predict(self, crops: list[np.ndarray]) -> list[FairFacePrediction]:
        self.seen.extend(crops)
        return self.predictions[: len(crops)]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_config(EngineConfig(profile="tiny", steps=1, batch_size=1))


class TestSeveralSelfies:
    def test_probabilities_are_averaged_then_argmaxed(self) -> None:
        # Two selfies lean a little "woman, 20-29", one is clearly "man, 30-39": the per-selfie
        # majority would say woman; the averaged probabilities say man (0.65 male), 30-39.
        preds = [pred(0.45, {3: 0.4, 4: 0.35}), pred(0.45, {3: 0.4, 4: 0.35})]
        preds.append(pred(1.0, {4: 1.0}))
        mean = mean_prediction(preds)
        assert mean.gender == 0
        assert mean.age == 4
        assert [p.gender for p in preds] == [1, 1, 0]

    def test_engine_decides_once_for_the_set(self, engine: Engine) -> None:
        preds = [pred(0.45, {3: 0.4, 4: 0.35}), pred(0.45, {3: 0.4, 4: 0.35})]
        preds.append(pred(1.0, {4: 1.0}))
        stub = StubFairFace(preds)
        previous, engine.fairface = engine.fairface, stub  # type: ignore[assignment]
        try:
            subject = engine.subject_for([face(0), face(1), face(2)])
        finally:
            engine.fairface = previous
        assert subject == subject_prompt("man", "35-year-old, ")
        assert len(stub.seen) == 3
        with pytest.raises(ValueError, match="no predictions"):
            mean_prediction([])

    def test_tiny_engine_has_a_seeded_model_and_none_means_no_subject(
        self, engine: Engine
    ) -> None:
        subject = engine.subject_for([face(0)])
        assert subject is not None
        assert subject == engine.subject_for([face(0)])
        assert engine.subject_for([]) is None
        previous, engine.fairface = engine.fairface, None
        try:
            assert engine.subject_for([face(0)]) is None
        finally:
            engine.fairface = previous


class TestPromptsReachTheEncoder:
    def test_prefix_and_negative_suffix(
        self, engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        pipe = engine.resident("film").pipe
        calls: list[tuple[str, str]] = []
        original = pipe.encode_prompt

        def spy(prompt, device, num, cfg, negative_prompt=None, **kw):  # type: ignore[no-untyped-def]
            calls.append((prompt, negative_prompt))
            return original(prompt, device, num, cfg, negative_prompt=negative_prompt, **kw)

        monkeypatch.setattr(pipe, "encode_prompt", spy)
        subject = subject_prompt("man", "25-year-old, ")
        style = StyleSpec(name="t", base_model="film", prompt="armor", lora_weight=0.0)
        engine.portraits(
            PortraitRequest(
                selfies=[face(0)],
                style=style,
                seed=1,
                prompt_prefix=subject.prefix,
                negative_suffix=subject.negative_suffix,
            )
        )
        # The pipeline's own call passes the ready embeddings (prompt None) back through it.
        [(prompt, negative)] = [c for c in calls if c[0] is not None]
        assert prompt.startswith("a handsome man, 25-year-old, raw photo, masterpiece, chinese, ")
        assert negative == DEFAULT_NEGATIVE + ", children"

    def test_inpaint_texts_per_face(self) -> None:
        woman, man = subject_prompt("woman"), subject_prompt("mature_man")
        request = InpaintRequest(
            template=np.zeros((8, 8, 3), np.uint8),
            faces=(1, 2, 3),
            prompt_prefix="a boy, children, ",
            subjects=[woman, man, None],
        )
        assert request.texts(0) == (WOMAN + INPAINT_PROMPT, INPAINT_NEGATIVE)
        assert request.texts(1) == (
            "a mature man, " + INPAINT_PROMPT,
            INPAINT_NEGATIVE + ", children",
        )
        assert request.texts(2) == ("a boy, children, " + INPAINT_PROMPT, INPAINT_NEGATIVE)
        single = InpaintRequest(
            template=np.zeros((8, 8, 3), np.uint8),
            selfies=[face(0)],
            prompt_prefix=man.prefix,
            negative_suffix=man.negative_suffix,
        )
        assert single.texts(0) == (
            "a mature man, " + INPAINT_PROMPT,
            INPAINT_NEGATIVE + ", children",
        )
        bad = InpaintRequest(
            template=np.zeros((8, 8, 3), np.uint8), selfies=[face(0)], faces=(1,), subjects=[]
        )
        with pytest.raises(ValueError, match="subjects"):
            bad.identity_sets()
