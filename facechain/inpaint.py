"""Fixed-template inpainting (FaceChain `GenPortrait_inpaint`, reference §4) on the engine.

Per selected template face: square crop with the face at ~70 % of the side, stage-1 pose-guided
txt2img with the FACT adapter, ControlNet inpainting with [face keypoints, Canny] and the
adapter, a low-strength refine pass, colour-drift correction, and a feathered paste-back. Several
faces are done one after another on the same working image, one identity each.

Where this differs from FaceChain, and why:

- OpenPose control maps: with the engine's annotator (`Engine.pose_annotator`) they are
  FaceChain's: body + hands of the crop for stage 1, hands + face of the masked warped stage-1
  face for the inpaint pass and of the inpaint result for the refine pass. Without its weights
  (logged once) the face keypoints are synthesised from the 5 detected landmarks
  (`facechain.openpose`) and drawn instead, stage 1 included. When stage 1 has no detectable
  face, the annotator sees the crop's own face (masked) in place of the warped one.
- Face and human masks: no M2FP parsing; the face mask is the hull of the synthesised jaw line
  and raised brows, and the "human mask" of the drift fix is the softened edit region.
- Stage 1 only yields the generated face's landmarks and its warped face mask (as in FaceChain,
  its pixels are never used). When no face can be found in it (always so with the random tiny
  weights), the template face's own keypoints guide the inpaint pass and the warp mask is empty.
- Drift fix: FaceChain reruns the inpaint pipeline with an empty mask at strength 0.025; with a
  4-channel UNet that rerun pins every latent to the encoded crop, i.e. it is the VAE round trip
  of the crop, which is what is computed here (one encode + decode, no UNet step).
- Paste-back: only the edited region (the inpaint masks, dilated by 2k and feathered by a
  Gaussian as in FaceChain) is blended back, instead of the whole crop square, so every template
  pixel outside that mask stays byte-identical and the rest of the square is not resampled.
- Face fusion and skin retouching models are not available: `face_fusion=True` raises
  FeatureUnavailable instead of silently doing nothing.
- Steps follow the engine's scheduler and step count (FaceChain: PNDM, 50 steps); strength 0.6
  and 0.1 keep their meaning (a fraction of the schedule).
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
)
from PIL import Image

from facechain import fastpath, registry, tiny
from facechain.adapter import (
    TOKENS_PER_FACE,
    get_adapter_scale,
    hide_face_tokens,
    set_adapter_scale,
)
from facechain.engine import BaseModel, Engine, make_scheduler
from facechain.errors import (
    Cancelled,
    FeatureUnavailable,
)
from facechain.faces import Face, FaceDetector, default_detector, similarity_transform
from facechain.imageio import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from facechain.openpose import draw_face_pose, face_keypoints, face_region_mask
from facechain.prompts import SubjectPrompt
from facechain.templates import TemplateAnalysis, analyze_template, as_rgb

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]

# FaceChain's app defaults for fixed templates (reference §4).
INPAINT_PROMPT = (
    "raw photo, masterpiece, simple background, solo, medium shot, high detail face, "
    "photorealistic, best quality, wearing T-shirt"
)
# The missing comma after "(low quality:2)" is FaceChain's own.
INPAINT_NEGATIVE = (
    "nsfw, paintings, sketches, (worst quality:2), (low quality:2) lowers, normal quality, "
    "((monochrome)), ((grayscale)), logo, word, character"
)
INPAINT_BASE: BaseModel = "majic"
FACE_RATIO = 0.7
GUIDANCE_SCALE = 5.0
POSE_ADAPTER_SCALE = 0.5
INPAINT_ADAPTER_SCALE = 0.55
POSE_CONTROL_SCALE = 1.0
STRENGTH = 0.6
CONTROL_SCALES = (1.0, 0.2)
REFINE_STRENGTH = 0.1
REFINE_CONTROL_SCALES = (0.8, 0.8)
CANNY_LOW, CANNY_HIGH = 100, 200
# Mask growth, as fractions of sqrt(face mask area) (FaceChain's ksize factors).
CANNY_CLEAR_DILATE = 0.05
INPAINT_DILATE = 0.04
INPAINT_CHIN_DILATE = 0.1
REFINE_DILATE = 0.02
# Seed of the tiny profile's Canny ControlNet (the engine's tiny OpenPose one uses 4).
_TINY_CANNY_SEED = 6


@dataclass(frozen=True)
class SquareCrop:
    """A square window of the template around one face; it may reach past the borders."""

    x0: int
    y0: int
    side: int

    @classmethod
    def around(cls, face: Face, face_ratio: float = FACE_RATIO) -> SquareCrop:
        """Square centred on the face box whose side makes the face `face_ratio` of it."""
        x, y, w, h = face.box
        half = max(w, h) / face_ratio / 2.0
        cx, cy = x + w / 2.0, y + h / 2.0
        return cls(x0=round(cx - half), y0=round(cy - half), side=max(2, round(2 * half)))

    def _slices(self, width: int, height: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """(rows, cols) in the image and in the window of the window's part inside the image."""
        ix0, iy0 = max(0, self.x0), max(0, self.y0)
        ix1 = max(ix0, min(width, self.x0 + self.side))
        iy1 = max(iy0, min(height, self.y0 + self.side))
        ox0, oy0 = ix0 - self.x0, iy0 - self.y0
        return (
            (slice(iy0, iy1), slice(ix0, ix1)),
            (slice(oy0, oy0 + iy1 - iy0), slice(ox0, ox0 + ix1 - ix0)),
        )

    def extract(self, image: np.ndarray) -> np.ndarray:
        """(side, side, ...) copy of the window, zero where it leaves the image."""
        out = np.zeros((self.side, self.side, *image.shape[2:]), dtype=image.dtype)
        inside, window = self._slices(image.shape[1], image.shape[0])
        out[window] = image[inside]
        return out

    def place(self, canvas: np.ndarray, patch: np.ndarray) -> None:
        """Write the in-image part of a (side, side, ...) patch into `canvas` in place."""
        inside, window = self._slices(canvas.shape[1], canvas.shape[0])
        canvas[inside] = patch[window]

    def blend(self, image: np.ndarray, patch: np.ndarray, alpha: np.ndarray) -> None:
        """Blend a (side, side, 3) uint8 patch into `image` in place with (side, side) alpha.

        Pixels whose alpha is 0 are not written at all, so they stay byte-identical.
        """
        inside, window = self._slices(image.shape[1], image.shape[0])
        a = alpha[window]
        write = a > 0
        dst = image[inside]
        mixed = (
            dst[write].astype(np.float32) * (1.0 - a[write][:, None])
            + patch[window][write].astype(np.float32) * a[write][:, None]
        )
        dst[write] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)

    def to_window(self, points: np.ndarray, size: int) -> np.ndarray:
        """Template points mapped into the window resized to `size` pixels."""
        scale = size / self.side
        offset = np.array([self.x0, self.y0], np.float64)
        return ((np.asarray(points, np.float64) - offset) * scale).astype(np.float32)


def _resize(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Square resize; area filter to shrink, cubic to enlarge, nearest for masks."""
    if image.shape[0] == size and image.shape[1] == size:
        return image.copy()
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)


def _dilate(mask: np.ndarray, ksize: float) -> np.ndarray:
    """Dilate a 0/255 mask with a square kernel of side int(ksize) (no-op under 1 px)."""
    k = int(ksize)
    if k < 1:
        return mask.copy()
    return cv2.dilate(mask, np.ones((k, k), np.uint8))


def _below(shape: tuple[int, int], y_line: float) -> np.ndarray:
    """0/255 mask of the rows below `y_line`."""
    mask = np.zeros(shape, np.uint8)
    mask[max(0, math.ceil(y_line)) :] = 255
    return mask


def canny_map(image_rgb: np.ndarray, clear: np.ndarray | None = None) -> np.ndarray:
    """Canny(100, 200) edges as an (H, W, 3) uint8 control map, zeroed where `clear` is set."""
    edges = cv2.Canny(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY), CANNY_LOW, CANNY_HIGH)
    if clear is not None:
        edges[clear > 0] = 0
    return np.repeat(edges[:, :, None], 3, axis=2)


def fix_drift(
    result: np.ndarray, source: np.ndarray, roundtrip: np.ndarray, edit_mask: np.ndarray
) -> np.ndarray:
    """Undo the VAE's colour drift outside the edited region (FaceChain's second pass).

    Adds (source - VAE(source)) weighted by 1 - softened edit mask; inside the edit the
    generated pixels stay as they are.
    """
    size = edit_mask.shape[0]
    # FaceChain softens its (human) mask with a 21x21 blur at 512 px; scale it with the window.
    k = max(3, int(21 * size / 512) | 1)
    soft = cv2.GaussianBlur(edit_mask.astype(np.float32) / 255.0, (k, k), 0)
    soft = np.maximum(soft, (edit_mask > 0).astype(np.float32))
    drift = source.astype(np.float32) - roundtrip.astype(np.float32)
    fixed = result.astype(np.float32) + drift * (1.0 - soft)[..., None]
    return np.clip(np.rint(fixed), 0, 255).astype(np.uint8)


def paste_alpha(edit_mask: np.ndarray, side: int) -> np.ndarray:
    """Feathered (side, side) float alpha: the edit grown by 2k, Gaussian-blurred, 1 inside.

    k = int(10 * half_side / 256) as in FaceChain's paste-back; outside the grown and blurred
    region the alpha is exactly 0.
    """
    edit = _resize(edit_mask, side, nearest=True)
    k = max(1, int(10 * (side / 2.0) / 256))
    grown = _dilate(edit, 2 * k).astype(np.float32) / 255.0
    blur = int(1.8 * k) * 2 + 1
    alpha = cv2.GaussianBlur(grown, (blur, blur), 0)
    # The Gaussian of a binary mask is positive only a few sigmas out; cut the float tail so
    # "outside the mask" is a crisp, reproducible set of pixels.
    alpha[alpha < 1e-3] = 0.0
    return np.maximum(alpha, (edit > 0).astype(np.float32))


@dataclass(frozen=True)
class _WindowFace:
    """A face inside the working window: landmarks, 70 keypoints, face mask, its scale."""

    landmarks: np.ndarray
    keypoints: np.ndarray
    mask: np.ndarray
    radius: float
    eye_y: float

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray, size: int) -> _WindowFace:
        keypoints = face_keypoints(landmarks)
        mask = face_region_mask((size, size), keypoints)
        area = float((mask > 0).sum())
        marks = np.asarray(landmarks, np.float32).reshape(5, 2)
        return cls(
            landmarks=marks,
            keypoints=keypoints,
            mask=mask,
            radius=math.sqrt(max(area, 1.0)),
            eye_y=float(marks[:2, 1].mean()),
        )


@dataclass
class InpaintResult:
    """The finished image, its base seed, and per selected face what was done."""

    image: Image.Image
    seed: int
    blend_masks: list[np.ndarray]
    stage1_faces_found: list[bool]


@dataclass
class _Progress:
    """Step counter over all pipeline calls of one request."""

    total: int
    callback: ProgressFn | None
    cancel: CancelFn | None
    done: int = 0

    def check(self) -> None:
        """Raise Cancelled when the caller asked to stop."""
        if self.cancel is not None and self.cancel():
            raise Cancelled("template generation cancelled")

    def step(self) -> None:
        """Count one denoising step, report it, honour cancellation."""
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, max(self.total, self.done))
        self.check()


def _denoise_steps(steps: int, strength: float) -> tuple[int, int]:
    """(scheduler steps, steps run) so that a low `strength` still runs at least one step."""
    schedule = max(steps, math.ceil(1.0 / strength))
    return schedule, max(1, min(int(schedule * strength), schedule))


@dataclass
class InpaintRequest:
    """One fixed-template job.

    Args:
        template: RGB template image (PIL or (H, W, 3) uint8).
        selfies: aligned 112x112 RGB crops of one person (`facechain.engine.id_crop`), used
            for every selected face unless `identities` is given.
        faces: 1-based template face indices, left to right among the kept faces.
        identities: per selected face, its own crops (several people in one template).
        num_faces: keep only the N largest template faces (FaceChain's `num_faces`); None keeps
            all. Kept faces that are not selected are protected from any change.
        seed: base seed (random when None); the k-th selected face uses seed + k.
        prompt, prompt_prefix, negative_prompt: text conditioning (prefix = subject words).
        negative_suffix: appended to the negative prompt (FaceChain's ", children" for men).
        subjects: per selected face, its own subject (prefix and suffix) instead of
            prompt_prefix / negative_suffix; None entries use those.
        steps: scheduler steps (default: the engine's); strengths are fractions of them.
        face_fusion: FaceChain's face-fusion post-process; not available, so True raises
            FeatureUnavailable.
        analysis: the template's `analyze_template` result, to skip detecting again.
    """

    template: Image.Image | np.ndarray
    selfies: Sequence[np.ndarray | Image.Image] = ()
    faces: Sequence[int] = (1,)
    identities: Sequence[Sequence[np.ndarray | Image.Image]] | None = None
    num_faces: int | None = None
    seed: int | None = None
    prompt: str = INPAINT_PROMPT
    prompt_prefix: str = ""
    negative_prompt: str = INPAINT_NEGATIVE
    negative_suffix: str = ""
    subjects: Sequence[SubjectPrompt | None] | None = None
    steps: int | None = None
    face_fusion: bool = False
    analysis: TemplateAnalysis | None = None

    def texts(self, k: int) -> tuple[str, str]:
        """(prompt, negative prompt) for the k-th selected face (FaceChain: prefix + prompt)."""
        prefix, suffix = self.prompt_prefix, self.negative_suffix
        subject = None if self.subjects is None else self.subjects[k]
        if subject is not None:
            prefix, suffix = subject.prefix, subject.negative_suffix
        return prefix + self.prompt, self.negative_prompt + suffix

    def identity_sets(self) -> list[Sequence[np.ndarray | Image.Image]]:
        """The crops to use for each selected face, in the order of `faces`."""
        if self.identities is None:
            sets = [self.selfies] * len(self.faces)
        else:
            sets = list(self.identities)
            if len(sets) != len(self.faces):
                raise ValueError(
                    f"{len(self.faces)} faces selected but {len(sets)} identities given"
                )
        if any(len(crops) == 0 for crops in sets):
            raise ValueError("every selected face needs at least one selfie crop")
        if self.subjects is not None and len(self.subjects) != len(self.faces):
            raise ValueError(f"{len(self.faces)} faces selected but {len(self.subjects)} subjects")
        return sets


class TemplateInpainter:
    """Fixed-template inpainting on an engine's resident majic base; build once per worker."""

    def __init__(
        self,
        engine: Engine,
        canny_controlnet: ControlNetModel | None = None,
        detector: FaceDetector | None = None,
    ) -> None:
        """Share the engine's UNet/VAE/text encoder/OpenPose ControlNet; load the Canny one."""
        self.engine = engine
        self.detector = detector or default_detector()
        controlnet = canny_controlnet or self._load_canny(engine)
        self.canny_controlnet = controlnet.to(engine.device).eval()
        if engine.config.channels_last:
            fastpath.set_channels_last([self.canny_controlnet])
        # Like the engine's OpenPose ControlNet, it must only see the text tokens.
        hide_face_tokens(self.canny_controlnet, TOKENS_PER_FACE)
        self._pipes: _Pipes | None = None
        self._lock = threading.Lock()
        self._fallback_logged = False

    @classmethod
    def of(cls, engine: Engine) -> TemplateInpainter:
        """The inpainter bound to `engine`, created on first use and kept on the engine."""
        with _OF_LOCK:
            inpainter: TemplateInpainter | None = getattr(engine, _ENGINE_ATTR, None)
            if inpainter is None:
                inpainter = cls(engine)
                # Kept on the engine itself so it lives exactly as long (no global registry).
                setattr(engine, _ENGINE_ATTR, inpainter)
            return inpainter

    @staticmethod
    def _load_canny(engine: Engine) -> ControlNetModel:
        """The Canny ControlNet of the engine's profile."""
        if engine.config.profile == "tiny":
            return tiny.controlnet(tiny.unet(seed=_TINY_CANNY_SEED), seed=_TINY_CANNY_SEED)
        path = registry.resolve(registry.CONTROLNET_CANNY, engine.config.models_dir)
        model: ControlNetModel = ControlNetModel.from_pretrained(path, dtype=engine.dtype)
        return model

    def _pipelines(self) -> _Pipes:
        """Stock diffusers pipelines over the resident components (built once; cheap views)."""
        if self._pipes is None:
            pipe = self.engine.resident(INPAINT_BASE).pipe
            common: dict[str, Any] = {
                "vae": pipe.vae,
                "text_encoder": pipe.text_encoder,
                "tokenizer": pipe.tokenizer,
                "unet": pipe.unet,
                "safety_checker": None,
                "feature_extractor": None,
                "requires_safety_checker": False,
            }
            # Own scheduler objects: a scheduler keeps per-call state (timesteps, step index).
            scheduler = self.engine.config.scheduler
            pose = StableDiffusionControlNetPipeline(
                controlnet=self.engine.controlnet,
                scheduler=make_scheduler(scheduler, pipe.scheduler.config),
                **common,
            )
            inpaint = StableDiffusionControlNetInpaintPipeline(
                controlnet=[self.engine.controlnet, self.canny_controlnet],
                scheduler=make_scheduler(scheduler, pipe.scheduler.config),
                **common,
            )
            pose.set_progress_bar_config(disable=True)
            inpaint.set_progress_bar_config(disable=True)
            self._pipes = _Pipes(pose=pose, inpaint=inpaint)
        return self._pipes

    def run(
        self,
        request: InpaintRequest,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
    ) -> InpaintResult:
        """Paint each identity into its template face; the output has the template's size.

        Args:
            request: template, identities, face indices and options.
            progress: called after every denoising step with (steps done, steps total).
            cancel: polled between steps; when it returns True, Cancelled is raised.
        """
        if request.face_fusion:
            raise FeatureUnavailable(
                "face fusion needs damo/cv_unet_face_fusion_torch, which this installation "
                "does not have; run without face_fusion"
            )
        identities = request.identity_sets()
        rgb = as_rgb(request.template, max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS)
        analysis = request.analysis
        if analysis is None:
            analysis = analyze_template(rgb, detector=self.detector)
        elif (analysis.width, analysis.height) != (rgb.shape[1], rgb.shape[0]):
            raise ValueError("the template analysis belongs to an image of another size")
        targets = analysis.select(request.faces, request.num_faces)
        kept = analysis.kept_faces(request.num_faces)

        steps = request.steps or self.engine.config.steps
        seed = request.seed
        if seed is None:
            seed = random.SystemRandom().randrange(2**31)
        per_face = (
            steps + _denoise_steps(steps, STRENGTH)[1] + _denoise_steps(steps, REFINE_STRENGTH)[1]
        )
        tracker = _Progress(total=per_face * len(targets), callback=progress, cancel=cancel)
        prompt, negative = request.texts(0)
        job = _Job(
            prompt=prompt,
            negative=negative,
            steps=steps,
            size=self.engine.config.output_size(),
            tracker=tracker,
        )
        working = rgb.copy()
        blend_masks: list[np.ndarray] = []
        found: list[bool] = []
        # One request at a time: the pipelines share the engine's UNet and its adapter scale.
        with self._lock:
            pipes = self._pipelines()
            previous_scale = get_adapter_scale(pipes.inpaint.unet)
            try:
                for k, (target, crops) in enumerate(zip(targets, identities, strict=True)):
                    tracker.check()
                    others = [f for f in kept if f is not target]
                    logger.info(
                        "template face %d/%d at %s, seed %d",
                        k + 1,
                        len(targets),
                        target.int_box(),
                        seed + k,
                    )
                    prompt, negative = request.texts(k)
                    blend, stage1_found = self._one_face(
                        pipes,
                        replace(job, prompt=prompt, negative=negative),
                        working,
                        target,
                        others,
                        crops,
                        seed + k,
                    )
                    blend_masks.append(blend)
                    found.append(stage1_found)
            finally:
                set_adapter_scale(pipes.inpaint.unet, previous_scale)
        return InpaintResult(
            image=Image.fromarray(working),
            seed=seed,
            blend_masks=blend_masks,
            stage1_faces_found=found,
        )

    def _one_face(
        self,
        pipes: _Pipes,
        job: _Job,
        working: np.ndarray,
        target: Face,
        others: Sequence[Face],
        crops: Sequence[np.ndarray | Image.Image],
        seed: int,
    ) -> tuple[np.ndarray, bool]:
        """Inpaint one face into `working` in place; returns its (H, W) float blend mask."""
        height, width = working.shape[:2]
        size = job.size
        window = SquareCrop.around(target)
        # FaceChain blacks the other kept faces out of the working copy (the crop must show one
        # person) and protects them from the paste-back.
        source = working.copy()
        protect = np.ones((height, width), np.float32)
        for other in others:
            x, y, w, h = other.int_box()
            source[max(0, y) : y + h, max(0, x) : x + w] = 0
            protect[max(0, y) : y + h, max(0, x) : x + w] = 0.0
        crop = _resize(window.extract(source), size)
        face = _WindowFace.from_landmarks(window.to_window(target.landmarks, size), size)
        embeds, negative_embeds = self._embeddings(pipes.inpaint, job, crops)
        common: dict[str, Any] = {
            "prompt_embeds": embeds,
            "negative_prompt_embeds": negative_embeds,
            "guidance_scale": GUIDANCE_SCALE,
            "height": size,
            "width": size,
        }

        # Stage 1: a face of this identity posed like the template face.
        set_adapter_scale(pipes.pose.unet, POSE_ADAPTER_SCALE)
        stage1 = self._run(
            pipes.pose,
            job,
            seed,
            image=self._pose_control(crop, face.keypoints, size, body=True),
            controlnet_conditioning_scale=POSE_CONTROL_SCALE,
            num_inference_steps=job.steps,
            **common,
        )
        control_points, warp_mask, warped_face = self._stage1_geometry(stage1, face)
        stage1_found = warped_face is not None
        if warped_face is None:
            # FaceChain's annotator sees the warped stage-1 face; without one, the target face.
            warped_face = crop * (face.mask[:, :, None] > 0).astype(np.uint8)

        # Inpaint: Canny of the crop without the inner face (and chin, below the eyes) so the new
        # face is free to differ; mask = face grown a little, more below the eyes.
        below = _below((size, size), face.eye_y)
        clear = np.maximum(face.mask, _dilate(face.mask, CANNY_CLEAR_DILATE * face.radius) & below)
        core = _dilate(face.mask, INPAINT_DILATE * face.radius)
        chin = (
            _dilate(core, INPAINT_CHIN_DILATE * face.radius)
            & below
            & np.maximum(face.mask, warp_mask)
        )
        mask = np.maximum(core, chin)
        set_adapter_scale(pipes.inpaint.unet, INPAINT_ADAPTER_SCALE)
        result = self._run(
            pipes.inpaint,
            job,
            seed,
            image=Image.fromarray(crop),
            mask_image=Image.fromarray(mask),
            control_image=[
                self._pose_control(warped_face, control_points, size, body=False),
                Image.fromarray(canny_map(crop, clear)),
            ],
            controlnet_conditioning_scale=list(CONTROL_SCALES),
            strength=STRENGTH,
            num_inference_steps=_denoise_steps(job.steps, STRENGTH)[0],
            **common,
        )
        result = fix_drift(result, crop, self._vae_roundtrip(pipes.inpaint, crop), mask)

        # Refine: low strength over the face only, guided by the result's edges and keypoints.
        refine_face = self._find_face(result, face)
        refine_mask = _dilate(refine_face.mask, REFINE_DILATE * refine_face.radius)
        refined = self._run(
            pipes.inpaint,
            job,
            seed,
            image=Image.fromarray(result),
            mask_image=Image.fromarray(refine_mask),
            control_image=[
                self._pose_control(result, refine_face.keypoints, size, body=False),
                Image.fromarray(canny_map(result)),
            ],
            controlnet_conditioning_scale=list(REFINE_CONTROL_SCALES),
            strength=REFINE_STRENGTH,
            num_inference_steps=_denoise_steps(job.steps, REFINE_STRENGTH)[0],
            **common,
        )
        refined = fix_drift(
            refined, result, self._vae_roundtrip(pipes.inpaint, result), refine_mask
        )

        alpha = paste_alpha(np.maximum(mask, refine_mask), window.side)
        alpha *= window.extract(protect)
        window.blend(working, _resize(refined, window.side), alpha)
        blend = np.zeros((height, width), np.float32)
        window.place(blend, alpha)
        return blend, stage1_found

    def _embeddings(
        self,
        pipe: StableDiffusionControlNetInpaintPipeline,
        job: _Job,
        crops: Sequence[np.ndarray | Image.Image],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[text; face] contexts for CFG: face = projector(TransFace), negative face = zeros."""
        resident = self.engine.resident(INPAINT_BASE)
        face = self.engine.face_tokens(crops, INPAINT_BASE)
        with torch.no_grad():
            text, text_negative = pipe.encode_prompt(
                job.prompt, self.engine.device, 1, True, negative_prompt=job.negative
            )
        return (
            torch.cat([text, face], dim=1),
            torch.cat([text_negative, resident.negative_tokens], dim=1),
        )

    def _run(self, pipe: Any, job: _Job, seed: int, **kwargs: Any) -> np.ndarray:
        """One pipeline call with progress/cancel per step; returns (size, size, 3) uint8."""

        def on_step(p: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            job.tracker.step()
            return tensors

        job.tracker.check()
        out = pipe(
            generator=torch.Generator().manual_seed(seed),
            callback_on_step_end=on_step,
            output_type="np",
            **kwargs,
        )
        image = np.asarray(out.images[0], dtype=np.float32)
        pixels: np.ndarray = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
        return pixels

    @torch.no_grad()
    def _vae_roundtrip(
        self, pipe: StableDiffusionControlNetInpaintPipeline, image: np.ndarray
    ) -> np.ndarray:
        """decode(encode(image)) with the pipeline's VAE: what an empty-mask rerun returns."""
        vae = pipe.vae
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        x = x.to(device=self.engine.device, dtype=vae.dtype)
        latents = vae.encode(x).latent_dist.mode()
        y = vae.decode(latents).sample[0].float().clamp(-1.0, 1.0)
        return np.asarray(((y + 1.0) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy())

    def _stage1_geometry(
        self, stage1: np.ndarray, face: _WindowFace
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The stage-1 face warped onto the template face: its keypoints, mask and pixels.

        Returns (70, 2) keypoints, the (size, size) 0/255 warp mask and the warped face with
        everything outside that mask black (FaceChain's annotator input); the template face's
        keypoints, an empty mask and None when stage 1 has no detectable face.
        """
        size = face.mask.shape[0]
        found = _largest(self.detector.detect_faces(stage1))
        if found is None:
            logger.info("stage 1 produced no detectable face; using the template face's keypoints")
            return face.keypoints, np.zeros_like(face.mask), None
        # 5-point similarity of the generated face onto the template face (FaceChain step D.4).
        matrix = similarity_transform(found.landmarks, face.landmarks)
        warped = found.landmarks @ matrix[:, :2].T.astype(np.float32) + matrix[:, 2].astype(
            np.float32
        )
        generated = face_region_mask((size, size), face_keypoints(found.landmarks))
        warp_mask = cv2.warpAffine(
            generated, matrix, (size, size), flags=cv2.INTER_NEAREST, borderValue=0
        )
        warped_face = cv2.warpAffine(stage1, matrix, (size, size), borderValue=0)
        warped_face *= (warp_mask[:, :, None] > 0).astype(np.uint8)
        return face_keypoints(warped), warp_mask, warped_face

    def _pose_control(
        self, image: np.ndarray, keypoints: np.ndarray, size: int, *, body: bool
    ) -> Image.Image:
        """An OpenPose control map: the annotator's, as FaceChain computes it, or the fallback.

        Args:
            image: (size, size, 3) uint8 RGB the annotator looks at.
            keypoints: (70, 2) face keypoints in window pixels, drawn when there is no
                annotator (`facechain.openpose`).
            size: side of the map.
            body: body + hands (stage 1); otherwise hands + face (inpaint and refine passes).
        """
        annotator = self.engine.pose_annotator()
        if annotator is None:
            if not self._fallback_logged:
                logger.info("no openpose annotator: face control maps from 5 landmarks")
                self._fallback_logged = True
            return Image.fromarray(draw_face_pose((size, size), [keypoints]))
        pose_map, _ = annotator(image, include_body=body, include_hand=True, include_face=not body)
        return Image.fromarray(_resize(np.asarray(pose_map.convert("RGB")), size))

    def _find_face(self, image: np.ndarray, fallback: _WindowFace) -> _WindowFace:
        """The face in the window nearest the target; the target itself when none is found."""
        size = image.shape[0]
        centre = fallback.landmarks.mean(axis=0)
        faces = self.detector.detect_faces(image)
        near = [
            f for f in faces if np.hypot(*(f.landmarks.mean(axis=0) - centre)) < fallback.radius
        ]
        if not near:
            return fallback
        best = min(near, key=lambda f: float(np.hypot(*(f.landmarks.mean(axis=0) - centre))))
        return _WindowFace.from_landmarks(best.landmarks, size)


@dataclass(frozen=True)
class _Pipes:
    """The two stock pipelines over the engine's resident majic components."""

    pose: StableDiffusionControlNetPipeline
    inpaint: StableDiffusionControlNetInpaintPipeline


@dataclass(frozen=True)
class _Job:
    """Per-request settings shared by every face of the request."""

    prompt: str
    negative: str
    steps: int
    size: int
    tracker: _Progress


def _largest(faces: Sequence[Face]) -> Face | None:
    """The face with the biggest box, or None."""
    return max(faces, key=lambda f: f.area, default=None)


_ENGINE_ATTR = "_facechain_template_inpainter"
_OF_LOCK = threading.Lock()


def inpaint_template(
    engine: Engine,
    template: Image.Image | np.ndarray,
    identities: Sequence[Sequence[np.ndarray | Image.Image]],
    faces: Sequence[int],
    *,
    seed: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    **options: Any,
) -> Image.Image:
    """Template-sized image with `identities[k]` painted into template face `faces[k]` (1-based).

    Shorthand for `TemplateInpainter.of(engine).run(InpaintRequest(...))`; `options` are the
    other InpaintRequest fields (num_faces, analysis, prompt, prompt_prefix, steps, ...).
    """
    request = InpaintRequest(
        template=template, identities=identities, faces=faces, seed=seed, **options
    )
    return TemplateInpainter.of(engine).run(request, progress, cancel).image
