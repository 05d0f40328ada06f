"""The FACT portrait engine: resident SD1.5 pipelines with the face adapter, style LoRA hot-swap.

Defaults, chosen against FaceChain's (reference §3):

- Scheduler: DPM++ 2M Karras, 30 steps (FaceChain: PNDM, 50 steps). DPM++ 2M is the usual
  SD1.5 sampler for 20-30 steps at a quality comparable to PNDM's at 50, so an image costs 40 %
  fewer UNet calls; `pndm` (with steps=50 for FaceChain parity) and `ddim` stay selectable.
- Guidance 7.0 and adapter scale 0.5: FaceChain's txt2img values, kept (the adapter was trained
  and tuned for them; a higher scale copies the selfie's expression and lighting).
- 512x512 output, CFG on the face too (negative face tokens = projector(zeros)), as FaceChain.
- ControlNet runs only when a pose map is given; FaceChain always runs it and sets its scale to 0
  without a pose, which gives the same images but pays a ControlNet pass at every step.
- Pose photos (`extract_pose`): letterboxed into 512x512 and turned into a body + hands map
  by the OpenPose annotator (`facechain.annotators.openpose`), as FaceChain does; the letterbox
  is centred where FaceChain's `img_pad` puts a wide photo at the bottom. A photo with nobody
  in it is refused (FaceChain would paint with an empty map).
- Styles without their own LoRA get the default style LoRA, as FaceChain does.
- Seeds: every candidate i has seed `seed + i` and its own CPU generator, so its initial noise
  is the same alone or in any batch, on any device (FaceChain: no seed).
- Several selfies: their projected face tokens are averaged into one 16-token face (FaceChain
  concatenates 16 tokens per face, but always passes one face).
- Ranking: `num_candidates` images are generated and the `num_images` best by the caller's ID
  similarity are kept (FaceChain: no ranking). A likeness floor never empties a set: portraits
  under `min_similarity` fill it when too few pass, flagged `low_likeness` for the caller.
- Subject prompt: FairFace (`facechain.annotators.fairface`) classifies the selfies' aligned
  crops and FaceChain's table (`facechain.prompts.subject_from_prediction`) turns gender and age
  into `a handsome man, 25-year-old, ` style words and the `, children` negative suffix
  (`Engine.subject_for`; the caller puts them in `prompt_prefix` / `negative_suffix`). Several
  selfies: one decision from the averaged probabilities. Without the FairFace weights there is
  no subject prefix (a warning at build); FaceChain would not start.
- Safety: every candidate is checked by the SD1.5 safety checker (`facechain.safety`, scores
  only) before ranking; a flagged one is dropped and the set is filled from the spare
  candidates, never blacked out (diffusers' pipeline returns black images; FaceChain turned
  the checker off). Fewer safe candidates than `num_images`: a smaller set, with
  `PortraitSet.held_back` saying how many are missing; none safe: `SafetyFlagged`. Template
  inpainting (`inpaint`) and HD results (`check_images`) are checked the same way. Without the
  checker's weights the engine is not built (`safety_required`, default) or runs unchecked.
- Face fusion and skin retouching (FaceChain post-processing) are not part of this engine.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    PNDMScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from facechain import fastpath, registry, tiny
from facechain.adapter import (
    TOKENS_PER_FACE,
    get_adapter_scale,
    hide_face_tokens,
    load_face_adapter,
    set_adapter_scale,
)
from facechain.annotators.fairface import FairFace, mean_prediction
from facechain.errors import (
    Cancelled,
    NoPersonInPose,
    PoseAnnotatorMissing,
    SafetyFlagged,
    WeightsMissing,
)
from facechain.faces import Face, align_face, head_mask
from facechain.lora import LoRAWeights, merged_lora, parse_lora
from facechain.models.projector import FaceProjector
from facechain.models.transface import TransFaceViT, faces_to_tensor, load_transface
from facechain.prompts import (
    DEFAULT_NEGATIVE,
    SubjectPrompt,
    Template,
    build_prompt,
    subject_from_prediction,
)
from facechain.safety import ImageChecker, SafetyChecker, SafetyVerdict

if TYPE_CHECKING:
    from facechain.annotators.openpose import OpenposeAnnotator
    from facechain.inpaint import InpaintRequest

logger = logging.getLogger(__name__)

BaseModel = Literal["film", "majic"]
SchedulerName = Literal["dpmpp_2m_karras", "pndm", "ddim"]
ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
ScorerFn = Callable[[Image.Image], float]

_BASE_SPECS = {"film": registry.BASE_FILM, "majic": registry.BASE_MAJIC}
_ADAPTER_SPECS = {"film": registry.ADAPTER_FILM, "majic": registry.ADAPTER_MAJIC}
# Distinct seeds so the two tiny bases (and the shared tiny parts) are different networks.
_TINY_SEEDS = {"film": 1, "majic": 2}
_TINY_ANNOTATOR_SEED = 8
_TINY_SAFETY_SEED = 11
# FaceChain's pose maps are 512 x 512 (`img_pad` to 512, annotator, `.resize((512, 512))`).
POSE_MAP_SIZE = 512


@dataclass
class EngineConfig:
    """How the engine is built and its generation defaults."""

    profile: Literal["real", "tiny"] = "real"
    models_dir: Path = Path("data/models")
    device: str = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    steps: int = 30
    guidance_scale: float = 7.0
    adapter_scale: float = 0.5
    scheduler: SchedulerName = "dpmpp_2m_karras"
    controlnet_scale: float = 1.0
    image_size: int | None = None
    batch_size: int = 4
    # Fast paths (`facechain.fastpath`), all off until measured on a GPU with bench/gpu.py:
    # channels-last UNet/VAE/ControlNet, fused q|k|v projections of the UNet's own attention,
    # torch.compile of the UNet (mode "reduce-overhead" adds CUDA graphs; backend "eager" or
    # "aot_eager" for CPU tests), fp32 re-decode of fp16 VAE images with NaN/inf.
    channels_last: bool = False
    fuse_qkv: bool = False
    compile_unet: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    vae_nan_guard: bool = False
    # The safety checker (`facechain.safety`): check what is painted; without its weights,
    # refuse to build (required) or run unchecked; the margin over diffusers' thresholds.
    safety_outputs: bool = True
    safety_required: bool = True
    safety_threshold: float = 0.0

    def torch_device(self) -> torch.device:
        """`auto` -> CUDA when available, else CPU."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        """`auto` -> fp16 on CUDA, fp32 elsewhere; the tiny profile always runs fp32."""
        if self.profile == "tiny":
            return torch.float32
        if self.dtype == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[
            self.dtype
        ]

    def output_size(self) -> int:
        """Image side in pixels: 512 for real weights, 64 for the tiny profile unless set."""
        if self.image_size is not None:
            return self.image_size
        return 64 if self.profile == "tiny" else 512


@dataclass(frozen=True)
class StyleSpec:
    """A style: base model, prompt fragment and template, LoRA (None = the default style LoRA)."""

    name: str
    base_model: BaseModel = "film"
    prompt: str = ""
    template: Template = "cloth"
    lora_path: Path | None = None
    lora_weight: float = 0.25


@dataclass
class PortraitRequest:
    """One portrait job.

    Args:
        selfies: aligned 112x112 RGB face crops (uint8 arrays or PIL), one identity.
        style: what to paint.
        pose: OpenPose-style control map (any size; letterboxed to square), or None.
        num_images: portraits to return.
        num_candidates: images to generate and rank (>= num_images; default num_images).
        seed: base seed (random when None); candidate i uses seed + i.
        scorer: ID similarity of a generated image to the user; needed for ranking.
        min_similarity: likeness floor; portraits under it are still returned when too few
            candidates pass, flagged `low_likeness` (a set is never refused for likeness).
        prompt_prefix: subject words put before the template (`SubjectPrompt.prefix`).
        negative_prompt: replaces FaceChain's default negative prompt.
        negative_suffix: appended to the negative prompt (`SubjectPrompt.negative_suffix`).
        steps, guidance_scale, adapter_scale: per-request overrides of the config defaults.
    """

    selfies: Sequence[np.ndarray | Image.Image]
    style: StyleSpec
    pose: Image.Image | None = None
    num_images: int = 1
    num_candidates: int | None = None
    seed: int | None = None
    scorer: ScorerFn | None = None
    min_similarity: float | None = None
    prompt_prefix: str = ""
    negative_prompt: str | None = None
    negative_suffix: str = ""
    steps: int | None = None
    guidance_scale: float | None = None
    adapter_scale: float | None = None


@dataclass
class Portrait:
    """A generated image, the seed that reproduces it and its ID similarity (None if unscored)."""

    image: Image.Image
    seed: int
    similarity: float | None = None
    # Under the request's `min_similarity`: kept only because too few candidates passed.
    low_likeness: bool = False


class PortraitSet(list[Portrait]):
    """What `portraits` returns: the portraits, plus the candidates the safety checker flagged.

    `held_back` is how many portraits the set lacks because too few candidates were safe."""

    def __init__(
        self,
        portraits: Sequence[Portrait] = (),
        flagged: Sequence[SafetyVerdict] = (),
        requested: int = 0,
        checked: int = 0,
    ) -> None:
        super().__init__(portraits)
        self.flagged = list(flagged)
        self.requested = requested
        # Candidates the safety checker looked at (0: there is no checker).
        self.checked = checked

    @property
    def held_back(self) -> int:
        """Portraits missing from the set because their candidates were flagged."""
        return max(0, self.requested - len(self)) if self.flagged else 0


@dataclass(frozen=True)
class PoseExtraction:
    """A pose photo's OpenPose map (body + hands, 512 x 512 RGB) and how many people it shows."""

    map: Image.Image
    people: int


@dataclass
class _Base:
    """One resident base model: its txt2img pipeline, a ControlNet view of it, its projector."""

    pipe: StableDiffusionPipeline
    pose_pipe: StableDiffusionControlNetPipeline
    projector: FaceProjector
    negative_tokens: torch.Tensor = field(repr=False)


def make_scheduler(name: SchedulerName, config: Any) -> SchedulerMixin:
    """Scheduler `name` built from a base model's scheduler config."""
    if name == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
        )
    if name == "pndm":
        return PNDMScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {name!r}")


def id_crop(image_rgb: np.ndarray, face: Face) -> np.ndarray:
    """FACT's identity crop: background blacked out around the head, then ArcFace-aligned.

    Args:
        image_rgb: (H, W, 3) uint8 RGB selfie.
        face: the detected subject (landmarks in the same pixels).

    Returns:
        (112, 112, 3) uint8 RGB crop for `PortraitRequest.selfies`.
    """
    # FaceChain masks with human parsing before aligning, so the encoder never sees background.
    mask = head_mask(image_rgb, face)[:, :, None] > 0
    return align_face(np.where(mask, image_rgb, 0).astype(np.uint8), face.landmarks)


def _load_fairface(config: EngineConfig, device: torch.device) -> FairFace | None:
    """The subject classifier: seeded and narrow for `tiny`; None when the real file is absent."""
    if config.profile == "tiny":
        return FairFace.random(seed=7, width=8, device=device)
    try:
        path = registry.resolve(registry.FAIRFACE, config.models_dir)
    except WeightsMissing:
        logger.warning(
            "fairface weights missing: portraits get no subject prefix; run %s",
            registry.DOWNLOAD_COMMAND,
        )
        return None
    return FairFace.from_file(path, device)


def _load_safety(
    config: EngineConfig, device: torch.device, dtype: torch.dtype
) -> ImageChecker | None:
    """The safety checker: tiny never flags (`SafetyChecker.random`); the real one from its
    published folder. Missing weights: WeightsMissing when required, else None and a warning."""
    if not config.safety_outputs:
        return None
    if config.profile == "tiny":
        return SafetyChecker.random(_TINY_SAFETY_SEED, device, config.safety_threshold)
    try:
        folder = registry.resolve(registry.SAFETY_CHECKER, config.models_dir)
    except WeightsMissing as exc:
        if config.safety_required:
            raise WeightsMissing(
                f"the safety checker is required (SAFETY_REQUIRED=true) and {exc}"
            ) from exc
        logger.warning(
            "safety checker weights missing and SAFETY_REQUIRED=false: portraits are NOT "
            "checked; run %s",
            registry.DOWNLOAD_COMMAND,
        )
        return None
    return SafetyChecker.from_dir(folder, device, dtype, config.safety_threshold)


def letterbox(image: Image.Image, size: int) -> Image.Image:
    """Fit an image into a black size x size square, centred, aspect kept."""
    image = image.convert("RGB")
    scale = size / max(image.size)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    canvas = Image.new("RGB", (size, size))
    canvas.paste(
        image.resize((w, h), Image.Resampling.BILINEAR), ((size - w) // 2, (size - h) // 2)
    )
    return canvas


def pose_pad(image: Image.Image, size: int) -> Image.Image:
    """FaceChain's pose letterbox (`img_pad`) into a black size x size square, pixel for pixel.

    Taller than wide (relative to the square): fit the height, pad left and right evenly (the odd
    column on the right). Otherwise: fit the width and pad the top only, so the photo sits on the
    bottom edge. As there, the new side is truncated (`int(w / (h / size))`) and the resize uses
    Pillow's default resampling (BICUBIC); a side that would truncate to 0 is kept at 1 pixel
    (FaceChain would fail on it).
    """
    image = image.convert("RGB")
    if image.height / float(size) >= image.width / float(size):
        w = max(1, int(image.width / (image.height / float(size))))
        resized = image.resize((w, size), Image.Resampling.BICUBIC)
        offset = (int((size - w) / 2), 0)
    else:
        h = max(1, int(image.height / (image.width / float(size))))
        resized = image.resize((size, h), Image.Resampling.BICUBIC)
        offset = (0, size - h)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(resized, offset)
    return canvas


class Engine:
    """Resident FACT engine; build once with `from_config`, then call `portraits` per job."""

    def __init__(
        self,
        config: EngineConfig,
        transface: TransFaceViT,
        controlnet: ControlNetModel,
        default_lora: LoRAWeights,
        fairface: FairFace | None = None,
        safety: ImageChecker | None = None,
    ) -> None:
        self.config = config
        self.device = config.torch_device()
        self.dtype = config.torch_dtype(self.device)
        self.transface = transface.to(self.device)
        self.controlnet = controlnet
        if config.channels_last:
            fastpath.set_channels_last([controlnet])
        self.default_lora = default_lora
        # None: no subject prefix (the weights are missing).
        self.fairface = fairface
        # None: nothing painted is checked (SAFETY_OUTPUTS=off, or weights missing and allowed).
        self.safety = safety
        self._bases: dict[str, _Base] = {}
        # The OpenPose annotator is built on first use (`pose_annotator`); None = unavailable.
        self._pose_annotator: OpenposeAnnotator | None = None
        self._pose_annotator_built = False
        self._pose_annotator_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: EngineConfig) -> Engine:
        """Load the shared parts (TransFace, ControlNet, default LoRA); bases load on first use."""
        device = config.torch_device()
        dtype = config.torch_dtype(device)
        # First: a required checker that is missing stops the build before the big loads, and
        # the worker's reason names it.
        safety = _load_safety(config, device, dtype)
        if config.profile == "tiny":
            transface = tiny.transface(seed=3)
            controlnet = tiny.controlnet(tiny.unet(seed=4), seed=4)
            lora = parse_lora(tiny.style_lora(tiny.unet(seed=0), tiny.text_encoder(seed=0), 5))
        else:
            models = config.models_dir
            transface = load_transface(registry.resolve(registry.TRANSFACE, models))
            controlnet = ControlNetModel.from_pretrained(
                registry.resolve(registry.CONTROLNET_OPENPOSE, models), dtype=dtype
            )
            lora = parse_lora(registry.resolve(registry.DEFAULT_STYLE_LORA, models))
        controlnet = controlnet.to(device).eval()
        # The ControlNet is shared by both bases and always sees [text; face] contexts.
        hide_face_tokens(controlnet, TOKENS_PER_FACE)
        logger.info("engine (%s) on %s/%s", config.profile, device, dtype)
        return cls(config, transface, controlnet, lora, _load_fairface(config, device), safety)

    @property
    def checking(self) -> bool:
        """Whether painted images go through a safety checker."""
        return self.safety is not None

    def set_safety_checker(self, checker: ImageChecker | None) -> None:
        """Check with this checker (None: check nothing); for tests and benchmarks."""
        self.safety = checker

    def check_images(self, images: Sequence[Image.Image]) -> list[SafetyVerdict]:
        """The safety checker's verdicts on painted images (all safe when there is none)."""
        if self.safety is None:
            return [SafetyVerdict(False, float("-inf"))] * len(images)
        verdicts = self.safety.check(images)
        if len(verdicts) != len(images):
            raise ValueError(f"{len(verdicts)} safety verdicts for {len(images)} images")
        return verdicts

    def subject_for(self, aligned_faces: Sequence[np.ndarray]) -> SubjectPrompt | None:
        """FaceChain's subject words for one person, or None without a FairFace model.

        Args:
            aligned_faces: (112, 112, 3) uint8 RGB ArcFace crops of the same person, unmasked
                (`facechain.faces.align_face`); probabilities are averaged, then argmax.
        """
        if self.fairface is None or not aligned_faces:
            return None
        prediction = mean_prediction(self.fairface.predict(aligned_faces))
        subject = subject_from_prediction(prediction.gender, prediction.age)
        logger.info(
            "subject %s (gender %s, age %s, %d selfies)",
            subject.subject,
            np.round(prediction.gender_probs, 3).tolist(),
            np.round(prediction.age_probs, 3).tolist(),
            len(aligned_faces),
        )
        return subject

    def pose_annotator(self) -> OpenposeAnnotator | None:
        """The resident OpenPose annotator, built on first use; None when its weights are missing.

        The tiny profile gets seeded random weights of the full-size networks. Without the real
        weights, pose photos are refused (`PoseAnnotatorMissing`) and template inpainting draws
        its face keypoints from the 5 detected landmarks (`facechain.openpose`).
        """
        with self._pose_annotator_lock:
            if not self._pose_annotator_built:
                self._pose_annotator = self._load_pose_annotator()
                self._pose_annotator_built = True
            return self._pose_annotator

    def set_pose_annotator(self, annotator: OpenposeAnnotator | None) -> None:
        """Use this annotator (None: none) instead of building one; for tests and sharing."""
        with self._pose_annotator_lock:
            self._pose_annotator = annotator
            self._pose_annotator_built = True

    def _load_pose_annotator(self) -> OpenposeAnnotator | None:
        if self.config.profile == "tiny":
            from facechain.annotators.openpose import OpenposeAnnotator

            return OpenposeAnnotator.random(_TINY_ANNOTATOR_SEED, self.device)
        try:
            folder = registry.resolve(registry.OPENPOSE_ANNOTATOR, self.config.models_dir)
        except WeightsMissing:
            logger.warning(
                "openpose annotator weights missing: pose photos are refused, template faces "
                "use 5-landmark keypoints; run %s",
                registry.DOWNLOAD_COMMAND,
            )
            return None
        from facechain.annotators.openpose import OpenposeAnnotator

        annotator = OpenposeAnnotator.from_dir(folder, self.device)
        logger.info("openpose annotator loaded from %s", folder)
        return annotator

    def extract_pose(self, photo: Image.Image) -> PoseExtraction:
        """FaceChain's pose preprocessing: letterbox to 512 x 512, OpenPose body + hands.

        The photo is padded as FaceChain's `img_pad` does (`pose_pad`): a tall photo fills the
        height, centred; a wide one fills the width and sits at the bottom of the square (padding
        on top only), so the annotator sees people where FaceChain's does.

        Args:
            photo: a photo of one or more people (PIL, any mode and size).

        Returns:
            The 512 x 512 RGB skeleton map and the number of people found.

        Raises:
            PoseAnnotatorMissing: the annotator's weights are not installed.
            NoPersonInPose: nobody was found in the photo.
        """
        annotator = self.pose_annotator()
        if annotator is None:
            raise PoseAnnotatorMissing(
                f"pose photos need the OpenPose annotator; run {registry.DOWNLOAD_COMMAND}"
            )
        square = pose_pad(photo, POSE_MAP_SIZE)
        pose_map, people = annotator(np.asarray(square), include_body=True, include_hand=True)
        if not people:
            raise NoPersonInPose("no person found in the pose photo")
        pose_map = pose_map.convert("RGB")
        if pose_map.size != (POSE_MAP_SIZE, POSE_MAP_SIZE):
            pose_map = pose_map.resize((POSE_MAP_SIZE, POSE_MAP_SIZE))
        logger.info("pose photo: %d people found", len(people))
        return PoseExtraction(map=pose_map, people=len(people))

    def warmup(self, bases: Sequence[BaseModel] = ("film", "majic")) -> None:
        """Load base models now instead of on their first request."""
        for name in bases:
            self._base(name)

    def _base(self, name: BaseModel) -> _Base:
        """The resident base `name`, loading it on first use."""
        if name not in self._bases:
            self._bases[name] = self._load_base(name)
        return self._bases[name]

    def resident(self, name: BaseModel) -> _Base:
        """The resident base `name` (pipeline, projector, negative face tokens), loaded on use."""
        return self._base(name)

    def inpaint(
        self,
        request: InpaintRequest,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
    ) -> Image.Image:
        """Fixed-template inpainting (`facechain.inpaint`) on this engine's majic base."""
        from facechain.inpaint import TemplateInpainter

        image = TemplateInpainter.of(self).run(request, progress, cancel).image
        [verdict] = self.check_images([image])
        if verdict.flagged:
            raise SafetyFlagged("the template result was flagged by the safety checker", [verdict])
        return image

    def _load_base(self, name: BaseModel) -> _Base:
        cfg = self.config
        if cfg.profile == "tiny":
            seed = _TINY_SEEDS[name]
            unet = tiny.unet(seed)
            pipe = StableDiffusionPipeline(
                vae=tiny.vae(seed),
                text_encoder=tiny.text_encoder(seed),
                tokenizer=tiny.tokenizer(),
                unet=unet,
                scheduler=PNDMScheduler.from_config(tiny.SD15_SCHEDULER_CONFIG),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
            state_dict = tiny.adapter_state_dict(unet, seed)
            projector = tiny.projector()
        else:
            pipe = StableDiffusionPipeline.from_pretrained(
                registry.resolve(_BASE_SPECS[name], cfg.models_dir),
                dtype=self.dtype,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
                local_files_only=True,
            )
            state_dict = torch.load(
                registry.resolve(_ADAPTER_SPECS[name], cfg.models_dir),
                map_location="cpu",
                weights_only=True,
            )
            projector = FaceProjector()
        return self._assemble_base(name, pipe, state_dict, projector)

    def add_base(
        self,
        name: BaseModel,
        pipe: StableDiffusionPipeline,
        adapter_state: dict[str, torch.Tensor],
        projector: FaceProjector,
    ) -> None:
        """Make a plain SD1.5 pipeline the resident base `name`, with this FACT checkpoint.

        For benchmarks and tests that bring their own weights (random full-size ones in
        `bench/gpu.py`); the pipeline gets the engine's scheduler, device, adapter and fast paths
        exactly as a loaded base does.
        """
        self._bases[name] = self._assemble_base(name, pipe, adapter_state, projector)

    def _assemble_base(
        self,
        name: str,
        pipe: StableDiffusionPipeline,
        state_dict: dict[str, torch.Tensor],
        projector: FaceProjector,
    ) -> _Base:
        cfg = self.config
        pipe.scheduler = make_scheduler(cfg.scheduler, pipe.scheduler.config)
        if pipe.unet.dtype != self.dtype:
            pipe = pipe.to(dtype=self.dtype)
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        # The projector runs in fp32 beside TransFace (FaceChain's extractor is fp32 too).
        projector = projector.to(self.device)
        load_face_adapter(pipe.unet, state_dict, projector, scale=cfg.adapter_scale)
        projector.eval().requires_grad_(False)
        fastpath.apply(
            pipe.unet,
            pipe.vae,
            channels_last=cfg.channels_last,
            fuse=cfg.fuse_qkv,
            compile=cfg.compile_unet,
            compile_mode=cfg.compile_mode,
            compile_backend=cfg.compile_backend,
            vae_nan_guard=cfg.vae_nan_guard,
        )
        pose_pipe = StableDiffusionControlNetPipeline(
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            unet=pipe.unet,
            controlnet=self.controlnet,
            scheduler=pipe.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pose_pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            zeros = torch.zeros(1, 144, projector.config.embedding_dim, device=self.device)
            negative = projector(zeros).to(self.dtype)
        logger.info("base %s loaded", name)
        return _Base(pipe=pipe, pose_pipe=pose_pipe, projector=projector, negative_tokens=negative)

    @torch.no_grad()
    def face_tokens(
        self, selfies: Sequence[np.ndarray | Image.Image], base: BaseModel
    ) -> torch.Tensor:
        """Face context tokens of one identity.

        Args:
            selfies: aligned 112x112 RGB crops of the same person.
            base: which base's projector to use.

        Returns:
            (1, 16, cross_attention_dim) tokens in the pipeline dtype (mean over the selfies).
        """
        projector = self._base(base).projector
        tokens: torch.Tensor = projector(self.transface(faces_to_tensor(selfies, self.device)))
        return tokens.mean(dim=0, keepdim=True).to(self.dtype)

    def _check(self, request: PortraitRequest) -> None:
        if not request.selfies:
            raise ValueError("at least one selfie crop is required")
        if request.num_images < 1:
            raise ValueError("num_images must be >= 1")
        candidates = request.num_candidates or request.num_images
        if candidates < request.num_images:
            raise ValueError("num_candidates must be >= num_images")
        if candidates > request.num_images and request.scorer is None:
            raise ValueError("ranking more candidates than images needs a scorer")
        if request.style.base_model not in _BASE_SPECS:
            raise ValueError(f"unknown base model {request.style.base_model!r}")

    def portraits(
        self,
        request: PortraitRequest,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
    ) -> PortraitSet:
        """Generate, check, rank and return portraits.

        Args:
            request: the job.
            progress: called after every denoising step with (steps done, steps total).
            cancel: polled between steps; when it returns True, Cancelled is raised.

        Returns:
            Up to `num_images` portraits, best similarity first when a scorer is given; fewer
            when the safety checker flagged too many candidates (`held_back`).

        Raises:
            SafetyFlagged: every candidate was flagged.
        """
        self._check(request)
        cfg = self.config
        style = request.style
        base = self._base(style.base_model)
        pipe = base.pose_pipe if request.pose is not None else base.pipe
        size = cfg.output_size()
        steps = request.steps or cfg.steps
        guidance = cfg.guidance_scale if request.guidance_scale is None else request.guidance_scale
        adapter_scale = (
            cfg.adapter_scale if request.adapter_scale is None else request.adapter_scale
        )
        n_candidates = request.num_candidates or request.num_images
        seed = random.SystemRandom().randrange(2**31) if request.seed is None else request.seed
        prompt = build_prompt(style.prompt, style.template, request.prompt_prefix)
        negative = DEFAULT_NEGATIVE if request.negative_prompt is None else request.negative_prompt
        negative += request.negative_suffix
        lora = self.default_lora if style.lora_path is None else parse_lora(style.lora_path)
        face = self.face_tokens(request.selfies, style.base_model)
        extra: dict[str, Any] = {}
        if request.pose is not None:
            extra = {
                "image": letterbox(request.pose, size),
                "controlnet_conditioning_scale": cfg.controlnet_scale,
            }
        batches = [
            list(range(start, min(start + cfg.batch_size, n_candidates)))
            for start in range(0, n_candidates, cfg.batch_size)
        ]
        done = 0

        def on_step(p: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, p.num_timesteps * len(batches))
            if cancel is not None and cancel():
                raise Cancelled("generation cancelled")
            return kwargs

        logger.info(
            "portraits: style=%s base=%s pose=%s candidates=%d steps=%d seed=%d",
            style.name,
            style.base_model,
            request.pose is not None,
            n_candidates,
            steps,
            seed,
        )
        previous_scale = get_adapter_scale(pipe.unet)
        images: list[tuple[int, Image.Image]] = []
        try:
            set_adapter_scale(pipe.unet, adapter_scale)
            # A zero weight needs no merge (and no backup of the touched weights).
            style_ctx = (
                merged_lora(pipe.unet, pipe.text_encoder, lora, style.lora_weight)
                if style.lora_weight != 0.0
                else contextlib.nullcontext()
            )
            with style_ctx:
                text, text_neg = pipe.encode_prompt(
                    prompt, self.device, 1, True, negative_prompt=negative
                )
                prompt_embeds = torch.cat([text, face], dim=1)
                negative_embeds = torch.cat([text_neg, base.negative_tokens], dim=1)
                for batch in batches:
                    if cancel is not None and cancel():
                        raise Cancelled("generation cancelled")
                    out = pipe(
                        prompt_embeds=prompt_embeds,
                        negative_prompt_embeds=negative_embeds,
                        num_images_per_prompt=len(batch),
                        generator=[torch.Generator().manual_seed(seed + i) for i in batch],
                        num_inference_steps=steps,
                        guidance_scale=guidance,
                        height=size,
                        width=size,
                        callback_on_step_end=on_step,
                        output_type="pil",
                        **extra,
                    )
                    images.extend(zip(batch, out.images, strict=True))
        finally:
            set_adapter_scale(pipe.unet, previous_scale)
        verdicts = self.check_images([img for _, img in images])
        flagged = [v for v in verdicts if v.flagged]
        if flagged:
            logger.warning("safety: %d of %d candidates flagged", len(flagged), len(images))
        safe = [pair for pair, v in zip(images, verdicts, strict=True) if not v.flagged]
        if not safe:
            raise SafetyFlagged(f"all {len(images)} candidates were flagged", flagged)
        checked = len(images) if self.safety is not None else 0
        return PortraitSet(self._rank(safe, seed, request), flagged, request.num_images, checked)

    @staticmethod
    def _rank(
        images: list[tuple[int, Image.Image]], seed: int, request: PortraitRequest
    ) -> list[Portrait]:
        """Score and keep the best `num_images`; never refuse a set for likeness alone.

        Candidates at or above `min_similarity` come first (they are the best-scored); when fewer
        than `num_images` pass, the best of the rest fill the set, flagged `low_likeness`, so the
        caller can say so instead of sending nothing.
        """
        portraits = [Portrait(image=img, seed=seed + i) for i, img in images]
        if request.scorer is None:
            return portraits[: request.num_images]
        for portrait in portraits:
            portrait.similarity = float(request.scorer(portrait.image))
        # Stable sort: equal scores keep generation order.
        ranked = sorted(portraits, key=lambda p: p.similarity or 0.0, reverse=True)
        kept = ranked[: request.num_images]
        if request.min_similarity is not None:
            floor = request.min_similarity
            for portrait in kept:
                portrait.low_likeness = portrait.similarity is None or portrait.similarity < floor
            low = sum(p.low_likeness for p in kept)
            if low:
                logger.info(
                    "%d of %d portraits under similarity %.3f (best %.3f): sent, flagged",
                    low,
                    len(kept),
                    floor,
                    kept[0].similarity or 0.0,
                )
        return kept
