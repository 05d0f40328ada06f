"""Fixed-template inpainting (FaceChain `GenPortrait_inpaint`, reference §4) on the resident engine.

Per selected template face: square crop with the face at ~70 % of the side, stage-1 pose-guided
txt2img with the FACT adapter, ControlNet inpainting with [face keypoints, Canny] and the
adapter, a low-strength refine pass, colour-drift correction, and a feathered paste-back. Several
faces are done one after another on the same working image, one identity each.

Where this differs from FaceChain, and why:

- Face keypoints: no OpenPose annotator is available, so the face control is drawn from the
  detected 5 landmarks (`facechain.openpose`); stage 1 is guided by the crop's face keypoints
  instead of an OpenPose body+hands map (no body estimator either).
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
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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

from facechain import registry, tiny
from facechain.adapter import TOKENS_PER_FACE, get_adapter_scale, hide_face_tokens, set_adapter_scale
from facechain.engine import BaseModel, Engine, make_scheduler
from facechain.errors import (
    Cancelled,
    FaceIndexOutOfRange,
    FaceTooSmall,
    FeatureUnavailable,
    TooFewTemplateFaces,
)
from facechain.faces import Face, FaceDetector, default_detector, similarity_transform
from facechain.imageio import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, load_image, to_rgb_array
from facechain.openpose import draw_face_pose, face_keypoints, face_region_mask

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
# Template faces narrower than this are blown up >10x into the working crop: refuse them.
MIN_TEMPLATE_FACE_PX = 48
# Seed of the tiny profile's Canny ControlNet (the engine's tiny OpenPose one uses 4).
_TINY_CANNY_SEED = 6


@dataclass(frozen=True)
class TemplateAnalysis:
    """Faces of a template image, in template pixels, sorted left to right."""

    width: int
    height: int
    faces: list[Face] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Number of detected faces."""
        return len(self.faces)

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        """Integer (x, y, w, h) boxes, left to right (face k is boxes[k - 1])."""
        return [f.int_box() for f in self.faces]

    def kept_faces(self, num_faces: int | None = None) -> list[Face]:
        """The `num_faces` largest faces (all when None), left to right.

        Raises TooFewTemplateFaces when the template has fewer (or no) faces.
        """
        if not self.faces:
            raise TooFewTemplateFaces("no face found in the template", found=0, needed=1)
        if num_faces is None:
            return list(self.faces)
        if num_faces < 1:
            raise ValueError("num_faces must be >= 1")
        if self.count < num_faces:
            raise TooFewTemplateFaces(
                f"the template has {self.count} face(s), {num_faces} needed",
                found=self.count,
                needed=num_faces,
            )
        largest = sorted(self.faces, key=lambda f: f.area, reverse=True)[:num_faces]
        return sorted(largest, key=lambda f: (f.box[0], f.box[1]))

    def select(
        self,
        indices: Sequence[int],
        num_faces: int | None = None,
        min_face_px: float = MIN_TEMPLATE_FACE_PX,
    ) -> list[Face]:
        """Faces for 1-based, left-to-right `indices` among the kept faces.

        Raises TooFewTemplateFaces, FaceIndexOutOfRange or FaceTooSmall.
        """
        if not indices:
            raise ValueError("select at least one template face")
        if len(set(indices)) != len(indices):
            raise ValueError(f"template face indices repeat: {list(indices)}")
        kept = self.kept_faces(num_faces)
        chosen = []
        for index in indices:
            if not 1 <= index <= len(kept):
                raise FaceIndexOutOfRange(
                    f"face {index} does not exist; the template has faces 1 to {len(kept)} "
                    "(left to right)",
                    index=index,
                    available=len(kept),
                )
            face = kept[index - 1]
            if face.size < min_face_px:
                raise FaceTooSmall(
                    f"template face {index} is {face.size:.0f} px wide, at least "
                    f"{min_face_px:.0f} px is needed"
                )
            chosen.append(face)
        return chosen


def analyze_template(
    data_or_image: bytes | Image.Image | np.ndarray,
    *,
    detector: FaceDetector | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> TemplateAnalysis:
    """Detect and order the faces of a template (bytes are decoded safely first)."""
    rgb = _as_rgb(data_or_image, max_bytes=max_bytes, max_pixels=max_pixels)
    faces = (detector or default_detector()).detect_faces(rgb)
    logger.info("template %dx%d: %d face(s)", rgb.shape[1], rgb.shape[0], len(faces))
    return TemplateAnalysis(width=rgb.shape[1], height=rgb.shape[0], faces=faces)


def _as_rgb(
    data_or_image: bytes | Image.Image | np.ndarray, *, max_bytes: int, max_pixels: int
) -> np.ndarray:
    """(H, W, 3) uint8 RGB from bytes, a PIL image or an RGB array."""
    if isinstance(data_or_image, bytes | bytearray):
        return to_rgb_array(load_image(bytes(data_or_image), max_bytes=max_bytes, max_pixels=max_pixels))
    if isinstance(data_or_image, Image.Image):
        return to_rgb_array(data_or_image)
    arr = np.asarray(data_or_image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {arr.shape} {arr.dtype}")
    return arr


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

    def extract(self, image: np.ndarray) -> np.ndarray:
        """(side, side, C) copy of the window, zero where it leaves the image."""
        out = np.zeros((self.side, self.side, *image.shape[2:]), dtype=image.dtype)
        (ix0, iy0, ix1, iy1), (ox0, oy0) = self._overlap(image.shape[1], image.shape[0])
        if ix1 > ix0 and iy1 > iy0:
            out[oy0 : oy0 + iy1 - iy0, ox0 : ox0 + ix1 - ix0] = image[iy0:iy1, ix0:ix1]
        return out

    def _overlap(self, width: int, height: int) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
        """Image rectangle (x0, y0, x1, y1) covered by the window and its offset in the window."""
        ix0, iy0 = max(0, self.x0), max(0, self.y0)
        ix1, iy1 = min(width, self.x0 + self.side), min(height, self.y0 + self.side)
        return (ix0, iy0, ix1, iy1), (ix0 - self.x0, iy0 - self.y0)

    def paste(self, image: np.ndarray, patch: np.ndarray, alpha: np.ndarray) -> None:
        """Blend a (side, side, 3) patch into `image` in place with a (side, side) alpha in [0, 1].

        Pixels where alpha is 0 are not written at all, so they stay byte-identical.
        """
        (ix0, iy0, ix1, iy1), (ox0, oy0) = self._overlap(image.shape[1], image.shape[0])
        if ix1 <= ix0 or iy1 <= iy0:
            return
        a = alpha[oy0 : oy0 + iy1 - iy0, ox0 : ox0 + ix1 - ix0]
        src = patch[oy0 : oy0 + iy1 - iy0, ox0 : ox0 + ix1 - ix0].astype(np.float32)
        dst = image[iy0:iy1, ix0:ix1]
        blended = dst.astype(np.float32) * (1.0 - a[..., None]) + src * a[..., None]
        write = a > 0
        dst[write] = np.clip(np.rint(blended[write]), 0, 255).astype(np.uint8)

    def to_window(self, points: np.ndarray, size: int) -> np.ndarray:
        """Template points mapped into the window resized to `size` pixels."""
        scale = size / self.side
        return ((np.asarray(points, np.float64) - [self.x0, self.y0]) * scale).astype(np.float32)


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


@dataclass(frozen=True)
class _CropFace:
    """The target face inside the working window."""

    landmarks: np.ndarray
    keypoints: np.ndarray
    mask: np.ndarray
    radius: float
    eye_y: float

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray, size: int) -> _CropFace:
        keypoints = face_keypoints(landmarks)
        mask = face_region_mask((size, size), keypoints)
        area = float((mask > 0).sum())
        return cls(
            landmarks=np.asarray(landmarks, np.float32),
            keypoints=keypoints,
            mask=mask,
            radius=math.sqrt(max(area, 1.0)),
            eye_y=float(np.mean(np.asarray(landmarks)[:2, 1])),
        )


@dataclass
class InpaintResult:
    """The finished image plus, per selected face, the blend mask used (template pixels)."""

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
        if self.cancel is not None and self.cancel():
            raise Cancelled("template generation cancelled")

    def step(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, max(self.total, self.done))
        self.check()


def _denoise_steps(steps: int, strength: float) -> tuple[int, int]:
    """(scheduler steps, steps actually run) so that `strength` always runs at least one step."""
    schedule = max(steps, math.ceil(1.0 / strength))
    return schedule, max(1, min(int(schedule * strength), schedule))


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
        # Like the engine's OpenPose ControlNet, it must only see the text tokens.
        hide_face_tokens(self.canny_controlnet, TOKENS_PER_FACE)
        self._pipes: tuple[StableDiffusionControlNetPipeline, StableDiffusionControlNetInpaintPipeline] | None = None

    @staticmethod
    def _load_canny(engine: Engine) -> ControlNetModel:
        """The Canny ControlNet of the engine's profile."""
        if engine.config.profile == "tiny":
            return tiny.controlnet(tiny.unet(seed=_TINY_CANNY_SEED), seed=_TINY_CANNY_SEED)
        path = registry.resolve(registry.CONTROLNET_CANNY, engine.config.models_dir)
        model: ControlNetModel = ControlNetModel.from_pretrained(path, torch_dtype=engine.dtype)
        return model

    def _pipelines(
        self,
    ) -> tuple[StableDiffusionControlNetPipeline, StableDiffusionControlNetInpaintPipeline]:
        """Stock diffusers pipelines over the resident components (built once, cheap views)."""
        if self._pipes is None:
            pipe = self.engine.base_pipeline(INPAINT_BASE)
            # Own scheduler objects: schedulers keep per-call state (timesteps, step index).
            common: dict[str, Any] = {
                "vae": pipe.vae,
                "text_encoder": pipe.text_encoder,
                "tokenizer": pipe.tokenizer,
                "unet": pipe.unet,
                "safety_checker": None,
                "feature_extractor": None,
                "requires_safety_checker": False,
            }
            name = self.engine.config.scheduler
            pose = StableDiffusionControlNetPipeline(
                controlnet=self.engine.controlnet,
                scheduler=make_scheduler(name, pipe.scheduler.config),
                **common,
            )
            inpaint = StableDiffusionControlNetInpaintPipeline(
                controlnet=[self.engine.controlnet, self.canny_controlnet],
                scheduler=make_scheduler(name, pipe.scheduler.config),
                **common,
            )
            pose.set_progress_bar_config(disable=True)
            inpaint.set_progress_bar_config(disable=True)
            self._pipes = (pose, inpaint)
        return self._pipes

    def inpaint(
        self,
        template: Image.Image | np.ndarray,
        identities: Sequence[Sequence[np.ndarray | Image.Image]],
        faces: Sequence[int],
        *,
        num_faces: int | None = None,
        analysis: TemplateAnalysis | None = None,
        seed: int | None = None,
        prompt: str = INPAINT_PROMPT,
        prompt_prefix: str = "",
        negative_prompt: str = INPAINT_NEGATIVE,
        steps: int | None = None,
        face_fusion: bool = False,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
    ) -> InpaintResult:
        """Paint each identity into its template face; output has the template's size.

        Args:
            template: RGB template image.
            identities: per selected face, aligned 112x112 RGB crops of one person
                (`facechain.engine.id_crop`).
            faces: 1-based template face indices, left to right among the kept faces.
            num_faces: keep only the N largest template faces (FaceChain's `num_faces`);
                None keeps all. Unselected kept faces are protected from changes.
            analysis: the template's `analyze_template` result, to skip detecting again.
            seed: base seed (random when None); the k-th selected face uses seed + k.
            prompt, prompt_prefix, negative_prompt: text conditioning (prefix = FairFace hook).
            steps: scheduler steps (default: the engine's); strengths are fractions of them.
            face_fusion: FaceChain's face-fusion post-process; unavailable, so True raises.
            progress: called after every denoising step with (steps done, steps total).
            cancel: polled between steps; when it returns True, Cancelled is raised.
        """
        if face_fusion:
            raise FeatureUnavailable(
                "face fusion needs damo/cv_unet_face_fusion_torch, which this installation "
                "does not have; run without face_fusion"
            )
        if len(identities) != len(faces):
            raise ValueError(f"{len(faces)} faces selected but {len(identities)} identities given")
        if any(len(crops) == 0 for crops in identities):
            raise ValueError("every selected face needs at least one selfie crop")
        rgb = _as_rgb(template, max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS)
        if analysis is None:
            analysis = analyze_template(rgb, detector=self.detector)
        elif (analysis.width, analysis.height) != (rgb.shape[1], rgb.shape[0]):
            raise ValueError("the template analysis belongs to an image of another size")
        targets = analysis.select(faces, num_faces)
        kept = analysis.kept_faces(num_faces)

        steps = steps or self.engine.config.steps
        size = self.engine.config.output_size()
        seed = random.SystemRandom().randrange(2**31) if seed is None else seed
        per_face = steps + _denoise_steps(steps, STRENGTH)[1] + _denoise_steps(steps, REFINE_STRENGTH)[1]
        tracker = _Progress(total=per_face * len(targets), callback=progress, cancel=cancel)
        text_prompt = prompt_prefix + prompt

        working = rgb.copy()
        blend_masks: list[np.ndarray] = []
        found: list[bool] = []
        unet = self.engine.base_pipeline(INPAINT_BASE).unet
        previous_scale = get_adapter_scale(unet)
        try:
            for k, (target, crops) in enumerate(zip(targets, identities, strict=True)):
                tracker.check()
                others = [f for f in kept if f is not target]
                logger.info(
                    "template face %d/%d at %s (seed %d)", k + 1, len(targets), target.int_box(), seed + k
                )
                blend, stage1_found = self._one_face(
                    working, target, others, crops, seed + k, size, steps, text_prompt,
                    negative_prompt, tracker,
                )
                blend_masks.append(blend)
                found.append(stage1_found)
        finally:
            set_adapter_scale(unet, previous_scale)
        return InpaintResult(
            image=Image.fromarray(working), seed=seed, blend_masks=blend_masks, stage1_faces_found=found
        )

    def _one_face(
        self,
        working: np.ndarray,
        target: Face,
        others: Sequence[Face],
        crops: Sequence[np.ndarray | Image.Image],
        seed: int,
        size: int,
        steps: int,
        prompt: str,
        negative: str,
        tracker: _Progress,
    ) -> tuple[np.ndarray, bool]:
        """Inpaint one face into `working` (in place); returns its template-sized blend mask."""
        height, width = working.shape[:2]
        window = SquareCrop.around(target)
        # FaceChain blacks the other kept faces out of the working copy (the crop must show one
        # person) and protects them from the paste-back.
        source = working.copy()
        protect = np.ones((height, width), np.uint8)
        for face in others:
            x, y, w, h = face.int_box()
            source[max(0, y) : y + h, max(0, x) : x + w] = 0
            protect[max(0, y) : y + h, max(0, x) : x + w] = 0
        crop_full = window.extract(source)
        crop = _resize(crop_full, size)
        crop_face = _CropFace.from_landmarks(window.to_window(target.landmarks, size), size)

        pose_pipe, inpaint_pipe = self._pipelines()
        base = INPAINT_BASE
        face_tokens = self.engine.face_tokens(crops, base)
        embeds, negative_embeds = self._embeddings(inpaint_pipe, prompt, negative, face_tokens)

        # Stage 1: a face of this identity posed like the template face.
        set_adapter_scale(pose_pipe.unet, POSE_ADAPTER_SCALE)
        pose_map = draw_face_pose((size, size), [crop_face.keypoints])
        stage1 = self._run(
            pose_pipe,
            tracker,
            seed,
            prompt_embeds=embeds,
            negative_prompt_embeds=negative_embeds,
            image=Image.fromarray(pose_map),
            controlnet_conditioning_scale=POSE_CONTROL_SCALE,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE_SCALE,
            height=size,
            width=size,
        )
        control_keypoints, warp_mask, stage1_found = self._stage1_geometry(stage1, crop_face, size)

        # Canny of the crop without the inner face (and chin), so the new face is free to differ.
        clear = np.maximum(
            crop_face.mask,
            _dilate(crop_face.mask, CANNY_CLEAR_DILATE * crop_face.radius)
            & _below((size, size), crop_face.eye_y),
        )
        edges = canny_map(crop, clear)
        core = _dilate(crop_face.mask, INPAINT_DILATE * crop_face.radius)
        chin = (
            _dilate(core, INPAINT_CHIN_DILATE * crop_face.radius)
            & _below((size, size), crop_face.eye_y)
            & np.maximum(crop_face.mask, warp_mask)
        )
        mask = np.maximum(core, chin)
        control = draw_face_pose((size, size), [control_keypoints])

        set_adapter_scale(inpaint_pipe.unet, INPAINT_ADAPTER_SCALE)
        schedule, _ = _denoise_steps(steps, STRENGTH)
        result = self._run(
            inpaint_pipe,
            tracker,
            seed,
            prompt_embeds=embeds,
            negative_prompt_embeds=negative_embeds,
            image=Image.fromarray(crop),
            mask_image=Image.fromarray(mask),
            control_image=[Image.fromarray(control), Image.fromarray(edges)],
            controlnet_conditioning_scale=list(CONTROL_SCALES),
            strength=STRENGTH,
            num_inference_steps=schedule,
            guidance_scale=GUIDANCE_SCALE,
            height=size,
            width=size,
        )
        roundtrip = self._vae_roundtrip(inpaint_pipe, crop)
        result = _fix_drift(result, crop, roundtrip, mask, crop_face.radius)

        # Refine: low strength over the face only, guided by the result's own edges and keypoints.
        refine_face = self._detect_in_window(result, crop_face)
        refine_mask = _dilate(refine_face.mask, REFINE_DILATE * refine_face.radius)
        schedule, _ = _denoise_steps(steps, REFINE_STRENGTH)
        refined = self._run(
            inpaint_pipe,
            tracker,
            seed,
            prompt_embeds=embeds,
            negative_prompt_embeds=negative_embeds,
            image=Image.fromarray(result),
            mask_image=Image.fromarray(refine_mask),
            control_image=[
                Image.fromarray(draw_face_pose((size, size), [refine_face.keypoints])),
                Image.fromarray(canny_map(result)),
            ],
            controlnet_conditioning_scale=list(REFINE_CONTROL_SCALES),
            strength=REFINE_STRENGTH,
            num_inference_steps=schedule,
            guidance_scale=GUIDANCE_SCALE,
            height=size,
            width=size,
        )
        refined = _fix_drift(refined, result, roundtrip_of(self, inpaint_pipe, result), refine_mask, refine_face.radius)

        # Paste back: edited region grown by 2k and feathered, other kept faces protected.
        edit = _resize(np.maximum(mask, refine_mask), window.side, nearest=True)
        half = window.side / 2.0
        k = max(1, int(10 * half / 256))
        alpha = cv2.GaussianBlur(
            _dilate(edit, 2 * k).astype(np.float32) / 255.0, (int(1.8 * k) * 2 + 1,) * 2, 0
        )
        alpha = np.maximum(alpha, (edit > 0).astype(np.float32))
        alpha *= window.extract(protect[:, :, None])[:, :, 0].astype(np.float32)
        window.paste(working, _resize(refined, window.side), alpha)
        blend = np.zeros((height, width), np.float32)
        window.paste_alpha(blend, alpha)
        return blend, stage1_found
